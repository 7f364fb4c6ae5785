"""Benchmark: does rayseg's Ray Data stream keep a GPU busy? PSPNet-R50-D8 at 512x1024, batch 2, one GPU.

    python bench/gpu_feed.py [--images 48] [--iters 60] [--warmup 20] [--actors 2 8]
        [--precision fp32|bf16|bf16+channels_last]

Side by side in one run:

    GPU only : the training step on a fixed batch already on the GPU (bench/train_step.py's gpu_step_time),
               the most the GPU can do: timed one step at a time, and back to back (one sync at the end);
    rayseg   : jobs/train.py with one GPU worker, fed by Ray Data (decode, Cityscapes' Resize 0.5-2.0 +
               RandomCrop 512x1024 + flip + PhotoMetricDistortion on CPU actors, normalisation on the GPU),
               once per --actors value (``data.workers_per_gpu``).

The data are synthetic Cityscapes-layout PNGs at 2048x1024 (smooth colour fields with noise, 19-class label
maps) written to a temp folder, so the CPU work per image is that of Cityscapes. Steady-state s/it comes from
the run's log.jsonl (iterations after --warmup). Last line: ``gpu_feed: best_ratio=R actors=A``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
PSP_CONFIG = os.path.join(REPO, "configs", "pspnet", "pspnet_r50-d8_512x1024_40k_cityscapes.yaml")


def _write_pair(args) -> None:
    import cv2

    root, split, i = args
    rng = np.random.default_rng(i)
    img = cv2.resize(rng.integers(0, 256, (16, 32, 3), dtype=np.uint8), (2048, 1024), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img.astype(np.int16) + rng.integers(-8, 9, img.shape), 0, 255).astype(np.uint8)
    seg = cv2.resize(rng.integers(0, 19, (8, 16), dtype=np.uint8), (2048, 1024), interpolation=cv2.INTER_NEAREST)
    name = f"synth_{i:06d}_000019"
    cv2.imwrite(os.path.join(root, "leftImg8bit", split, "synth", f"{name}_leftImg8bit.png"), img)
    cv2.imwrite(os.path.join(root, "gtFine", split, "synth", f"{name}_gtFine_labelTrainIds.png"), seg)


def make_synthetic_cityscapes(root: str, num_train: int, num_val: int = 2) -> None:
    """Cityscapes-layout PNGs at 2048x1024 (leftImg8bit/<split>/synth, gtFine/<split>/synth)."""
    jobs = []
    for split, n, offset in (("train", num_train, 0), ("val", num_val, num_train)):
        for kind in ("leftImg8bit", "gtFine"):
            os.makedirs(os.path.join(root, kind, split, "synth"), exist_ok=True)
        jobs += [(root, split, offset + i) for i in range(n)]
    with ProcessPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(_write_pair, jobs))


def rayseg_rate(data_root: str, work: str, iters: int, warmup: int, actors: int, precision: str) -> dict:
    """Steady-state img/s, s/it and data wait of jobs/train.py on one GPU worker."""
    options = [f"data.{s}.data_root={data_root}" for s in ("train", "val", "test")] + [
        "model.pretrained=null", f"runner.max_iters={iters}", "data.samples_per_gpu=2",
        f"data.workers_per_gpu={actors}", "evaluation.interval=0", f"checkpoint_config.interval={iters}",
        "log_config.interval=5", "mlflow.system_metrics=false", "scaling.num_workers=1", "scaling.use_gpu=true",
        "scaling.resources_per_worker={CPU: 1, GPU: 1}", "cudnn_benchmark=true"]
    if "bf16" in precision:
        options.append("amp={enabled: true, dtype: bf16}")
    if "channels_last" in precision:
        options.append("channels_last=true")
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    subprocess.run([sys.executable, os.path.join(REPO, "jobs", "train.py"), PSP_CONFIG, "--work-dir", work,
                    "--cfg-options", *options], cwd=REPO, env=env, check=True)
    with open(os.path.join(work, "log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    steady = [r for r in records if r.get("iter", 0) > warmup and "time" in r]
    sec = float(np.mean([r["time"] for r in steady]))
    return {"img_s": 2 / sec, "step_s": sec, "data_s": float(np.mean([r["data_time"] for r in steady]))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=48, help="synthetic training images (2048x1024)")
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--actors", type=int, nargs="+", default=[2, 8], help="data.workers_per_gpu values to time")
    parser.add_argument("--precision", choices=["fp32", "bf16", "bf16+channels_last"], default="fp32")
    parser.add_argument("--json", help="also write the figures as JSON here")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("gpu_feed: skipped (no CUDA device)")
        return 0
    from train_step import gpu_step_time

    tmp = tempfile.mkdtemp(prefix="rayseg-gpu-feed-")
    data = os.path.join(tmp, "cityscapes")
    make_synthetic_cityscapes(data, args.images)
    variant = args.precision
    torch.backends.cudnn.benchmark = True
    alone = gpu_step_time(PSP_CONFIG, variant, steps=20)
    torch.cuda.empty_cache()  # the training run below gets the GPU's memory
    print(f"GPU {torch.cuda.get_device_name(0)}, {os.cpu_count()} CPU cores; PSPNet-R50-D8 512x1024 batch 2 "
          f"{variant}")
    print(f"GPU only (batch already on the GPU): {alone['img_s']:.2f} img/s, {alone['step_s'] * 1000:.1f} ms/step "
          f"timed one by one; {alone['stream_img_s']:.2f} img/s back to back", flush=True)
    rows = []
    for actors in args.actors:
        r = rayseg_rate(data, os.path.join(tmp, f"w{actors}"), args.iters, args.warmup, actors, args.precision)
        r.update(actors=actors, ratio=r["img_s"] / alone["img_s"], ratio_stream=r["img_s"] / alone["stream_img_s"])
        rows.append(r)
        print(f"rayseg, 1 GPU worker, {actors} decode/augment actors: {r['img_s']:.2f} img/s "
              f"({r['ratio']:.3f}x GPU only one by one, {r['ratio_stream']:.3f}x back to back); {r['step_s'] * 1000:.1f} ms/it, waiting for data "
              f"{r['data_s'] * 1000:.1f} ms", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"gpu_only": alone, "rayseg": rows, "precision": variant}, f, indent=1)
    best = max(rows, key=lambda r: r["ratio"])
    print(f"gpu_feed: best_ratio={best['ratio_stream']:.3f} actors={best['actors']} (against the back-to-back GPU-only rate)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
