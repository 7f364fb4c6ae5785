"""What a finished run leaves in its work dir: latest.pth, the best weights, the validation tables, artifacts."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from conftest import REPO_ROOT
from rayseg.config import load_config
from rayseg.engine.outputs import mlflow_summary, write_best_weights, write_final_outputs
from rayseg.errors import CheckpointError
from rayseg.spec.resolve import resolve_run

TINY = str(REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml")
CLASSES = ("background", "circle", "rectangle", "triangle")
TRAIN_SET = SimpleNamespace(CLASSES=CLASSES, PALETTE=[[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]])


def _spec(work, *options):
    return resolve_run(load_config(TINY, ["evaluation.save_best=mIoU", *options]), work_dir=str(work))


def _state(folder, iteration, score=None):
    folder.mkdir(parents=True, exist_ok=True)
    state = {"state_dict": {"w": torch.full((2,), float(iteration))}, "meta": {"iter": iteration}}
    if score is not None:
        state["best"] = {"key": "mIoU", "score": score, "iter": iteration}
    torch.save(state, folder / "checkpoint.pt")
    return folder


def _final_metrics():
    per_class = {k: [10.0, 20.0, float("nan"), 40.0] for k in ("IoU", "Acc", "Dice", "Fscore", "Precision", "Recall")}
    return {"iter": 6, "aAcc": 90.0, "mIoU": 23.3, "mAcc": 23.3, "mDice": 23.3, "mFscore": 23.3,
            "mPrecision": 23.3, "mRecall": 23.3, "per_class": per_class}


def test_final_outputs(tmp_path):
    from ray.train import Checkpoint

    work = tmp_path / "work"
    work.mkdir()
    spec = _spec(work, "evaluation.metric=mDice")
    run_dir = tmp_path / "ray_results" / "work"
    final = _state(run_dir / "iter_00000006", 6)
    _state(run_dir / "best_mIoU", 3, score=41.5)
    (work / "best_mIoU_iter_1.pth").write_bytes(b"older best")  # from before a resume: replaced
    result = SimpleNamespace(checkpoint=Checkpoint.from_directory(str(final)), metrics=_final_metrics())
    summary = write_final_outputs(result, spec, TRAIN_SET, run=None, run_dir=str(run_dir))

    latest = torch.load(work / "latest.pth", weights_only=True)
    assert latest["meta"]["iter"] == 6 and latest["meta"]["config"] == spec.config
    assert latest["meta"]["classes"] == list(CLASSES) and torch.equal(latest["state_dict"]["w"], torch.full((2,), 6.0))
    assert summary["best"].endswith("best_mIoU_iter_3.pth")
    assert sorted(p.name for p in work.glob("best_*.pth")) == ["best_mIoU_iter_3.pth"]
    best = torch.load(work / "best_mIoU_iter_3.pth", weights_only=True)
    assert best["meta"]["iter"] == 3 and torch.equal(best["state_dict"]["w"], torch.full((2,), 3.0))
    table = (work / "val_table.txt").read_text()
    assert "Dice" in table and "IoU" not in table  # evaluation.metric picks the columns
    assert (work / "per_class.csv").read_text().splitlines()[0] == "class,IoU,Acc,Dice,Fscore,Precision,Recall"
    metrics = json.loads((work / "val_metrics.json").read_text())
    assert metrics["mIoU"] == 23.3 and metrics["per_class"]["rectangle"]["IoU"] is None
    assert summary["metrics"] == metrics and summary["table"] == table


def test_no_validation_no_tables_and_no_best(tmp_path):
    from ray.train import Checkpoint

    spec = resolve_run(load_config(TINY, ["evaluation.interval=0"]), work_dir=str(tmp_path / "w"))
    (tmp_path / "w").mkdir()
    final = _state(tmp_path / "run" / "iter_00000006", 6)
    result = SimpleNamespace(checkpoint=Checkpoint.from_directory(str(final)), metrics={"iter": 6, "loss": 1.0})
    summary = write_final_outputs(result, spec, TRAIN_SET, run_dir=str(tmp_path / "run"))
    assert set(summary) == {"latest"}
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["latest.pth"]


def test_corrupt_best_checkpoint_names_the_file(tmp_path):
    spec = _spec(tmp_path / "w")
    (tmp_path / "w").mkdir()
    (tmp_path / "run" / "best_mIoU").mkdir(parents=True)
    (tmp_path / "run" / "best_mIoU" / "checkpoint.pt").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="best_mIoU"):
        write_best_weights(spec, str(tmp_path / "run"), TRAIN_SET)


def test_outputs_are_logged_to_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient
    from ray.train import Checkpoint

    from rayseg.tracking import start_run

    work = tmp_path / "work"
    work.mkdir()
    spec = _spec(work)
    run = start_run(spec)
    run_dir = tmp_path / "run"
    final = _state(run_dir / "iter_00000006", 6)
    _state(run_dir / "best_mIoU", 3, score=41.5)
    result = SimpleNamespace(checkpoint=Checkpoint.from_directory(str(final)), metrics=_final_metrics())
    write_final_outputs(result, spec, TRAIN_SET, run=run, run_dir=str(run_dir))
    client = MlflowClient(tracking_uri=run.tracking_uri)
    weights = {a.path for a in client.list_artifacts(run.run_id, "weights")}
    assert weights == {"weights/latest.pth", "weights/best_mIoU_iter_3.pth"}
    # The names jobs/test.py uses too: evaluation/<split>/...
    evaluation = {a.path for a in client.list_artifacts(run.run_id, "evaluation/val")}
    assert evaluation == {"evaluation/val/table.txt", "evaluation/val/per_class.csv", "evaluation/val/metrics.json"}
    table = client.download_artifacts(run.run_id, "evaluation/val/table.txt", str(tmp_path / "dl"))
    assert open(table).read() == (work / "val_table.txt").read_text()
    assert client.get_run(run.run_id).data.tags["best_mIoU"] == "41.5000 at iteration 3"
    summary = mlflow_summary(run)
    assert summary["run_id"] == run.run_id
    assert summary["url"].endswith(f"/runs/{run.run_id}?workflowType=machine_learning")
    assert summary["experiment_url"].endswith(f"/experiments/{run.experiment_id}?workflowType=machine_learning")
    assert summary["store"].startswith(f"MLflow store: {run.tracking_uri}")
    assert mlflow_summary(None) is None
