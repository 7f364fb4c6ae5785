"""Benchmark: the time an elastic run loses to one preemption, on a simulated cluster.

    python bench/elastic.py [--start-timeout 15] [--pace 0.1]

Runs tests/elastic_scenario.py's scenario (a head and two 1-CPU worker nodes; `ray job submit` of the demo model
with ``scaling.num_workers: [1, 2]``, one node killed after 20 iterations, a node added back once training goes
on with one worker) and reads the run's own records:

    lost_s      node killed → the first report of the 1-worker group (training again, from the last checkpoint)
    redone      iterations between the last checkpoint and the kill, trained again after the restart
    regrow_s    node added → the first report of the 2-worker group
    regrow_redone  the same for the resize back to 2 (Ray Train restarts the group from the last checkpoint)

``--start-timeout`` sets RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S on the cluster: how long Ray Train waits for a
worker group that cannot start (it first retries at the old size, the lost node's resources not yet written off)
before trying the size that fits. Reports (the times' source) come every 2 iterations, so a time is late by at
most two iterations (about 0.5 s here).
The last line is machine-readable:

    elastic: lost_s=L redone=R regrow_s=G regrow_redone=Q
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--start-timeout", type=float, default=15.0,
                        help="RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S for the cluster (Ray's default: 60)")
    parser.add_argument("--pace", type=float, default=0.1, help="seconds the run sleeps per iteration")
    parser.add_argument("--checkpoint-interval", type=int, default=10)
    args = parser.parse_args()

    from elastic_scenario import run_preemption
    from simulated_cluster import SimulatedCluster

    from rayseg.datasets.demo import make_demo_dataset

    folder = Path(tempfile.mkdtemp(prefix="rayseg-bench-elastic-"))
    data = folder / "data"
    make_demo_dataset(str(data))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sim = SimulatedCluster(2, env={"RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": f"{args.start_timeout:g}"})
    try:
        result = run_preemption(sim, str(data), folder, max_iters=120, hold_at=100, log_interval=2,
                                checkpoint_interval=args.checkpoint_interval, pace_s=args.pace)
    finally:
        sim.shutdown()
    if result["returncode"] != 0:
        print(result["output"][-3000:])
        return 1
    events = [json.loads(line) for line in (result["work"] / "events.jsonl").read_text().splitlines()]
    shrink = next(e for e in events if e["event"] == "shrink")
    grow = next(e for e in events if e["event"] == "grow")
    ckpt = args.checkpoint_interval
    lost_s = shrink["time"] - result["removed_at"]
    redone = result["last_iter_before_loss"] - result["last_iter_before_loss"] // ckpt * ckpt
    regrow_s = grow["time"] - result["added_at"]
    # the 1-worker group's last logged iteration before the resize, against the checkpoint it restarted from
    records = [json.loads(line) for line in (result["work"] / "log.jsonl").read_text().splitlines()]
    before_grow = max(r["iter"] for r in records if r["workers"] == 1)
    regrow_redone = before_grow - before_grow // ckpt * ckpt
    print(f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}; python {platform.python_version()}")
    print(f"cluster: head + 2 one-CPU worker nodes (ray.cluster_utils), RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S="
          f"{args.start_timeout:g}, elastic_resize_monitor_interval_s=5, checkpoint every {ckpt} iterations, "
          f"{args.pace:g} s pace per iteration")
    for e in events:
        print(f"  {e['event']:>6} at iteration {e['iter']}: {e['reason'][:120]}")
    print(f"node lost -> training again with 1 worker: {lost_s:.1f} s, {redone} iterations redone")
    print(f"node added -> training with 2 workers: {regrow_s:.1f} s, {regrow_redone} iterations redone")
    print(f"elastic: lost_s={lost_s:.1f} redone={redone} regrow_s={regrow_s:.1f} regrow_redone={regrow_redone}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
