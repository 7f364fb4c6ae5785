"""End to end on real Ray: a 2-worker TorchTrainer run, an MLflow server, ray job submit, jobs/test.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import BIN, REPO_ROOT, MlflowServer, data_options

pytestmark = pytest.mark.slow
TINY_CONFIG = REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (artifacts proxied through it, as on a shared server)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def trained(ray_head, demo_data, mlflow_server, tmp_path_factory):
    from rayseg.config import load_config
    from rayseg.engine.trainer import train

    work = tmp_path_factory.mktemp("train") / "tiny"
    cfg = load_config(str(TINY_CONFIG), data_options(demo_data) + [f"mlflow.tracking_uri={mlflow_server}",
                                                                   "mlflow.experiment_name=e2e",
                                                                   "mlflow.system_metrics_interval=1",
                                                                   "evaluation.save_best=mIoU"])
    summary = train(cfg, work_dir=str(work), config_path=str(TINY_CONFIG))
    return summary, work, cfg


def test_latest_pth_loads_without_ray(trained):
    summary, work, cfg = trained
    payload = torch.load(work / "latest.pth", map_location="cpu", weights_only=True)
    assert payload["meta"]["iter"] == 6
    assert payload["meta"]["config"]["runner"]["max_iters"] == 6
    assert payload["meta"]["classes"] == ["background", "circle", "rectangle", "triangle"]
    from rayseg.models import build_segmentor

    model = build_segmentor(payload["meta"]["config"]["model"])
    model.load_state_dict(payload["state_dict"])  # strict: every key present, nothing extra


def test_ray_checkpoints_every_interval(trained):
    summary, work, cfg = trained
    ckpts = sorted(p.name for p in (work / "ray_results" / "tiny").glob("iter_*"))
    assert ckpts == ["iter_00000003", "iter_00000006"]
    state = torch.load(work / "ray_results" / "tiny" / "iter_00000003" / "checkpoint.pt", weights_only=True)
    assert state["meta"]["iter"] == 3 and "optimizer" in state


def test_both_workers_end_with_identical_weights(trained):
    summary, work, cfg = trained
    replicas = json.loads((work / "replicas.json").read_text())
    assert sorted(r["rank"] for r in replicas) == [0, 1]
    assert replicas[0]["pid"] != replicas[1]["pid"]
    assert len({r["weights_sha256"] for r in replicas}) == 1
    from rayseg.engine.loop import weights_digest
    from rayseg.models import build_segmentor

    model = build_segmentor(cfg["model"])
    model.load_state_dict(torch.load(work / "latest.pth", weights_only=True)["state_dict"])
    assert weights_digest(model) == replicas[0]["weights_sha256"]


def test_save_best_keeps_the_best_validation_checkpoint(trained):
    summary, work, cfg = trained
    records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    val = [r for r in records if "mIoU" in r]
    best = max(val, key=lambda r: r["mIoU"])  # ties: the earlier one stays best, as in MMSeg
    best = next(r for r in val if r["mIoU"] == best["mIoU"])
    files = sorted(p.name for p in work.glob("best_mIoU_iter_*.pth"))
    assert files == [f"best_mIoU_iter_{best['iter']}.pth"]
    assert summary["best"].endswith(files[0])
    kept = torch.load(work / "ray_results" / "tiny" / "best_mIoU" / "checkpoint.pt", weights_only=True)
    assert kept["meta"]["iter"] == best["iter"] and kept["best"]["score"] == pytest.approx(best["mIoU"])
    assert val[-1]["best_mIoU"] == pytest.approx(best["mIoU"])


def test_log_jsonl_has_intervals_and_validation(trained):
    summary, work, cfg = trained
    records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [2, 3, 4, 6]
    for r in records:
        assert {"lr", "loss", "decode.loss_ce", "aux.loss_ce"} <= set(r)
        assert r["loss"] > 0
        assert 0 <= r["data_time"] <= r["time"]  # waiting for the stream: part of the iteration's time
    val = [r for r in records if "mIoU" in r]
    assert [r["iter"] for r in val] == [3, 6]
    assert 0 <= val[-1]["aAcc"] <= 100 and "IoU.background" in val[-1]
    assert (work / "val_table.txt").read_text().count("background") == 1
    text = (work / "train.log").read_text()
    assert "Iter [2/6]" in text and "Iter(val) [3]" in text and "mIoU" in text and "loss:" in text
    assert "data_time:" in text


def test_mlflow_run_holds_params_metrics_and_artifacts(trained, mlflow_server):
    from mlflow.tracking import MlflowClient

    summary, work, cfg = trained
    client = MlflowClient(tracking_uri=mlflow_server)
    run = client.get_run(summary["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.backbone.depth"] == "18"
    assert run.data.params["runner.max_iters"] == "6"
    tags = run.data.tags
    assert tags["ray.num_nodes"] == "1" and tags["rayseg.num_workers"] == "2"
    assert len(tags["mlflow.source.git.commit"]) == 40 and tags["ray.job_id"]
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == [2, 3, 4, 6]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val/mIoU")] == [3, 6]
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "log.jsonl", "weights", "evaluation", "replicas.json"} <= names
    assert any(a.path.startswith("weights/best_mIoU_iter_") for a in client.list_artifacts(run.info.run_id, "weights"))
    # Each node's worker samples system metrics into the run (one node here).
    system = [k for k in run.data.metrics if k.startswith("system/node-")]
    assert any(k.endswith("cpu_utilization_percentage") for k in system), sorted(run.data.metrics)
    evaluation = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation/val")}
    assert "evaluation/val/per_class.csv" in evaluation
    weights = client.download_artifacts(run.info.run_id, "weights/latest.pth", str(work / "dl"))
    assert torch.load(weights, weights_only=True)["meta"]["iter"] == 6


def test_jobs_test_prints_table_and_writes_json(trained, demo_data, tmp_path):
    summary, work, cfg = trained
    out = tmp_path / "metrics.json"
    cmd = [sys.executable, str(REPO_ROOT / "jobs" / "test.py"), str(TINY_CONFIG), str(work / "latest.pth"),
           "--out", str(out), "--cfg-options", *data_options(demo_data)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "Class" in proc.stdout and "mIoU" in proc.stdout and "triangle" in proc.stdout
    metrics = json.loads(out.read_text())
    assert set(metrics) >= {"aAcc", "mIoU", "mAcc", "mDice", "per_class"}
    assert set(metrics["per_class"]) == {"background", "circle", "rectangle", "triangle"}
    assert set(metrics["per_class"]["background"]) >= {"IoU", "Acc", "Dice"}
    # The val split equals the test split here, so the standalone evaluation must reproduce the
    # distributed validation at the end of training.
    assert metrics["mIoU"] == pytest.approx(summary["metrics"]["mIoU"], abs=1e-6)


def test_jobs_test_missing_checkpoint_is_a_clear_error(demo_data, tmp_path):
    cmd = [sys.executable, str(REPO_ROOT / "jobs" / "test.py"), str(TINY_CONFIG), str(tmp_path / "nope.pth"),
           "--cfg-options", *data_options(demo_data)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 2
    assert "nope.pth" in proc.stderr


def test_ray_job_submit_trains(ray_head, demo_data, tmp_path):
    work = tmp_path / "job_work"
    entry = [sys.executable, "jobs/train.py", "tests/configs/tiny_shapes.yaml", "--work-dir", str(work),
             "--cfg-options", *data_options(demo_data), "runner.max_iters=2", "evaluation.interval=0",
             "checkpoint_config.interval=2", "log_config.interval=1"]
    cmd = [str(BIN / "ray"), "job", "submit", "--address", ray_head.dashboard_url, "--working-dir", str(REPO_ROOT),
           "--", *entry]
    env = dict(os.environ)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in proc.stdout.lower()
    assert "Iter [2/2]" in proc.stdout  # the progress line reaches the submitter's console
    assert (work / "latest.pth").is_file()
    records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [1, 2]


def test_a_file_only_the_workers_can_decode_gives_one_error_line(ray_head, demo_data, tmp_path):
    """Listing passes (the file exists), decoding in a Ray Data actor fails: one ``error:`` line, exit 2."""
    import shutil

    from mlflow.tracking import MlflowClient

    data = tmp_path / "data"
    shutil.copytree(demo_data, data)
    for path in (data / "img_dir" / "train").glob("*.png"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # a truncated PNG
    work = tmp_path / "work"
    cmd = [sys.executable, "jobs/train.py", str(TINY_CONFIG), "--work-dir", str(work), "--address", ray_head.address,
           "--cfg-options", *data_options(data), "runner.max_iters=2", "evaluation.interval=0"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    assert "cannot decode image" in errors[0] and str(data / "img_dir" / "train") in errors[0]
    assert "transient" not in proc.stderr and len(proc.stderr.splitlines()) < 10, proc.stderr
    assert "Traceback" in (work / "ray_workers.log").read_text()  # the workers' own reports are kept
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.status for r in runs] == ["FAILED"]
