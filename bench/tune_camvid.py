"""Benchmark: an ASHA sweep on CamVid within a CPU budget, beside the shipped CamVid config at the same length.

    python bench/tune_camvid.py [--iters 160] [--samples 4] [--data-root ../shared/data/camvid]
        [--work-dir work_dirs/bench_tune_camvid]

Runs, one after the other on the local machine:
1. ``jobs/train.py`` on the shipped CamVid config, shortened to ``--iters`` iterations (validation at the end);
2. ``jobs/tune.py configs/tune/camvid_schedule.yaml`` with ``--samples`` trials of ``--iters`` iterations each,
   ASHA's first rung at half of them,
and prints each one's wall time and val mIoU, so the best trial's mIoU sits beside the shipped config's at the
same iterations per trial. The CPU budget is what the run takes: the figures say how long.
"""
import argparse
import csv
import json
import os
import subprocess
import sys
import time

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAMVID = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "camvid"))
BASE = "configs/camvid/fcn_r18-slim-d8_2x4_256x256_800_camvid.yaml"
SWEEP = "configs/tune/camvid_schedule.yaml"


def run(cmd, log_path: str, env) -> float:
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} ... failed with exit code {proc.returncode}; see {log_path}")
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=160, help="iterations per trial and for the base run")
    parser.add_argument("--samples", type=int, default=4, help="trials in the sweep")
    parser.add_argument("--data-root", default=CAMVID)
    parser.add_argument("--work-dir", default="work_dirs/bench_tune_camvid")
    args = parser.parse_args()
    data_root = os.path.abspath(args.data_root)
    if not os.path.isdir(os.path.join(data_root, "img_dir", "train")):
        print(f"CamVid not found at {data_root} (expected img_dir/train; see jobs/prepare_camvid.py)")
        return 2
    work = os.path.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"))
    half = max(1, args.iters // 2)
    options = [f"data.{split}.data_root={data_root}" for split in ("train", "val", "test")] + [
        f"runner.max_iters={args.iters}", f"evaluation.interval={half}", f"checkpoint_config.interval={half}",
        f"mlflow.tracking_uri=sqlite:///{work}/mlflow.db", "lr_config.warmup_iters=20"]

    base_dir = os.path.join(work, "base")
    base_s = run([sys.executable, "jobs/train.py", BASE, "--work-dir", base_dir, "--cfg-options", *options],
                 os.path.join(work, "base.log"), env)
    with open(os.path.join(base_dir, "val_metrics.json")) as f:
        base_miou = json.load(f)["mIoU"]

    with open(os.path.join(REPO, SWEEP)) as f:
        sweep = yaml.safe_load(f)
    sweep["base_config"] = os.path.join(REPO, BASE)
    for policy in sweep["search_space"]["lr_config"]["choice"]:
        policy["warmup_iters"] = 20  # as for the base run: a schedule sized to the shorter run
    sweep["tune"].update({"num_samples": args.samples, "max_concurrent_trials": 1,
                          "scheduler": {"type": "asha", "grace_period": half, "reduction_factor": 2}})
    sweep_path = os.path.join(work, "sweep.yaml")
    with open(sweep_path, "w") as f:
        yaml.safe_dump(sweep, f, sort_keys=False)
    sweep_dir = os.path.join(work, "sweep")
    sweep_s = run([sys.executable, "jobs/tune.py", sweep_path, "--work-dir", sweep_dir, "--cfg-options", *options],
                  os.path.join(work, "sweep.log"), env)
    with open(os.path.join(sweep_dir, "trials.csv")) as f:
        rows = list(csv.DictReader(f))

    print(f"CamVid, {args.iters} iterations per run, validation every {half}; machine: {os.cpu_count()} CPUs")
    print(f"shipped config ({BASE}): val mIoU {base_miou:.2f} in {base_s / 60:.1f} min")
    print(f"ASHA sweep ({args.samples} trials, one at a time): {sweep_s / 60:.1f} min")
    keys = [k for k in rows[0] if k not in ("trial", "end", "iter", "best_mIoU", "last_mIoU", "mlflow_run",
                                            "work_dir")] if rows else []
    for row in rows:
        shown = ", ".join(f"{k}={row[k]}" for k in keys)
        print(f"  {row['trial']}  {row['end']:<13} iter {row['iter']:>4}  best val mIoU {float(row['best_mIoU']):6.2f}"
              f"  {shown}")
    if rows:
        print(f"best trial: val mIoU {float(rows[0]['best_mIoU']):.2f} vs shipped config {base_miou:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
