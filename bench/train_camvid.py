"""Benchmark: train the CamVid CPU config from scratch and print wall time and validation mIoU.

    python bench/train_camvid.py [--config configs/camvid/fcn_r18-slim-d8_2x4_256x256_800_camvid.yaml]

Target (issue 2): >= 40 mIoU on CamVid val within 30 minutes of wall time on 2 CPU cores.
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/camvid/fcn_r18-slim-d8_2x4_256x256_800_camvid.yaml")
    parser.add_argument("--work-dir", default="work_dirs/bench_camvid")
    args = parser.parse_args()
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "jobs/train.py", args.config, "--work-dir", args.work_dir],
                          cwd=REPO, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"training failed with exit code {proc.returncode}")
        return proc.returncode
    with open(os.path.join(REPO, args.work_dir, "val_metrics.json")) as f:
        metrics = json.load(f)
    print(f"config: {args.config}")
    print(f"cores: {os.cpu_count()}  wall time (incl. Ray start-up and validation): {wall / 60:.1f} min")
    print(f"val aAcc {metrics['aAcc']:.2f}  mIoU {metrics['mIoU']:.2f}  mAcc {metrics['mAcc']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
