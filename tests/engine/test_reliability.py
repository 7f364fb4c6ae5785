"""Faults a user meets, injected on real processes: a second run in a work dir, Ctrl-C and SIGTERM, a torn
checkpoint, two jobs creating one MLflow store, an open rendezvous port, weights that do not fit."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, data_options, logged_iters

TINY_CONFIG = REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml"


def mlflow_runs(store: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


def train_cmd(work: Path, demo_data: Path, *options: str) -> list[str]:
    return [sys.executable, "jobs/train.py", str(TINY_CONFIG), "--work-dir", str(work), "--cfg-options",
            *data_options(demo_data), *options]


def start(cmd: list[str], out: Path, env: dict) -> subprocess.Popen:
    with open(out, "w") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO_ROOT)


def wait_for_iteration(proc: subprocess.Popen, log: Path, out: Path, iteration: int, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while max(logged_iters(log), default=0) < iteration:
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) early:\n{out.read_text()[-3000:]}"
        assert time.time() < deadline, out.read_text()[-3000:]
        time.sleep(0.3)


def alive_actors(ray_head, job_id: str) -> list:
    """The live actors the Ray job ``job_id`` started (detached ones live on by design)."""
    from ray.util.state import list_actors

    actors = list_actors(address=ray_head.dashboard_url, filters=[("job_id", "=", job_id), ("state", "=", "ALIVE")],
                         detail=True)
    return [a for a in actors if not a.is_detached]


# --- the work dir lock (no Ray) ------------------------------------------------------------------------------

def test_work_dir_lock_refuses_a_second_holder_and_takes_over_a_stale_one(tmp_path):
    from rayseg.engine.workdir_lock import LOCK_FILE, WorkDirLock
    from rayseg.errors import ConfigError

    work = tmp_path / "run"
    with WorkDirLock(str(work)) as first:
        assert first.stale is None
        record = json.loads((work / LOCK_FILE).read_text())
        assert record["pid"] == os.getpid()
        with pytest.raises(ConfigError, match=rf"{work} is in use by another run \(PID {os.getpid()} on "):
            WorkDirLock(str(work)).acquire()
        (work / "log.jsonl").write_text("kept\n")
    assert (work / "log.jsonl").read_text() == "kept\n"  # a refused second run removed nothing
    assert (work / LOCK_FILE).read_text() == ""  # released cleanly: no record left

    # A run that died holding the lock leaves its record but no flock: the next run takes over, saying so.
    (work / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "gone", "started": 0}))
    with WorkDirLock(str(work)) as taker:
        assert taker.stale["pid"] == 999999

    # A run refused or failed before writing anything leaves no empty work dir behind.
    fresh = tmp_path / "fresh"
    WorkDirLock(str(fresh)).acquire().release()
    assert not fresh.exists()


def test_a_lock_held_by_another_process_is_refused(tmp_path):
    from rayseg.engine.workdir_lock import WorkDirLock
    from rayseg.errors import ConfigError

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from rayseg.engine.workdir_lock import WorkDirLock\n"
        f"WorkDirLock({str(tmp_path / 'run')!r}).acquire(); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"PID {holder.pid} on "):
            WorkDirLock(str(tmp_path / "run")).acquire()
    finally:
        holder.kill()
        holder.wait()
    WorkDirLock(str(tmp_path / "run")).acquire().release()  # the kernel dropped the dead holder's lock


# --- files a run writes, weights that do not fit (no Ray) ----------------------------------------------------

def test_weights_files_follow_the_umask(tmp_path):
    from rayseg.engine.checkpoint import atomic_torch_save

    previous = os.umask(0o022)
    try:
        atomic_torch_save({"a": torch.zeros(1)}, str(tmp_path / "latest.pth"))
        os.umask(0o027)
        atomic_torch_save({"a": torch.zeros(1)}, str(tmp_path / "group.pth"))
    finally:
        os.umask(previous)
    assert (tmp_path / "latest.pth").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "group.pth").stat().st_mode & 0o777 == 0o640


def _misfit_weights(path: Path) -> Path:
    """The tiny config's model weights with one backbone tensor of the wrong shape."""
    from rayseg.config import load_config
    from rayseg.models import build_segmentor

    state = build_segmentor(load_config(str(TINY_CONFIG))["model"]).state_dict()
    key = next(k for k in state if k.startswith("backbone.") and k.endswith("weight") and state[k].dim() == 4)
    state[key] = torch.zeros(3, 3, 1, 1)
    torch.save({"state_dict": state, "meta": {}}, path)
    return path


