"""Checkpoint files with foreign objects (as MMSeg 1.x training checkpoints have) load safely."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from rayseg.engine.checkpoint import load_weights_file
from rayseg.errors import CheckpointError


class HistoryBuffer:
    """Stands in for mmengine's message-hub objects: a class unknown to the loader."""

    def __init__(self):
        self.values = np.arange(3.0)


class Exploit:
    """Unpickling this would create a file; the loader must not run it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_foreign_objects_are_skipped_and_weights_load(tmp_path):
    sd = {"decode_head.conv_seg.weight": torch.randn(3, 4, 1, 1)}
    path = tmp_path / "iter_80000.pth"
    torch.save({"meta": {"mmseg_version": "1.2.2", "iter": 80000}, "state_dict": sd,
                "message_hub": {"log_scalars": {"loss": HistoryBuffer()}}, "optimizer": {"state": {}}}, path)
    with pytest.warns(UserWarning, match="non-tensor"):
        out = load_weights_file(str(path))
    assert torch.equal(out["state_dict"]["decode_head.conv_seg.weight"], sd["decode_head.conv_seg.weight"])
    assert out["meta"]["iter"] == 80000


def test_code_in_a_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "meta": {}, "payload": Exploit(str(marker))}, path)
    with pytest.warns(UserWarning):
        out = load_weights_file(str(path))
    assert not marker.exists()
    assert set(out["state_dict"]) == {"w"}


def test_corrupt_file_names_the_path(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pth"):
        load_weights_file(str(path))
    with pytest.raises(CheckpointError, match="missing.pth"):
        load_weights_file(os.path.join(tmp_path, "missing.pth"))


def test_read_checkpoint_returns_the_whole_payload(tmp_path):
    from rayseg.engine.checkpoint import read_checkpoint

    path = tmp_path / "iter_5.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "optimizer": {"state": {}, "param_groups": []},
                "meta": {"iter": 5}}, path)
    payload = read_checkpoint(str(path))
    assert set(payload) == {"state_dict", "optimizer", "meta"} and payload["meta"]["iter"] == 5


def test_mmseg_1x_dataset_meta_becomes_classes_and_palette(tmp_path):
    path = tmp_path / "mmseg1x.pth"
    classes, palette = ["road", "sky", "car"], [[128, 64, 128], [70, 130, 180], [0, 0, 142]]
    torch.save({"state_dict": {"w": torch.zeros(1)}, "message_hub": {"h": HistoryBuffer()},
                "meta": {"mmseg_version": "1.2.2", "dataset_meta": {"classes": classes, "palette": palette}}}, path)
    with pytest.warns(UserWarning, match="non-tensor"):
        meta = load_weights_file(str(path))["meta"]
    assert meta["classes"] == classes and meta["palette"] == palette
    assert meta["dataset_meta"]["classes"] == classes  # the original stays too
    # MMSeg 0.x names, and rayseg's own keys taking precedence over both.
    torch.save({"state_dict": {"w": torch.zeros(1)}, "meta": {"CLASSES": ("a", "b"), "PALETTE": [[1, 2, 3], [4, 5, 6]]}},
               path)
    meta = load_weights_file(str(path))["meta"]
    assert meta["classes"] == ("a", "b") and meta["palette"] == [[1, 2, 3], [4, 5, 6]]
    torch.save({"state_dict": {"w": torch.zeros(1)},
                "meta": {"classes": ["x"], "CLASSES": ["y"], "dataset_meta": {"classes": ["z"]}}}, path)
    assert load_weights_file(str(path))["meta"]["classes"] == ["x"]


def test_truncated_and_non_dict_files_are_checkpoint_errors_naming_them(tmp_path):
    from rayseg.engine.checkpoint import read_checkpoint

    good = tmp_path / "good.pth"
    torch.save({"state_dict": {"w": torch.randn(64, 64)}}, good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])  # an interrupted copy
    with pytest.raises(CheckpointError, match="truncated.pth"):
        read_checkpoint(str(truncated))
    listed = tmp_path / "a_list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(CheckpointError, match="a_list.pth.*list"):
        read_checkpoint(str(listed))


def test_file_uri_reads_files_and_ray_checkpoint_folders_in_place(tmp_path):
    """file:// goes through pyarrow, the way s3:// and gs:// do (a best-checkpoint folder on storage)."""
    from rayseg.engine.checkpoint import read_checkpoint

    sd = {"w": torch.arange(4.0)}
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": sd, "meta": {"iter": 2}}, path)
    assert torch.equal(load_weights_file(path.as_uri())["state_dict"]["w"], sd["w"])
    folder = tmp_path / "best_mIoU"
    folder.mkdir()
    torch.save({"state_dict": sd, "meta": {"iter": 9}, "best": {"score": 1.0}}, folder / "checkpoint.pt")
    assert read_checkpoint(folder.as_uri())["best"] == {"score": 1.0}
    assert read_checkpoint(folder.as_uri() + "/")["meta"]["iter"] == 9
    # Foreign objects are stubbed out for URIs too: the local copy takes the same safe path.
    torch.save({"state_dict": sd, "payload": Exploit(str(tmp_path / "pwned"))}, path)
    with pytest.warns(UserWarning, match="weights.pth"):
        assert set(read_checkpoint(path.as_uri())) == {"state_dict"}
    assert not (tmp_path / "pwned").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match="empty has no checkpoint.pt"):
        read_checkpoint(empty.as_uri())
    with pytest.raises(CheckpointError, match="nothing.pth"):
        read_checkpoint((tmp_path / "nothing.pth").as_uri())
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"file://.*bad.pth"):  # errors name the URI, not the temp copy
        read_checkpoint((tmp_path / "bad.pth").as_uri())


def test_train_checkpoint_on_remote_storage_is_read_without_a_shared_download_folder(tmp_path):
    """A ray.train.Checkpoint on a non-local filesystem is read through that filesystem into this process's own
    temporary file: Ray's as_directory() would download into /tmp/checkpoint_tmp_<uuid>, one folder for every
    process of the node, where a second worker's download tears the file the first is reading."""
    import tempfile

    import pyarrow.fs as pafs
    from ray.train import Checkpoint

    from rayseg.engine.checkpoint import read_train_checkpoint

    folder = tmp_path / "bucket" / "run" / "iter_00000004"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {"w": torch.arange(3.0)}, "meta": {"iter": 4}}, folder / "checkpoint.pt")
    remote = pafs.SubTreeFileSystem(str(tmp_path / "bucket"), pafs.LocalFileSystem())  # not a LocalFileSystem
    checkpoint = Checkpoint("run/iter_00000004", filesystem=remote)
    shared = checkpoint._get_temporary_checkpoint_dir()
    payload = read_train_checkpoint(checkpoint)
    assert payload["meta"]["iter"] == 4 and torch.equal(payload["state_dict"]["w"], torch.arange(3.0))
    assert not os.path.exists(shared) and shared.startswith(tempfile.gettempdir())
    with pytest.raises(CheckpointError, match="run/iter_00000009"):
        read_train_checkpoint(Checkpoint("run/iter_00000009", filesystem=remote))
    local = read_train_checkpoint(Checkpoint(str(folder)))  # a local checkpoint is read in place
    assert local["meta"]["iter"] == 4
