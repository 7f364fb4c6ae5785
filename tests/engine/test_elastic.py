"""Elastic training on a simulated 3-node cluster: lose a node and keep going, gain one and speed up.

A head (3 CPUs: the job driver, Ray Data's read tasks and decode actors) and two 1-CPU worker nodes that each
offer one ``trainer_slot``. `ray job submit` starts jobs/train.py with ``scaling.num_workers: [1, 2]``; the test
watches log.jsonl, kills one worker node mid-run (training must go on with 1 worker and the same global batch),
then adds a node back (it must grow to 2 again), and checks one continuous history and identical replicas.

The scenario itself (cluster changes, pacing) is tests/elastic_scenario.py, which bench/elastic.py times.
"""
from __future__ import annotations

import json

import pytest

from conftest import stop_ray_processes

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

MAX_ITERS = 160


def test_elastic_run_shrinks_on_node_loss_and_grows_back(demo_data, tmp_path):
    from elastic_scenario import read_records, run_preemption
    from simulated_cluster import SimulatedCluster

    # Ray Train waits this long for a worker group that cannot start (the lost node's slot, until Ray notices
    # it is gone) before it retries at the size that fits; its default is 60 s.
    sim = SimulatedCluster(2, env={"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "15"})
    try:
        result = run_preemption(sim, str(demo_data), tmp_path, max_iters=MAX_ITERS)
    finally:
        sim.shutdown(stop_ray_processes)
    output, work = result["output"], result["work"]
    (tmp_path / "job_output.txt").write_text(output)  # kept for debugging a failure
    assert result["returncode"] == 0, output[-4000:]

    records = read_records(work / "log.jsonl")
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
