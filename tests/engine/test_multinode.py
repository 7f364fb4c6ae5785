"""A simulated 3-node Ray cluster (``ray.cluster_utils.Cluster``): a head and two worker nodes.

`ray job submit` sends jobs/train.py to the head; its two DDP workers (gloo, SyncBN) must land on different
nodes, and both must end with the same weights.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import BIN, REPO_ROOT, stop_ray_processes

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture(scope="module")
def cluster():
    """A head (3 CPUs) and two 1-CPU worker nodes offering ``trainer_slot``, run by tests/simulated_cluster.py."""
    from simulated_cluster import SimulatedCluster

    sim = SimulatedCluster(2)
    try:
        yield sim.address, sim.dashboard, set(sim.worker_node_ids)
    finally:
        sim.shutdown(stop_ray_processes)


def test_job_submit_trains_across_nodes_with_identical_replicas(cluster, demo_data, tmp_path):
    _, dashboard, worker_node_ids = cluster
    work = tmp_path / "multinode"
    options = [f"data.{s}.data_root={demo_data}" for s in ("train", "val", "test")] + [
        "runner.max_iters=4", "evaluation.interval=2", "checkpoint_config.interval=2", "log_config.interval=1",
        "mlflow.system_metrics_interval=1",
        "scaling.num_workers=2", "scaling.placement_strategy=STRICT_SPREAD",
        "scaling.resources_per_worker={CPU: 1, trainer_slot: 1}"]
    entry = [sys.executable, str(REPO_ROOT / "jobs" / "train.py"), str(REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml"),
             "--work-dir", str(work), "--cfg-options", *options]
    # No --working-dir here (test_train_e2e covers it): simulated nodes share one session folder, so a worker
    # node's runtime-env agent re-extracts the job's package under the driver's feet, deleting its cwd.
    # Real nodes each have their own disk.
    cmd = [str(BIN / "ray"), "job", "submit", "--address", dashboard, "--", *entry]
    # The head's job agent comes up a little after the dashboard answers; on a loaded 2-core machine that took
    # over a minute once.
    deadline = time.time() + 240
    while True:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO_ROOT, env=dict(os.environ))
        if "No available agent" not in proc.stdout + proc.stderr or time.time() > deadline:
            break
        time.sleep(2)
    (tmp_path / "job_output.txt").write_text(proc.stdout + proc.stderr)  # kept for debugging a failure
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert "Iter [4/4]" in proc.stdout

    replicas = json.loads((work / "replicas.json").read_text())
    assert sorted(r["rank"] for r in replicas) == [0, 1]
    nodes = [r["node_id"] for r in replicas]
    assert len(set(nodes)) == 2, "STRICT_SPREAD must put the two workers on different nodes"
    assert set(nodes) == worker_node_ids, "workers belong on the nodes that offer trainer_slot"
    assert replicas[0]["weights_sha256"] == replicas[1]["weights_sha256"]

    records = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in records] == [1, 2, 3, 4]
    assert (work / "latest.pth").is_file()

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.data.tags["ray.num_nodes"] == "3" and run.data.tags["rayseg.num_workers"] == "2"
    # Both worker nodes sample their system metrics into the one run (plus nothing from the head: no worker).
    sampled = {k.split("/")[1] for k in run.data.metrics if k.startswith("system/node-")}
    assert sampled == {f"node-{n[:8]}" for n in worker_node_ids}, sorted(run.data.metrics)
