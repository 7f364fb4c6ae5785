"""Resume vs load-from on real Ray runs: one continuous history, MMSeg's semantics."""
from __future__ import annotations

import json

import pytest
import torch

from rayseg.errors import CheckpointError, ConfigError
from test_train_e2e import TINY_CONFIG, data_options

pytestmark = pytest.mark.slow


def _cfg(demo_data, *extra):
    from rayseg.config import load_config

    return load_config(str(TINY_CONFIG), data_options(demo_data) + [
        "evaluation.interval=0", "checkpoint_config.interval=2", "log_config.interval=1", *extra])


def _iters(work):
    return [json.loads(line)["iter"] for line in (work / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def first_run(ray_head, demo_data, tmp_path_factory):
    from rayseg.engine.trainer import train

    work = tmp_path_factory.mktemp("resume") / "run"
    summary = train(_cfg(demo_data, "runner.max_iters=4"), work_dir=str(work))
    return work, summary


def test_rerun_without_resume_is_refused(first_run, demo_data):
    from rayseg.engine.trainer import train

    work, _ = first_run
    with pytest.raises(ConfigError, match="--resume"):
        train(_cfg(demo_data, "runner.max_iters=6"), work_dir=str(work))


def test_resume_continues_one_history(first_run, demo_data):
    from mlflow.tracking import MlflowClient

    from rayseg.engine.trainer import train

    work, first = first_run
    assert _iters(work) == [1, 2, 3, 4]
    summary = train(_cfg(demo_data, "runner.max_iters=6"), work_dir=str(work), resume=True)
    assert summary["start_iter"] == 4
    assert _iters(work) == [1, 2, 3, 4, 5, 6]
    assert torch.load(work / "latest.pth", weights_only=True)["meta"]["iter"] == 6
    assert summary["mlflow"]["run_id"] == first["mlflow"]["run_id"]
    client = MlflowClient(tracking_uri=summary["mlflow"]["tracking_uri"])
    steps = [m.step for m in client.get_metric_history(summary["mlflow"]["run_id"], "train/loss")]
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    # The schedule continued at iteration 5 (index 4) of the new 6-iteration schedule instead of
    # restarting at 0, as MMSeg's resume does.
    from rayseg.optim import build_lr_schedule

    cfg = _cfg(demo_data, "runner.max_iters=6")
    schedule = build_lr_schedule(cfg["lr_config"], cfg["optimizer"]["lr"], 6)
    lrs = {json.loads(line)["iter"]: json.loads(line)["lr"] for line in (work / "log.jsonl").read_text().splitlines()}
    assert lrs[5] == pytest.approx(schedule.lr_at(4)) and lrs[5] != pytest.approx(schedule.lr_at(0))

    again = train(_cfg(demo_data, "runner.max_iters=6"), work_dir=str(work), resume=True)
    assert again["already_finished"] and again["iter"] == 6


def test_load_from_starts_at_zero(first_run, demo_data, tmp_path):
    from rayseg.engine.trainer import train

    work, _ = first_run
    new = tmp_path / "finetune"
    summary = train(_cfg(demo_data, "runner.max_iters=2"), work_dir=str(new), load_from=str(work / "latest.pth"))
    assert summary["start_iter"] == 0
    assert _iters(new) == [1, 2]
    meta = torch.load(new / "latest.pth", weights_only=True)["meta"]
    assert meta["iter"] == 2 and meta["config"]["load_from"] == str(work / "latest.pth")


def test_missing_load_from_names_the_file(demo_data, tmp_path):
    from rayseg.engine.trainer import train

    with pytest.raises(CheckpointError, match="nope.pth"):
        train(_cfg(demo_data, "runner.max_iters=2"), work_dir=str(tmp_path / "w"), load_from=str(tmp_path / "nope.pth"))


def test_resume_from_another_runs_checkpoint_continues_at_its_iteration(first_run, demo_data, tmp_path):
    """MMSeg's ``resume_from``: a new work dir starts from another run's checkpoint (weights, optimizer and
    iteration), which Ray Train V2 no longer takes as ``resume_from_checkpoint``."""
    from rayseg.engine.trainer import train

    work, _ = first_run
    source = work / "ray_results" / "run" / "iter_00000002"
    new = tmp_path / "branch"
    summary = train(_cfg(demo_data, "runner.max_iters=4", f"resume_from={source}"), work_dir=str(new))
    assert summary["start_iter"] == 2
    assert _iters(new) == [3, 4]
    start = torch.load(source / "checkpoint.pt", weights_only=False)
    assert start["meta"]["iter"] == 2
