"""Training that survives trouble: a worker killed mid-run, a NaN loss, an unreachable MLflow server, and
bit-identical reruns with --deterministic. All on the session's real Ray head."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from conftest import REPO_ROOT, data_options, free_port, logged_iters

pytestmark = pytest.mark.slow
TINY_CONFIG = REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml"


def test_killed_worker_restarts_from_the_latest_checkpoint(ray_head, demo_data, tmp_path):
    from mlflow.tracking import MlflowClient
    from ray.util.state import list_actors

    work = tmp_path / "faults"
    ckpt_interval, max_iters = 4, 20
    options = data_options(demo_data) + [
        f"runner.max_iters={max_iters}", f"checkpoint_config.interval={ckpt_interval}", "log_config.interval=1",
        "evaluation.interval=0", "failure.max_failures=2", "scaling.num_workers=2"]
    cmd = [sys.executable, "jobs/train.py", str(TINY_CONFIG), "--work-dir", str(work), "--cfg-options", *options]
    env = dict(os.environ, RAY_ADDRESS=ray_head.address)
    out_path = tmp_path / "train_output.txt"
    with open(out_path, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO_ROOT)
        try:
            deadline = time.time() + 600
            while time.time() < deadline and (max(logged_iters(work / "log.jsonl"), default=0) < ckpt_interval + 2):
                assert proc.poll() is None, out_path.read_text()[-3000:]
                time.sleep(0.5)
            workers = list_actors(address=ray_head.dashboard_url,
                                  filters=[("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")])
            assert len(workers) == 2, workers
            killed_after = max(logged_iters(work / "log.jsonl"))
            os.kill(workers[-1].pid, signal.SIGKILL)  # from outside, as the OOM killer or a dying node would
            assert killed_after < max_iters, "the run finished before the fault could be injected"
            rc = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
    output = out_path.read_text()
    assert rc == 0, output[-4000:]
    restored = [int(m) for m in re.findall(r"Restored the training state of iteration (\d+)", output)]
    assert len(restored) == 1, output[-4000:]
    assert restored[0] % ckpt_interval == 0 and restored[0] <= killed_after
    assert killed_after - restored[0] <= ckpt_interval, "more than one checkpoint interval was repeated"

    # One continuous history: every iteration once, in order, in log.jsonl and in MLflow.
    assert logged_iters(work / "log.jsonl") == list(range(1, max_iters + 1))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, max_iters + 1))
    assert run.info.status == "FINISHED"


def _train(ray_head, demo_data, work: Path, *extra: str):
    from rayseg.config import load_config
    from rayseg.engine.trainer import train

    cfg = load_config(str(TINY_CONFIG), data_options(demo_data) + [
        "runner.max_iters=4", "log_config.interval=1", "evaluation.interval=0", "checkpoint_config.interval=4",
        "scaling.num_workers=2", *extra])
    return train(cfg, work_dir=str(work), config_path=str(TINY_CONFIG))


def test_deterministic_runs_give_bit_identical_losses_even_without_mlflow(ray_head, demo_data, tmp_path):
    first = _train(ray_head, demo_data, tmp_path / "a" / "run", "deterministic=true", "seed=7")
    dead_server = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        second = _train(ray_head, demo_data, tmp_path / "b" / "run", "deterministic=true", "seed=7",
                        f"mlflow.tracking_uri={dead_server}")
    mlflow_warnings = [w for w in caught if "MLflow" in str(w.message)]
    assert len(mlflow_warnings) == 1 and "unreachable" in str(mlflow_warnings[0].message)
    assert "mlflow" not in second  # trained without it
    losses = [[json.loads(line)["loss"] for line in Path(s["log"]).read_text().splitlines()] for s in (first, second)]
    assert len(losses[0]) == 4
    assert losses[0] == losses[1]  # exact float equality, not approx


def test_nan_loss_stops_the_run_naming_the_iteration(ray_head, demo_data, tmp_path):
    # An absurd learning rate blows the weights up in one step, so the second forward pass gives NaN/inf.
    with pytest.raises(Exception, match=r"at iteration 2") as err:
        _train(ray_head, demo_data, tmp_path / "nan" / "run", "optimizer.lr=1e30", "checkpoint_config.interval=1",
               "scaling.num_workers=1")
    assert "FloatingPointError" in str(err.value) or "FloatingPointError" in repr(err.value)
    ckpts = sorted(p.name for p in (tmp_path / "nan" / "run" / "ray_results" / "run").glob("iter_*"))
    assert ckpts == ["iter_00000001"]  # nothing written from the step that went wrong
