"""Benchmark: distributed evaluation with 1 vs 2 inference actors on CamVid val, and metric accumulation
(SegMetric's single bincount vs a naive per-image loop over classes).

    python bench/eval.py [--checkpoint work_dirs/camvid/latest.pth] [--limit 40] [--workers 1 2]
        [--data-root ../shared/data/camvid]

Without --checkpoint the model keeps random-initialised weights (throughput does not depend on them;
the metrics then mean nothing, and the output says so). Ray starts once, and one untimed warm-up run
goes first; each timed run still pays its actors' start-up (model load), reported as "first result after",
and "after that" is the steady-state rate from the first result to the last.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only (see DESIGN.md)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
CONFIG = "configs/camvid/fcn_r18-slim-d8_2x4_256x256_800_camvid.yaml"
CAMVID = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "camvid"))


def limited_root(root: str, limit: int, tmp: str) -> str:
    """A CamVid-layout folder of symlinks to the first ``limit`` val images and their labels."""
    for kind in ("img_dir", "ann_dir"):
        os.makedirs(os.path.join(tmp, kind, "val"))
    for name in sorted(os.listdir(os.path.join(root, "img_dir", "val")))[:limit]:
        for kind in ("img_dir", "ann_dir"):
            os.symlink(os.path.join(root, kind, "val", name), os.path.join(tmp, kind, "val", name))
    return tmp


def time_eval(cfg, ckpt, workers: int, n: int, use_gpu: bool = False) -> dict:
    from rayseg.apis.distributed_eval import evaluate_distributed

    marks = {}
    start = time.perf_counter()

    def on_progress(done: int) -> None:
        marks.setdefault("first", (time.perf_counter(), done))

    results = evaluate_distributed(cfg, ckpt, split="val", num_workers=workers, use_gpu=use_gpu,
                                   progress=False, on_progress=on_progress)
    total = time.perf_counter() - start
    first_t, first_n = marks["first"]
    steady = (n - first_n) / (start + total - first_t) if n > first_n else float("nan")
    return {"results": results, "total": total, "first": first_t - start, "overall": n / total, "steady": steady}


def labels_and_preds(cfg, limit: int):
    """The val label maps (label_map applied, void → 255) and noisy 'predictions' made from them."""
    from rayseg.datasets import build_dataset
    from rayseg.datasets.loading import LoadAnnotations

    dataset = build_dataset(cfg["data"]["val"])
    rng = np.random.default_rng(0)
    labels, preds = [], []
    for sample in dataset.samples[:limit]:
        gt = LoadAnnotations()({"seg_path": sample["seg_path"], **dataset.dataset_fields()})["gt_semantic_seg"]
        pred = np.where(gt == 255, 0, gt).astype(np.int64)
        noise = rng.random(gt.shape) < 0.3  # 30 % of pixels get a random class
        pred[noise] = rng.integers(0, dataset.num_classes, int(noise.sum()))
        labels.append(gt)
        preds.append(pred)
    return labels, preds, dataset.num_classes


def naive_areas(labels, preds, n: int, ignore: int = 255):
    inter, area_p, area_l = (np.zeros(n, np.int64) for _ in range(3))
    for gt, pred in zip(labels, preds):
        valid = gt != ignore
        for c in range(n):
            p, lab = (pred == c) & valid, (gt == c) & valid
            inter[c] += np.sum(p & lab)
            area_p[c] += np.sum(p)
            area_l[c] += np.sum(lab)
    return inter, area_p + area_l - inter, area_p, area_l


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--checkpoint", help="weights to evaluate (default: random-initialised weights)")
    parser.add_argument("--data-root", default=CAMVID,
                        help="CamVid in the img_dir/ann_dir layout (default: the shared copy, %(default)s)")
    parser.add_argument("--limit", type=int, help="use only the first N val images")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="actor counts to time")
    parser.add_argument("--address", help="Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--use-gpu", action="store_true", help="one GPU per inference actor")
    args = parser.parse_args()
    if not os.path.isdir(os.path.join(args.data_root, "img_dir", "val")):
        print(f"CamVid not found at {args.data_root} (expected img_dir/val; see jobs/prepare_camvid.py)")
        return 2
    import torch

    from rayseg.config import load_config
    from rayseg.engine.checkpoint import weights_file_payload
    from rayseg.evaluation import SegMetric
    from rayseg.models import build_segmentor
    from rayseg.utils.ray_session import connect_ray, quiet_ray_data

    tmp = tempfile.mkdtemp(prefix="rayseg-bench-eval-")
    root = limited_root(args.data_root, args.limit, os.path.join(tmp, "data")) if args.limit else args.data_root
    roots = [f"data.train.data_root={args.data_root}"] + [f"data.{s}.data_root={root}" for s in ("val", "test")]
    cfg = load_config(os.path.join(REPO, args.config), roots)
    n = len(os.listdir(os.path.join(root, "img_dir", "val")))
    ckpt = args.checkpoint
    if ckpt is None:
        ckpt = os.path.join(tmp, "latest.pth")
        torch.manual_seed(0)
        torch.save(weights_file_payload(build_segmentor(cfg["model"]).state_dict(), cfg, 0), ckpt)
        print(f"checkpoint: none given — random-initialised weights written to {ckpt} (metrics meaningless)")
    else:
        print(f"checkpoint: {ckpt}")
    print(f"config: {args.config}; {n} CamVid val images (480x360); machine: {os.cpu_count()} cores")

    connect_ray(args.address, max(args.workers))
    quiet_ray_data()
    # Untimed warm-up: the first Ray Data execution in a fresh cluster also pays for starting Ray's
    # worker processes; without it whichever actor count runs first would look slower.
    time_eval(cfg, ckpt, max(args.workers), n, args.use_gpu)
    runs = {}
    device = "GPU" if args.use_gpu else "CPU"
    for workers in args.workers:
        runs[workers] = run = time_eval(cfg, ckpt, workers, n, args.use_gpu)
        print(f"distributed eval, {workers} {device} actor(s): {run['overall']:.2f} img/s overall ({run['total']:.1f} s "
              f"for {n} images), first result after {run['first']:.1f} s, {run['steady']:.2f} img/s after that;"
              f" mIoU {run['results']['mIoU']:.2f}")
    first = runs[args.workers[0]]["results"]
    same = all(np.array_equal(first["confusion"], r["results"]["confusion"]) for r in runs.values())
    print(f"identical confusion matrices across actor counts: {same}")
    if len(args.workers) >= 2:
        a, b = args.workers[0], args.workers[-1]
        print(f"speed-up {b} vs {a} actor(s): overall {runs[b]['overall'] / runs[a]['overall']:.2f}x, "
              f"steady state {runs[b]['steady'] / runs[a]['steady']:.2f}x")

    labels, preds, num_classes = labels_and_preds(cfg, n)
    start = time.perf_counter()
    metric = SegMetric(num_classes)
    for gt, pred in zip(labels, preds):
        metric.update(pred, gt)
    fast = time.perf_counter() - start
    start = time.perf_counter()
    naive = naive_areas(labels, preds, num_classes)
    slow = time.perf_counter() - start
    areas = metric.areas
    agree = all(np.array_equal(areas[k], v) for k, v in
                zip(("area_intersect", "area_union", "area_pred_label", "area_label"), naive))
    print(f"metric accumulation over {n} label maps, {num_classes} classes: SegMetric bincount "
          f"{n / fast:.1f} img/s ({fast * 1000:.0f} ms), naive per-class loop {n / slow:.1f} img/s "
          f"({slow * 1000:.0f} ms); ratio {slow / fast:.2f}x; same areas: {agree}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
