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
