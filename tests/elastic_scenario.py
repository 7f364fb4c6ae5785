"""One preemption on a simulated cluster, as tests/engine/test_elastic.py checks it and bench/elastic.py times it.

A head (3 CPUs: the job driver, Ray Data's read tasks and decode actors) and two 1-CPU worker nodes that each
offer one ``trainer_slot`` (tests/simulated_cluster.py). `ray job submit` starts jobs/train.py with
``scaling.num_workers: [1, 2]``; the scenario watches log.jsonl, kills one worker node after ``lose_at``
iterations, adds a node back once training goes on with one worker, and lets the run finish once it has
grown back to two.

The run is paced by a hook (``Pace``, written next to the work dir and loaded through ``custom_imports``) so
the node changes happen mid-run however fast the machine is: it sleeps ``pace_s`` per iteration and holds the
run before its last iterations until the scenario has seen it grow back.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List

REPO_ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
CONFIG = REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml"

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


class ScenarioFailed(RuntimeError):
    """The run did not do what the scenario waited for; the message says what and shows the run's output."""


def read_records(log: Path) -> List[Dict[str, Any]]:
    """log.jsonl's records so far (a line still being written is left out)."""
    if not log.is_file():
        return []
    out = []
    for line in log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def _wait_for(log: Path, job: subprocess.Popen, what: str, predicate: Callable[[list], bool],
              timeout: float) -> List[Dict[str, Any]]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        records = read_records(log)
        if predicate(records):
            return records
        if job.poll() is not None:
            raise ScenarioFailed(f"the job ended (rc {job.returncode}) while waiting for {what}: "
                                 f"{job.stdout.read()[-3000:]}")
        time.sleep(0.5)
    raise ScenarioFailed(f"timed out after {timeout} s waiting for {what}; workers so far: "
                         f"{[(r.get('iter'), r.get('workers')) for r in read_records(log)]}")


def run_preemption(sim, data_root: str, folder: Path, max_iters: int = 160, hold_at: int = 140,
                   lose_at: int = 20, log_interval: int = 5, checkpoint_interval: int = 10,
                   pace_s: float = 0.1) -> Dict[str, Any]:
    """Run the scenario on ``sim`` (a started ``SimulatedCluster`` with two worker nodes).

    Returns ``work`` (the work dir), ``output`` (the job's console), ``returncode``, ``removed_at`` and
    ``added_at`` (``time.time()`` of the node changes) and ``last_iter_before_loss``.
    """
    pace, hold = folder / "pace", folder / "hold"
    pace.touch()
    hold.touch()
    (folder / "pace_hook.py").write_text(PACE_HOOK)
    work = folder / "elastic"
    log = work / "log.jsonl"
    options = [f"data.{s}.data_root={data_root}" for s in ("train", "val", "test")] + [
        f"runner.max_iters={max_iters}", f"evaluation.interval={max_iters}",
        f"checkpoint_config.interval={checkpoint_interval}", f"log_config.interval={log_interval}",
        "mlflow.system_metrics=false",
        "scaling.num_workers=[1, 2]", "scaling.elastic_resize_monitor_interval_s=5",
        "scaling.resources_per_worker={CPU: 1, trainer_slot: 1}",
        "custom_imports={imports: [pace_hook]}",
        f"custom_hooks=[{{type: Pace, pace_file: '{pace}', hold_file: '{hold}', seconds: {pace_s}, "
        f"hold_at: {hold_at}}}]"]
    entry = [sys.executable, str(REPO_ROOT / "jobs" / "train.py"), str(CONFIG), "--work-dir", str(work),
             "--cfg-options", *options]
    # The hook module reaches the job's processes on PYTHONPATH, through the job's runtime env.
    runtime_env = json.dumps({"env_vars": {"PYTHONPATH": str(folder)}})
    job = None
    result: Dict[str, Any] = {"work": work}
    try:
        # The head's job agent comes up a little after the dashboard answers (see test_multinode).
        deadline = time.time() + 240
        while True:
            job = subprocess.Popen([str(RAY), "job", "submit", "--address", sim.dashboard,
                                    "--runtime-env-json", runtime_env, "--", *entry],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=dict(os.environ))
            try:
                early = job.wait(timeout=5)
            except subprocess.TimeoutExpired:
                break
            output = job.stdout.read()
            if "No available agent" not in output or time.time() > deadline:
                raise ScenarioFailed(f"ray job submit ended at once (rc {early}): {output[-3000:]}")
            time.sleep(2)

        _wait_for(log, job, f"{lose_at} iterations on 2 workers",
                  lambda rs: any(r.get("workers") == 2 and r["iter"] >= lose_at for r in rs), 300)
        sim.remove(sim.worker_node_ids[0])
        result["removed_at"] = time.time()
        lost_at = result["last_iter_before_loss"] = max(r["iter"] for r in read_records(log))
        records = _wait_for(log, job, "training to go on with 1 worker",
                            lambda rs: any(r.get("workers") == 1 and r["iter"] > lost_at for r in rs), 240)
        one_at = max(r["iter"] for r in records)
        sim.add()
        result["added_at"] = time.time()
        _wait_for(log, job, "the run to grow back to 2 workers",
                  lambda rs: any(r.get("workers") == 2 and r["iter"] > one_at for r in rs), 240)
        pace.unlink()
        hold.unlink()
        result["output"], _ = job.communicate(timeout=600)
        result["returncode"] = job.returncode
    finally:
        if job is not None and job.poll() is None:
            job.kill()
    return result
