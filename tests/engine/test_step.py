"""The training step, precision settings, save_best tracking and run storage, without Ray."""
from __future__ import annotations

import io
import warnings

import pytest
import torch

from rayseg.engine import storage
from rayseg.engine.best import BestScore, resolve_save_best
from rayseg.engine.precision import PrecisionSettings, precision_settings, resolve_precision
from rayseg.engine.resume import checkpoint_iteration, checkpoint_problem, latest_checkpoint
from rayseg.engine.step import TrainStep
from rayseg.errors import ConfigError


class _TinySeg(torch.nn.Module):
    """Two-class per-pixel classifier with the segmentor's forward contract: losses when labels are given."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)

    def forward(self, img, seg):
        logits = self.conv(img)
        return {"decode.loss_ce": torch.nn.functional.cross_entropy(logits, seg), "decode.acc_seg": torch.tensor(50.0)}


def _batch(nan: bool = False):
    img = torch.randn(2, 3, 8, 8)
    if nan:
        img[0, 0, 0, 0] = float("nan")
    return img, torch.randint(0, 2, (2, 8, 8))


def _step(skip: bool, clip=None):
    torch.manual_seed(0)
    model = _TinySeg()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, TrainStep(model, opt, PrecisionSettings(), grad_clip=clip, skip_nonfinite=skip)


def test_step_updates_weights_and_returns_losses():
    model, step = _step(skip=False)
    before = model.conv.weight.detach().clone()
    out = step(*_batch(), iteration=1)
    assert set(out) == {"decode.loss_ce", "decode.acc_seg", "loss"}
    assert out["loss"] == pytest.approx(out["decode.loss_ce"])  # acc is not a loss term
    assert not torch.equal(before, model.conv.weight)


def test_nan_loss_raises_naming_the_iteration_and_leaves_weights_alone():
    model, step = _step(skip=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FloatingPointError, match="iteration 7"):
        step(*_batch(nan=True), iteration=7)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_skip_nonfinite_skips_the_update_and_counts_it():
    model, step = _step(skip=True, clip={"max_norm": 1.0})
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert step(*_batch(nan=True), iteration=3) is None
    assert step.skipped == 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert step(*_batch(), iteration=4) is not None  # the next finite batch trains normally
    assert not torch.equal(before["conv.weight"], model.conv.weight)
    state = step.state_dict()
    _, fresh = _step(skip=True)
    fresh.load_state_dict(state)
    assert fresh.skipped == 1


def test_skip_nonfinite_catches_infinite_gradients_from_a_finite_loss():
    model, step = _step(skip=True)
    with torch.no_grad():
        model.conv.weight.fill_(3e38)  # the loss overflows in the backward pass, not the forward
    img = torch.full((2, 3, 8, 8), 1e30)
    seg = torch.zeros(2, 8, 8, dtype=torch.long)
    assert step(img, seg, iteration=1) is None or torch.isfinite(model.conv.weight).all()


def test_precision_is_off_on_cpu_with_one_warning_naming_the_keys():
    cfg = {"amp": {"enabled": True, "dtype": "bf16"}, "channels_last": True, "cudnn_benchmark": True}
    with pytest.warns(RuntimeWarning, match="amp/fp16, channels_last, cudnn_benchmark"):
        settings = precision_settings(resolve_precision(cfg), torch.device("cpu"))
    assert not settings.amp and not settings.channels_last and settings.grad_scaler() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision_settings(resolve_precision({}), torch.device("cpu"))  # nothing asked, nothing said


def test_precision_config_spellings():
    def asked(cfg):
        spec = resolve_precision(cfg)
        return (spec.amp_dtype, spec.loss_scale)

    assert asked({"amp": {"enabled": True, "dtype": "bf16"}}) == ("bf16", None)
    assert asked({"amp": {"dtype": "float16"}}) == ("fp16", "dynamic")
    assert asked({"fp16": {"loss_scale": 512.0}}) == ("fp16", 512.0)
    assert asked({"optimizer_config": {"type": "Fp16OptimizerHook", "loss_scale": "dynamic"}}) == ("fp16", "dynamic")
    assert asked({"amp": {"enabled": False, "dtype": "fp16"}}) == (None, None)
    assert resolve_precision({"channels_last": True}).channels_last
    with pytest.raises(ConfigError, match="fp8"):
        resolve_precision({"amp": {"dtype": "fp8"}})
    with pytest.raises(ConfigError, match="more than one place"):
        resolve_precision({"amp": {"dtype": "bf16"}, "fp16": {"loss_scale": 512.0}})
    with pytest.raises(ConfigError, match="loss_scale"):
        resolve_precision({"fp16": {"loss_scale": -1}})


def test_static_loss_scale_never_grows():
    # GradScaler works on CPU tensors too, which lets this run without a GPU.
    scaler = PrecisionSettings(amp_dtype=torch.float16, loss_scale=512.0, device_type="cpu").grad_scaler()
    assert scaler.get_scale() == 512.0 and scaler.get_growth_interval() == 2**31 - 1
    dynamic = PrecisionSettings(amp_dtype=torch.float16, loss_scale="dynamic", device_type="cpu").grad_scaler()
    assert dynamic.get_growth_interval() == 2000
    assert PrecisionSettings(amp_dtype=torch.bfloat16, device_type="cpu").grad_scaler() is None


def test_save_best_resolution():
    assert resolve_save_best("mIoU", ("mIoU",), interval=10) == "mIoU"
    assert resolve_save_best("auto", ("mDice", "mIoU"), interval=10) == "mDice"  # the first evaluated metric
    assert resolve_save_best(None, ("mIoU",), interval=10) is None
    with pytest.raises(ConfigError, match="mIOU"):
        resolve_save_best("mIOU", ("mIoU",), interval=10)
    with pytest.raises(ConfigError, match="interval"):
        resolve_save_best("mIoU", ("mIoU",), interval=0)


def test_best_score_keeps_the_first_of_equal_scores_and_survives_a_resume():
    best = BestScore("mIoU")
    assert best.update({"mIoU": 40.0}, 100)
    assert not best.update({"mIoU": 40.0}, 200)
    assert not best.update({"mIoU": float("nan")}, 300)
    assert best.update({"mIoU": 41.5}, 400)
    resumed = BestScore("mIoU")
    resumed.load_state_dict(best.state_dict())
    assert (resumed.score, resumed.iteration) == (41.5, 400)
    assert not resumed.update({"mIoU": 41.0}, 500)
    other = BestScore("aAcc")
    other.load_state_dict(best.state_dict())  # a different metric starts afresh
    assert other.update({"aAcc": 1.0}, 500)


def _write_ckpt(folder, iteration):
    folder.mkdir(parents=True)
    torch.save({"meta": {"iter": iteration}}, folder / "checkpoint.pt")


def test_latest_checkpoint_through_a_file_uri(tmp_path):
    run = tmp_path / "run"
    _write_ckpt(run / "iter_00000010", 10)
    _write_ckpt(run / "iter_00000020", 20)
    (run / "iter_00000030").mkdir()  # interrupted before checkpoint.pt was written: not a checkpoint
    for location in (str(run), f"file://{run}"):
        folder, iteration = latest_checkpoint(location)
        assert iteration == 20 and folder.endswith("iter_00000020")
        assert checkpoint_iteration(folder) == 20
    assert latest_checkpoint(str(tmp_path / "missing")) is None
    assert storage.storage_root(None, "/w/run") == "/w/run/ray_results"
    assert storage.storage_root("s3://bucket/runs/", "/w/run") == "s3://bucket/runs"


def test_replace_dir_copies_into_place(tmp_path):
    import pyarrow.fs as pafs

    _write_ckpt(tmp_path / "iter_00000005", 5)
    target = tmp_path / "best_mIoU"
    _write_ckpt(target, 1)
    storage.replace_dir(pafs.LocalFileSystem(), str(tmp_path / "iter_00000005"), f"file://{target}")
    state = torch.load(io.BytesIO((target / "checkpoint.pt").read_bytes()), weights_only=True)
    assert state["meta"]["iter"] == 5
    assert not (tmp_path / "best_mIoU.tmp").exists()


def test_unknown_storage_scheme_is_a_config_error():
    with pytest.raises(ConfigError, match="nosuchfs://x"):
        latest_checkpoint("nosuchfs://x/run")


MOUNTS = """/dev/sda1 / ext4 rw 0 0
nfs-server:/export /mnt/shared nfs4 rw 0 0
tmpfs /mnt/shared/tmp tmpfs rw 0 0
"""


def test_head_local_storage_is_refused_on_a_multi_machine_cluster(tmp_path, monkeypatch):
    monkeypatch.delenv(storage.ASSUME_SHARED_ENV, raising=False)
    mounts = tmp_path / "mounts"
    mounts.write_text(MOUNTS)
    two_machines = ["10.0.0.1", "10.0.0.2"]
    with pytest.raises(ConfigError, match="s3:// or gs://") as err:
        storage.check_storage_for_cluster("/home/me/work_dirs/run/ray_results", two_machines, str(mounts))
    assert "10.0.0.2" in str(err.value) and "ext4" in str(err.value)
    storage.check_storage_for_cluster("/mnt/shared/runs", two_machines, str(mounts))  # NFS: fine
    with pytest.raises(ConfigError):
        storage.check_storage_for_cluster("/mnt/shared/tmp/runs", two_machines, str(mounts))  # tmpfs inside it
    storage.check_storage_for_cluster("s3://bucket/runs", two_machines, str(mounts))
    storage.check_storage_for_cluster("/home/me/runs", ["127.0.0.1", "127.0.0.1"], str(mounts))  # one machine
    monkeypatch.setenv(storage.ASSUME_SHARED_ENV, "1")
    storage.check_storage_for_cluster("/home/me/runs", two_machines, str(mounts))


def test_latest_checkpoint_follows_what_ray_registered(tmp_path):
    import json

    run = tmp_path / "run"
    _write_ckpt(run / "iter_00000004", 4)
    _write_ckpt(run / "iter_00000008", 8)  # uploaded by rank 0, but the worker group died before Ray registered it
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(
        {"latest_checkpoint_result": {"checkpoint_dir_name": "iter_00000004", "metrics": {}}}))
    assert latest_checkpoint(str(run))[1] == 4
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps({"latest_checkpoint_result": None}))
    assert latest_checkpoint(str(run)) is None  # Ray starts from scratch, so must the data stream
    (run / "checkpoint_manager_snapshot.json").write_text("{not json")
    assert latest_checkpoint(str(run))[1] == 8  # unreadable snapshot: the newest complete folder


def test_a_torn_checkpoint_is_passed_over_for_the_newest_intact_one(tmp_path):
    run = tmp_path / "run"
    _write_ckpt(run / "iter_00000004", 4)
    _write_ckpt(run / "iter_00000008", 8)
    torn = run / "iter_00000008" / "checkpoint.pt"
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])  # cut short, as by a node dying mid-upload
    assert latest_checkpoint(str(run))[1] == 8  # without the check: the folder is there
    for location in (str(run), f"file://{run}"):
        skipped = []
        folder, iteration = latest_checkpoint(location, intact=True, skipped=skipped)
        assert iteration == 4 and folder.endswith("iter_00000004")
        assert len(skipped) == 1 and skipped[0][0].endswith("iter_00000008")
        assert "checkpoint.pt" in skipped[0][1] and "truncated" in skipped[0][1]
    assert checkpoint_problem(str(run / "iter_00000004")) is None
    (run / "iter_00000004" / "checkpoint.pt").write_bytes(b"")
    assert latest_checkpoint(str(run), intact=True) is None
