"""Benchmark: how a training job starts, second by second, and how slow its first iterations are.

    python bench/startup.py [--iters 200] [--batch 4] [--size 128] [--seconds 40]

Runs ``jobs/train.py`` on the demo model and synthetic shapes (1 worker with every CPU, MLflow on, validation
off, as bench/train_step.py's rayseg run) and samples every process of the job once a second from ``/proc``
(psutil): which process used how much CPU in each second, beside the last iteration logged so far. Then, from
log.jsonl: how long the loop waited for its first batch (``data_time`` × the first log interval) and how long
the first 20 iterations took. The last line is machine-readable:

    startup: first_batch_wait_s=W first20_s=T
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "bench"))

import train_step  # noqa: E402  (bench/ is not a package)


def census(root, previous: dict) -> tuple:
    """(CPU seconds per process group since ``previous``, the new snapshot) for ``root`` and its descendants."""
    now = train_step._cpu_seconds(root)
    groups: collections.Counter = collections.Counter()
    for (pid, group), seconds in now.items():
        groups[group] += seconds - previous.get((pid, group), 0.0)
    return groups, now


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=40.0, help="how long to sample the processes")
    args = parser.parse_args()
    import psutil

    from rayseg.datasets.demo import make_demo_dataset

    cpus = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        data, work = os.path.join(tmp, "data"), os.path.join(tmp, "work")
        make_demo_dataset(data, num_train=64, num_val=4, size=(args.size, args.size), seed=0)
        options = train_step._options(data, args.iters, args.batch, args.size) + [
            "scaling.num_workers=1", f"scaling.resources_per_worker={{CPU: {cpus}}}"]
        env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
        env.pop("RAY_ADDRESS", None)
        start = time.time()
        proc = subprocess.Popen([sys.executable, "jobs/train.py", train_step.CONFIG, "--work-dir", work,
                                 "--cfg-options", *options], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        root, snapshot = psutil.Process(proc.pid), {}
        print(f"{cpus} CPUs; jobs/train.py, demo model, 1 worker, batch {args.batch}, crop {args.size}px; CPU "
              "seconds per process group in each second (over 0.03 shown)")
        while proc.poll() is None and time.time() - start < args.seconds:
            time.sleep(1.0)
            groups, snapshot = census(root, snapshot)
            top = ", ".join(f"{g.replace('Ray worker/actor ', '')[:30]} {v:.2f}" for g, v in groups.most_common(6)
                            if v > 0.03)
            print(f"{time.time() - start:5.1f} s  iter {train_step._logged_iter(work):4d} | {top}", flush=True)
        if proc.wait() != 0:
            print(f"jobs/train.py failed (rc {proc.returncode}); run it by hand to see why", file=sys.stderr)
            return 1
        with open(os.path.join(work, "log.jsonl")) as f:
            records = [json.loads(line) for line in f if line.strip()]
    done, first20, rows = 0, 0.0, []
    for record in records:
        span = record["iter"] - done  # the log interval this record covers
        if record["iter"] <= 20:
            first20 += record["time"] * span
        rows.append(f"  iter {record['iter']:4d}: {record['time']:.3f} s/it, waiting for data "
                    f"{record['data_time']:.3f} s/it")
        done = record["iter"]
    print("the first log records:")
    print("\n".join(rows[:6]))
    first = records[0]
    wait = first["data_time"] * first["iter"]
    print(f"startup: first_batch_wait_s={wait:.2f} first20_s={first20:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
