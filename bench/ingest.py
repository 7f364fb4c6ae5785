"""Benchmark: rayseg's Ray Data training stream against torch's DataLoader, and the machine's decode limit.

    python bench/ingest.py [--data-root ../shared/data/camvid] [--procs 2] [--batch 8] [--images 400]

Both sides run CamVid's training split through the CamVid config's training pipeline (decode, random
resize, crop, flip, photometric distortion, pad; Normalize is left to the device, as in training) and hand
uint8 torch batches of ``--batch`` to a consumer in this process, with ``--procs`` processes doing the work:

    ray_data   : rayseg.datasets.ray_data.build_train_stream (read tasks + --procs decode/augment actors; with
                 --cache-decoded auto|true, training's default, samples decoded once into the object store),
                 iter_torch_batches, on a local Ray started with --procs + 1 CPUs
    dataloader : torch.utils.data.DataLoader(num_workers=--procs, persistent_workers=True), the same
                 dataset's prepare_train on the same file bytes

Rates are images/s in steady state (after the first ``--warmup`` batches); ``first_batch_s`` is the time
from building the stream to its first batch. The limit is --procs × the single-core decode+augment rate
measured in this process first. The last line is machine-readable:

    ingest: ray_data/dataloader=R limit_fraction=F first_batch_s=S
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
CONFIG = os.path.join(REPO, "configs", "camvid", "fcn_r18-slim-d8_2x4_256x256_800_camvid.yaml")


def build_dataset(data_root: str):
    from rayseg.config import load_config
    from rayseg.datasets import build_dataset as build
    from rayseg.datasets.ray_data import _strip_normalize

    cfg = load_config(CONFIG, [f"data.{s}.data_root={data_root}" for s in ("train", "val", "test")])
    return _strip_normalize(build(cfg["data"]["train"]))


def single_core_rates(dataset, n: int) -> tuple:
    """(decode-only, decode+augment) images/s of one core on the first ``n`` samples (bytes read beforehand)."""
    import cv2

    cv2.setNumThreads(1)
    samples = dataset.samples[:n]
    blobs = [(open(s["img_path"], "rb").read(), open(s["seg_path"], "rb").read()) for s in samples]
    start = time.perf_counter()
    for img, seg in blobs:
        cv2.imdecode(np.frombuffer(img, np.uint8), cv2.IMREAD_COLOR)
        cv2.imdecode(np.frombuffer(seg, np.uint8), cv2.IMREAD_UNCHANGED)
    decode = len(blobs) / (time.perf_counter() - start)
    np.random.seed(0)
    start = time.perf_counter()
    for s, (img, seg) in zip(samples, blobs):
        dataset.prepare_train(dict(s, img_bytes=img, seg_bytes=seg))
    augment = len(blobs) / (time.perf_counter() - start)
    return decode, augment


def _steady_rate(batches, batch_size: int, warmup: int, images: int) -> tuple:
    """(first batch seconds, steady images/s) of an iterator of batches."""
    start = time.perf_counter()
    first = None
    seen = 0
    steady_start = None
    for i, _ in enumerate(batches):
        now = time.perf_counter()
        if first is None:
            first = now - start
        if i == warmup:
            steady_start, seen = now, 0
        seen += batch_size
        if steady_start is not None and seen >= images:
            break
    return first, seen / (time.perf_counter() - steady_start)


def ray_data_rate(dataset, procs: int, batch: int, warmup: int, images: int, cache_decoded: str = "auto",
                  prefetch_batches: int = 2) -> tuple:
    import ray

    from rayseg.datasets.ray_data import build_train_stream
    from rayseg.utils.ray_session import quiet_ray_data

    ray.init(address="local", num_cpus=procs + 1, include_dashboard=False, log_to_driver=False)
    try:
        quiet_ray_data()
        start = time.perf_counter()
        rows = (warmup + 2) * batch + images
        stream = build_train_stream(dataset, rows, seed=0, num_actors=procs, actor_num_cpus=1.0,
                                    cache_decoded=cache_decoded)
        batches = stream.iter_torch_batches(batch_size=batch, dtypes=None, drop_last=True,
                                            prefetch_batches=prefetch_batches)
        first, rate = _steady_rate(batches, batch, warmup, images)
        return first, rate, start
    finally:
        ray.shutdown()


class _TorchView:
    """The same dataset as a map-style torch Dataset: file bytes → prepare_train → uint8 tensors."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.samples = dataset.samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        import torch

        s = self.samples[index]
        with open(s["img_path"], "rb") as f:
            img = f.read()
        with open(s["seg_path"], "rb") as f:
            seg = f.read()
        out = self.dataset.prepare_train(dict(s, img_bytes=img, seg_bytes=seg))
        return torch.from_numpy(np.ascontiguousarray(out["img"])), torch.from_numpy(
            np.ascontiguousarray(out["gt_semantic_seg"]))


def _worker_init(_):
    import cv2

    cv2.setNumThreads(1)


def dataloader_rate(dataset, procs: int, batch: int, warmup: int, images: int) -> tuple:
    import torch
    from torch.utils.data import DataLoader

    start = time.perf_counter()
    loader = DataLoader(_TorchView(dataset), batch_size=batch, shuffle=True, num_workers=procs,
                        persistent_workers=True, drop_last=True, worker_init_fn=_worker_init,
                        generator=torch.Generator().manual_seed(0))

    def forever():
        while True:
            yield from loader

    first, rate = _steady_rate(forever(), batch, warmup, images)
    return first, rate, start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=os.path.join(REPO, "..", "shared", "data", "camvid"))
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--images", type=int, default=400, help="images timed in steady state")
    parser.add_argument("--warmup", type=int, default=3, help="batches left out before timing")
    parser.add_argument("--single-core-images", type=int, default=60)
    parser.add_argument("--cache-decoded", default="auto", choices=("auto", "true", "false"),
                        help="data.cache_decoded for the Ray Data stream (training's default: auto)")
    parser.add_argument("--prefetch-batches", type=int, default=2, help="iter_torch_batches' prefetch_batches")
    args = parser.parse_args(argv)
    if not os.path.isdir(os.path.join(args.data_root, "img_dir")):
        print(f"error: no CamVid at {args.data_root} (--data-root; jobs/prepare_camvid.py makes it)", file=sys.stderr)
        return 2
    import cv2
    import ray
    import torch

    dataset = build_dataset(args.data_root)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; torch {torch.__version__}, "
          f"ray {ray.__version__}, opencv {cv2.__version__}; CamVid train {len(dataset)} images; "
          f"{args.procs} processes, batch {args.batch}")
    decode, augment = single_core_rates(dataset, args.single_core_images)
    limit = args.procs * augment
    print(f"single core: decode {decode:.1f} img/s, decode+augment {augment:.1f} img/s; limit with "
          f"{args.procs} processes {limit:.1f} img/s")
    dl_first, dl_rate, _ = dataloader_rate(dataset, args.procs, args.batch, args.warmup, args.images)
    print(f"dataloader: first batch {dl_first:.2f} s, steady {dl_rate:.1f} img/s")
    rd_first, rd_rate, _ = ray_data_rate(dataset, args.procs, args.batch, args.warmup, args.images,
                                         args.cache_decoded, args.prefetch_batches)
    print(f"ray_data:   first batch {rd_first:.2f} s, steady {rd_rate:.1f} img/s (cache_decoded "
          f"{args.cache_decoded}, prefetch_batches {args.prefetch_batches})")
    print(f"ingest: ray_data/dataloader={rd_rate / dl_rate:.3f} limit_fraction={rd_rate / limit:.3f} "
          f"first_batch_s={rd_first:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
