"""Benchmark: rayseg's Ray Train loop against a plain single-process PyTorch loop, and 1 vs 2 workers.

    python bench/train_step.py [--iters 200] [--warmup 50] [--batch 4] [--size 128] [--threads 2]

Same model (the demo's slim ResNetV1c-18 D8 + FCN), same data (synthetic shapes written to a temp folder,
decoded and augmented by the same pipeline), same total threads. Throughput is samples/s in steady state:
the first ``--warmup`` iterations (Ray start-up, actor pools, allocator warm-up) are left out of both.

    plain loop : one process, torch threads = --threads, decode + augment inline, SGD step
    rayseg x1  : jobs/train.py, 1 worker with --threads CPUs (decode + augment in Ray Data actors)
    rayseg x2  : jobs/train.py, 2 DDP workers with --threads/2 CPUs each, the same per-worker batch

With a CUDA device it also reports step time, img/s and peak memory of PSPNet-R50-D8 at 512x1024, batch 2,
in fp32 and bf16 (--gpu-only to run just that part).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
CONFIG = os.path.join(REPO, "configs", "demo", "fcn_r18-tiny_shapes.yaml")
PSP_CONFIG = os.path.join(REPO, "configs", "pspnet", "pspnet_r50-d8_512x1024_40k_cityscapes.yaml")


def _options(data_root: str, iters: int, batch: int, size: int) -> list:
    return [f"data.{s}.data_root={data_root}" for s in ("train", "val", "test")] + [
        f"runner.max_iters={iters}", f"data.samples_per_gpu={batch}", "evaluation.interval=0",
        f"checkpoint_config.interval={iters}", "log_config.interval=5", "mlflow.system_metrics=false",
        f"data.train.pipeline.2.img_scale=[{size}, {size}]", f"data.train.pipeline.3.crop_size=[{size}, {size}]",
        f"data.train.pipeline.7.size=[{size}, {size}]"]


def plain_loop(data_root: str, iters: int, warmup: int, batch: int, size: int, threads: int) -> float:
    """Samples/s of a hand-written single-process loop: pipeline → batch → normalise → forward/backward/step."""
    from rayseg.config import load_config
    from rayseg.datasets import build_dataset
    from rayseg.datasets.ray_data import DeviceNormalizer, _strip_normalize
    from rayseg.models import build_segmentor

    torch.set_num_threads(threads)
    cfg = load_config(CONFIG, _options(data_root, iters, batch, size))
    dataset = build_dataset(cfg["data"]["train"])
    normalizer = DeviceNormalizer.from_pipeline(cfg["data"]["train"]["pipeline"], device="cpu")
    dataset = _strip_normalize(dataset)
    model = build_segmentor(cfg["model"]).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    start = None
    for it in range(iters):
        if it == warmup:
            start = time.perf_counter()
        imgs, segs = [], []
        for _ in range(batch):
            np.random.seed(int(rng.integers(2**31)))
            out = dataset.prepare_train(dict(dataset.samples[int(rng.integers(len(dataset.samples)))]))
            imgs.append(torch.from_numpy(np.ascontiguousarray(out["img"])))
            segs.append(torch.from_numpy(np.ascontiguousarray(out["gt_semantic_seg"])))
        img = normalizer(torch.stack(imgs))
        losses = model(img, torch.stack(segs).long())
        loss = sum(v for k, v in losses.items() if "loss" in k)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (iters - warmup) * batch / (time.perf_counter() - start)


def rayseg_run(data_root: str, iters: int, warmup: int, batch: int, size: int, workers: int, cpus: int,
               work: str) -> float:
    """Samples/s of jobs/train.py in steady state, from the s/it the loop logs every 5 iterations."""
    options = _options(data_root, iters, batch, size) + [
        f"scaling.num_workers={workers}", f"scaling.resources_per_worker={{CPU: {cpus}}}"]
    env = dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_USAGE_STATS_ENABLED="0")
    env.pop("RAY_ADDRESS", None)
    subprocess.run([sys.executable, "jobs/train.py", CONFIG, "--work-dir", work, "--cfg-options", *options],
                   cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(work, "log.jsonl")) as f:
        records = [json.loads(line) for line in f]
    steady = [r for r in records if r["iter"] > warmup]
    sec_per_iter = float(np.mean([r["time"] for r in steady]))
    data_per_iter = float(np.mean([r["data_time"] for r in steady]))
    return workers * batch / sec_per_iter, sec_per_iter, data_per_iter


def gpu_benchmark(steps: int = 20) -> None:
    """PSPNet-R50-D8, 512x1024, batch 2: step time, img/s and peak memory in fp32 and bf16."""
    from rayseg.config import load_config
    from rayseg.models import build_segmentor

    if not torch.cuda.is_available():
        print("GPU benchmark: skipped (no CUDA device)")
        return
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(0)
    for dtype in (None, torch.bfloat16):
        cfg = load_config(PSP_CONFIG, ["model.pretrained=null"])  # random weights: speed doesn't need ImageNet
        model = build_segmentor(cfg["model"]).cuda().train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        img = torch.randn(2, 3, 512, 1024, device="cuda")
        seg = torch.randint(0, 19, (2, 512, 1024), device="cuda")
        torch.cuda.reset_peak_memory_stats()
        times = []
        for i in range(steps + 5):
            torch.cuda.synchronize()
            tic = time.perf_counter()
            with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                losses = model(img, seg)
            loss = sum(v for k, v in losses.items() if "loss" in k)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            torch.cuda.synchronize()
            if i >= 5:
                times.append(time.perf_counter() - tic)
        step = float(np.median(times))
        label = "bf16" if dtype is not None else "fp32"
        print(f"GPU {name} PSPNet-R50-D8 512x1024 batch 2 {label}: step {step * 1000:.1f} ms, "
              f"{2 / step:.2f} img/s, peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
        del model, opt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--batch", type=int, default=4, help="samples per worker per iteration")
    parser.add_argument("--size", type=int, default=128, help="crop size")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gpu-only", action="store_true")
    args = parser.parse_args()
    if not args.gpu_only:
        from rayseg.datasets.demo import make_demo_dataset

        with tempfile.TemporaryDirectory() as tmp:
            data = os.path.join(tmp, "data")
            make_demo_dataset(data, num_train=64, num_val=4, size=(args.size, args.size), seed=0)
            plain = plain_loop(data, args.iters, args.warmup, args.batch, args.size, args.threads)
            one, one_it, one_data = rayseg_run(data, args.iters, args.warmup, args.batch, args.size, 1, args.threads,
                             os.path.join(tmp, "w1"))
            two, two_it, two_data = rayseg_run(data, args.iters, args.warmup, args.batch, args.size, 2, max(1, args.threads // 2),
                             os.path.join(tmp, "w2"))
        print(f"cores: {os.cpu_count()}, threads: {args.threads}, batch/worker: {args.batch}, crop {args.size}px, "
              f"{args.iters} iterations ({args.warmup} warm-up left out)")
        print(f"plain single-process loop : {plain:7.2f} samples/s; {args.batch / plain * 1000:.1f} ms/it "
              f"(decode + augment inline)")
        print(f"rayseg, 1 worker          : {one:7.2f} samples/s  ({one / plain:.3f}x plain; overhead "
              f"{(1 - one / plain) * 100:+.1f}%); {one_it * 1000:.1f} ms/it, waiting for data {one_data * 1000:.1f}")
        print(f"rayseg, 2 workers (DDP)   : {two:7.2f} samples/s  ({two / one:.3f}x 1 worker); "
              f"{two_it * 1000:.1f} ms/it, waiting for data {two_data * 1000:.1f}")
        print(f"train_step: rayseg_1w/plain={one / plain:.3f} 2w/1w={two / one:.3f}")
    gpu_benchmark()
    return 0


if __name__ == "__main__":
    sys.exit(main())