def test_load_from_weights_that_do_not_fit_fail_at_once_naming_the_file(demo_data, tmp_path):
    weights = _misfit_weights(tmp_path / "other_model.pth")
    work = tmp_path / "work" / "run"
    proc = subprocess.run(train_cmd(work, demo_data) + ["--load-from", str(weights)], capture_output=True,
                          text=True, cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(weights) in errors[0] and "shape mismatch" in errors[0], proc.stderr
    assert not work.exists()  # no empty work dir, no MLflow run
    assert not (tmp_path / "work" / "mlflow.db").exists()


def test_evaluating_weights_that_do_not_fit_names_the_file(demo_data, tmp_path):
    weights = _misfit_weights(tmp_path / "other_model.pth")
    proc = subprocess.run([sys.executable, "jobs/test.py", str(TINY_CONFIG), str(weights), "--split", "val",
                           "--num-workers", "0", "--no-progress", "--cfg-options", *data_options(demo_data)],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert proc.returncode != 0
    assert f"weights in {weights} do not fit the model" in proc.stderr, proc.stderr
    assert "<loaded state>" not in proc.stderr


# --- two jobs on one new MLflow store ------------------------------------------------------------------------

def test_jobs_creating_one_mlflow_store_together_are_all_recorded(ray_head, tmp_path):
    import ray

    store = tmp_path / "new" / "mlflow.db"  # neither the file nor its folder exists yet

    @ray.remote(num_cpus=0)
    def open_run(start_at: float, name: str) -> str:
        from rayseg.tracking_store import open_experiment

        while time.time() < start_at:  # all tasks hit the empty store in the same instant
            time.sleep(0.005)
        client, experiment_id = open_experiment(f"sqlite:///{store}", "rayseg", None)
        return client.create_run(experiment_id, run_name=name).info.run_id

    start_at = time.time() + 8  # after every task's worker has imported MLflow
    run_ids = ray.get([open_run.remote(start_at, f"job{i}") for i in range(4)])
    runs = mlflow_runs(store)
    assert sorted(r.info.run_id for r in runs) == sorted(run_ids)
    assert {r.info.run_name for r in runs} == {f"job{i}" for i in range(4)}


# --- the rendezvous store listens on loopback ----------------------------------------------------------------

def _listen_address_with(torch_config, storage: Path) -> str:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    def loop(config):  # defined here: a function of this test module would not unpickle in the workers
        import psutil
        import ray.train
        import torch.distributed as dist

        if ray.train.get_context().get_world_rank() == 0:  # the address rank 0's TCPStore listens on
            store = dist.distributed_c10d._get_default_store()
            while hasattr(store, "underlying_store"):
                store = store.underlying_store
            process = psutil.Process()
            connections = process.net_connections(kind="tcp") if hasattr(process, "net_connections") \
                else process.connections(kind="tcp")
            address = next(c.laddr.ip for c in connections
                           if c.status == psutil.CONN_LISTEN and c.laddr.port == store.port)
            with open(config["out"], "w") as f:  # Train V2 keeps metrics only with a checkpoint
                f.write(address)

    out = storage / f"listen-{type(torch_config).__name__}.txt"
    TorchTrainer(loop, train_loop_config={"out": str(out)}, torch_config=torch_config,
                 scaling_config=ScalingConfig(num_workers=2), run_config=RunConfig(storage_path=str(storage))).fit()
    return out.read_text()


@pytest.mark.slow
def test_the_rendezvous_store_listens_on_loopback_when_workers_share_a_node(ray_head, tmp_path):
    from ray.train.torch import TorchConfig

    from rayseg.engine.process_group import BoundStoreTorchConfig

    assert _listen_address_with(TorchConfig(), tmp_path) in ("0.0.0.0", "::")  # Ray's default: every interface
    assert _listen_address_with(BoundStoreTorchConfig(), tmp_path) == "127.0.0.1"


# --- Ctrl-C, a second run, a torn checkpoint, SIGTERM --------------------------------------------------------

@pytest.mark.slow
def test_ctrl_c_stops_cleanly_and_a_torn_checkpoint_is_skipped_on_resume(ray_head, demo_data, tmp_path):
    work = tmp_path / "run"
    env = dict(os.environ, RAY_ADDRESS=ray_head.address)
    out = tmp_path / "first.txt"
    first = start(train_cmd(work, demo_data, "runner.max_iters=200", "checkpoint_config.interval=2",
                            "log_config.interval=1", "evaluation.interval=0", "scaling.num_workers=2"), out, env)
    try:
        wait_for_iteration(first, work / "log.jsonl", out, 5)  # checkpoints 2 and 4 are registered

        # A second run in the same work dir is refused at once, before Ray, and changes nothing.
        second = subprocess.run(train_cmd(work, demo_data, "runner.max_iters=4"), capture_output=True, text=True,
                                env=env, cwd=REPO_ROOT, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        assert f"is in use by another run (PID {first.pid} on " in second.stderr
        assert first.poll() is None

        first.send_signal(signal.SIGINT)
        rc = first.wait(timeout=180)
    finally:
        if first.poll() is None:
            first.kill()
    output = out.read_text()
    assert rc == 130, output[-3000:]
    reached = max(logged_iters(work / "log.jsonl"))
    assert re.search(rf"stopped by SIGINT after iteration {reached} of 200 \(the last one logged\); MLflow run marked KILLED", output)
    checkpoint_iter = int(re.search(r"checkpoint at iteration (\d+)", output).group(1))
    assert checkpoint_iter >= 4 and checkpoint_iter % 2 == 0
    assert "--resume" in output.splitlines()[-1] and str(work) in output.splitlines()[-1]
    assert "Traceback" not in output
    (run,) = mlflow_runs(tmp_path / "mlflow.db")
    assert run.info.status == "KILLED"
    # The job's workers, controller and data actors are gone, not left running on the cluster.
    deadline = time.time() + 120
    while alive_actors(ray_head, run.data.tags["ray.job_id"]):
        assert time.time() < deadline, f"actors outlived the interrupted job: {alive_actors(ray_head, run.data.tags['ray.job_id'])}"
        time.sleep(1)

    # The newest checkpoint is torn (a node died mid-upload): --resume falls back to the one before.
    folders = sorted((work / "ray_results" / "run").glob("iter_*"))
    newest = work / "ray_results" / "run" / f"iter_{checkpoint_iter:08d}"
    assert newest in folders
    torn = newest / "checkpoint.pt"
    torn.write_bytes(torn.read_bytes()[:1000])
    resumed = subprocess.run(train_cmd(work, demo_data, f"runner.max_iters={checkpoint_iter + 1}",
                                       "checkpoint_config.interval=2", "log_config.interval=1",
                                       "evaluation.interval=0", "scaling.num_workers=2") + ["--resume"],
                             capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=600)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-4000:]
    assert re.search(rf"skipping checkpoint \S*iter_{checkpoint_iter:08d}: \S*checkpoint.pt is truncated", output)
    assert f"Restored the training state of iteration {checkpoint_iter - 2}" in output
    assert "PytorchStreamReader" not in output


@pytest.mark.slow
def test_sigterm_stops_cleanly_with_exit_143(ray_head, demo_data, tmp_path):
    work = tmp_path / "run"
    out = tmp_path / "out.txt"
    # A first checkpoint far away: the tiny model runs ~15 iterations a second, so 100 came before SIGTERM did.
    proc = start(train_cmd(work, demo_data, "runner.max_iters=5000", "checkpoint_config.interval=5000",
                           "log_config.interval=1", "evaluation.interval=0", "scaling.num_workers=1"),
                 out, dict(os.environ, RAY_ADDRESS=ray_head.address))
    try:
        wait_for_iteration(proc, work / "log.jsonl", out, 2)
        proc.terminate()
        rc = proc.wait(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    output = out.read_text()
    assert rc == 143, output[-3000:]
    assert "stopped by SIGTERM after iteration" in output and "no checkpoint was written yet" in output
    assert "Aborted" not in output and "*** " not in output and "Traceback" not in output
    (run,) = mlflow_runs(tmp_path / "mlflow.db")
    assert run.info.status == "KILLED"
