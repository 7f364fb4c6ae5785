"""Benchmark: train the CamVid CPU config from scratch and print wall time and validation mIoU.

    python bench/train_camvid.py [--config configs/camvid/fcn_r18-slim-d8_1x8_256x256_2200_camvid.yaml]
        [--work-dir work_dirs/bench_camvid] [--data-root ../shared/data/camvid]

The data root defaults to the shared CamVid copy (../shared/data/camvid), not the config's data/camvid,
and is passed to every split with --cfg-options.

Target (issue 16): val mIoU >= 55 and aAcc >= 85 from scratch within 30 minutes of wall time on 2 CPU cores
(issue 2's earlier one: >= 40 mIoU). It also prints each class's IoU.
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAMVID = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "camvid"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/camvid/fcn_r18-slim-d8_1x8_256x256_2200_camvid.yaml")
    parser.add_argument("--work-dir", default="work_dirs/bench_camvid")
    parser.add_argument("--data-root", default=CAMVID,
                        help="CamVid in the img_dir/ann_dir layout (default: %(default)s)")
    args = parser.parse_args()
    data_root = os.path.abspath(args.data_root)
    if not os.path.isdir(os.path.join(data_root, "img_dir", "train")):
        print(f"CamVid not found at {data_root} (expected img_dir/train; see jobs/prepare_camvid.py)")
        return 2
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0"))
    start = time.perf_counter()
    roots = [f"data.{split}.data_root={data_root}" for split in ("train", "val", "test")]
    proc = subprocess.run([sys.executable, "jobs/train.py", args.config, "--work-dir", args.work_dir,
                           "--cfg-options", *roots], cwd=REPO, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(f"training failed with exit code {proc.returncode}")
        return proc.returncode
    with open(os.path.join(REPO, args.work_dir, "val_metrics.json")) as f:
        metrics = json.load(f)
    print(f"config: {args.config}; data: {data_root}")
    print(f"cores: {os.cpu_count()}  wall time (incl. Ray start-up and validation): {wall / 60:.1f} min")
    print(f"val aAcc {metrics['aAcc']:.2f}  mIoU {metrics['mIoU']:.2f}  mAcc {metrics['mAcc']:.2f}")
    per_class = metrics.get("per_class") or {}
    if per_class:
        print("IoU: " + ", ".join(f"{name} {values['IoU']:.1f}" for name, values in per_class.items()))
    met = wall <= 30 * 60 and metrics["mIoU"] >= 55 and metrics["aAcc"] >= 85
    print(f"target (mIoU >= 55, aAcc >= 85 within 30 min): {'met' if met else 'not met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
