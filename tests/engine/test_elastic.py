"""Elastic training on a simulated 3-node cluster: lose a node and keep going, gain one and speed up.

A head (3 CPUs: the job driver, Ray Data's read tasks and decode actors) and two 1-CPU worker nodes that each
offer one ``trainer_slot``. `ray job submit` starts jobs/train.py with ``scaling.num_workers: [1, 2]``; the test
watches log.jsonl, kills one worker node mid-run (training must go on with 1 worker and the same global batch),
then adds a node back (it must grow to 2 again), and checks one continuous history and identical replicas.

The run is paced by a hook (``Pace``, written into tmp_path and loaded through ``custom_imports``) so the
node changes happen mid-run however fast this machine is: it sleeps a little per iteration and holds the run
before its last iterations until the test has seen the run grow back.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import BIN, REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

MAX_ITERS = 160
HOLD_AT = 140  # the hook holds iterations from here on until the test removes the hold file

PACE_HOOK = '''
import os
import time

from rayseg.engine.hooks import Hook
from rayseg.registry import HOOKS


@HOOKS.register_module()
class Pace(Hook):
    """Sleep ``seconds`` after each iteration while ``pace_file`` exists; from iteration ``hold_at`` on, wait
    until ``hold_file`` is gone."""

    def __init__(self, pace_file, hold_file, seconds=0.1, hold_at=0):
        self.pace_file, self.hold_file, self.seconds, self.hold_at = pace_file, hold_file, seconds, hold_at

    def after_train_iter(self, runner):
        if os.path.exists(self.pace_file):
            time.sleep(self.seconds)
        while runner.iter + 1 >= self.hold_at and os.path.exists(self.hold_file):
            time.sleep(0.2)
'''


def _records(log):
    if not log.is_file():
        return []
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass  # a line being written
    return out


def _wait_for(log, job, what, predicate, timeout):
    """The first log.jsonl record after which ``predicate(records)`` holds; fails naming ``what``."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        records = _records(log)
        if predicate(records):
            return records
        if job.poll() is not None:
            pytest.fail(f"the job ended (rc {job.returncode}) while waiting for {what}: "
                        f"{job.stdout.read()[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout} s waiting for {what}; workers so far: "
                f"{[(r.get('iter'), r.get('workers')) for r in _records(log)]}")


def test_elastic_run_shrinks_on_node_loss_and_grows_back(demo_data, tmp_path):
    from conftest import SimulatedCluster

    # Ray Train waits this long for a worker group that cannot start (the lost node's slot, until Ray notices
    # it is gone) before it retries at the size that fits; its default is 60 s.
    sim = SimulatedCluster(2, env={"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "15"})
    pace, hold = tmp_path / "pace", tmp_path / "hold"
    pace.touch()
    hold.touch()
    (tmp_path / "pace_hook.py").write_text(PACE_HOOK)
    work = tmp_path / "elastic"
    log = work / "log.jsonl"
    options = [f"data.{s}.data_root={demo_data}" for s in ("train", "val", "test")] + [
        f"runner.max_iters={MAX_ITERS}", f"evaluation.interval={MAX_ITERS}", "checkpoint_config.interval=10",
        "log_config.interval=5", "mlflow.system_metrics=false",
        "scaling.num_workers=[1, 2]", "scaling.elastic_resize_monitor_interval_s=5",
        "scaling.resources_per_worker={CPU: 1, trainer_slot: 1}",
        "custom_imports={imports: [pace_hook]}",
        f"custom_hooks=[{{type: Pace, pace_file: '{pace}', hold_file: '{hold}', seconds: 0.1, hold_at: {HOLD_AT}}}]"]
    entry = [sys.executable, str(REPO_ROOT / "jobs" / "train.py"), str(REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml"),
             "--work-dir", str(work), "--cfg-options", *options]
    # The hook module reaches the job's processes on PYTHONPATH, through the job's runtime env.
    runtime_env = json.dumps({"env_vars": {"PYTHONPATH": str(tmp_path)}})
    job = None
    try:
        # The head's job agent comes up a little after the dashboard answers (see test_multinode).
        deadline = time.time() + 240
        while True:
            job = subprocess.Popen([str(BIN / "ray"), "job", "submit", "--address", sim.dashboard,
                                    "--runtime-env-json", runtime_env, "--", *entry],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
            try:
                early = job.wait(timeout=5)
            except subprocess.TimeoutExpired:
                break
            output = job.stdout.read()
            if "No available agent" not in output or time.time() > deadline:
                pytest.fail(f"ray job submit ended at once (rc {early}): {output[-3000:]}")
            time.sleep(2)

        _wait_for(log, job, "20 iterations on 2 workers",
                  lambda rs: any(r.get("workers") == 2 and r["iter"] >= 20 for r in rs), 300)
        sim.remove(sim.worker_node_ids[0])
        lost_at = max(r["iter"] for r in _records(log))
        records = _wait_for(log, job, "training to go on with 1 worker",
                            lambda rs: any(r.get("workers") == 1 and r["iter"] > lost_at for r in rs), 240)
        one_at = max(r["iter"] for r in records)
        sim.add()
        _wait_for(log, job, "the run to grow back to 2 workers",
                  lambda rs: any(r.get("workers") == 2 and r["iter"] > one_at for r in rs), 240)
        pace.unlink()
        hold.unlink()
        output, _ = job.communicate(timeout=600)
    finally:
        if job is not None and job.poll() is None:
            job.kill()
        sim.shutdown()
    (tmp_path / "job_output.txt").write_text(output)  # kept for debugging a failure
    assert job.returncode == 0, output[-4000:]

    records = _records(log)
    # one continuous history: every log interval once, in order, although iterations were redone after restarts
    assert [r["iter"] for r in records] == list(range(5, MAX_ITERS + 1, 5))
    sizes = [r["workers"] for r in records]
    first_one = sizes.index(1)
    assert 2 in sizes[:first_one] and 2 in sizes[first_one:], sizes
    # the global batch stayed 2 workers x 2 samples: one worker ran two micro-batches per iteration
    assert "Resized from 2 to 1 workers; the global batch stays 4 (2 micro-batch(es)" in output, output[-3000:]

    events = [json.loads(line) for line in (work / "events.jsonl").read_text().splitlines()]
    assert [(e["event"], e["workers"]) for e in events] == [("start", 2), ("shrink", 1), ("grow", 2)], events
    assert "workers lost" in events[1]["reason"] and "capacity returned" in events[2]["reason"]
    assert "workers: 2 -> 1 of [1, 2]" in (work / "train.log").read_text()

    replicas = json.loads((work / "replicas.json").read_text())
    assert sorted(r["rank"] for r in replicas) == [0, 1]
    assert replicas[0]["weights_sha256"] == replicas[1]["weights_sha256"]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    history = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "train/workers"),
                                       key=lambda m: m.step)]
    assert history == [float(s) for s in sizes]
    assert run.data.tags["rayseg.resizes"] == "2" and run.data.tags["rayseg.workers"] == "2"
    assert "events.jsonl" in [a.path for a in client.list_artifacts(run.info.run_id)]
