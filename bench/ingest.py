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

``--bytes-from parquet`` (with ``--cache-decoded false``) first packs every training sample's encoded image and
mask into one Parquet file and has the stream's read step take the bytes from it (memory-mapped) rather than
opening two small files per sample: the "encoded bytes packed in Parquet" lever of issue #16, measured only here.

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
import tempfile
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


def pack_parquet(dataset, path: str) -> float:
    """Write every sample's encoded image and mask bytes to one Parquet file (row i = sample i); seconds taken."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    start = time.perf_counter()
    imgs, segs = [], []
    for s in dataset.samples:
        with open(s["img_path"], "rb") as f:
            imgs.append(f.read())
        with open(s["seg_path"], "rb") as f:
            segs.append(f.read())
    pq.write_table(pa.table({"img_bytes": pa.array(imgs, pa.binary()), "seg_bytes": pa.array(segs, pa.binary())}),
                   path, row_group_size=32, compression="none")
    return time.perf_counter() - start


_PACKED = {}  # path -> the memory-mapped table, once per process (a functools cache would not pickle from __main__)


def _packed_table(path: str):
    import pyarrow.parquet as pq

    if path not in _PACKED:
        _PACKED[path] = pq.read_table(path, memory_map=True)
    return _PACKED[path]


def _read_packed_batch(batch, path: str, num_samples: int, seed: int):
    """``rayseg.datasets.ray_data._read_stream_batch`` with the bytes taken from the packed Parquet file."""
    from rayseg.datasets.ray_data import stream_indices

    positions = batch["id"]
    indices = stream_indices(positions, num_samples, seed, True)
    rows = _packed_table(path).take(indices)
    return {"position": positions.astype(np.int64), "index": indices.astype(np.int64),
            "img_bytes": np.array(rows.column("img_bytes").to_pylist(), dtype=object),
            "seg_bytes": np.array(rows.column("seg_bytes").to_pylist(), dtype=object)}


def packed_train_stream(dataset, path: str, num_rows: int, num_actors: int):
    """The uncached training stream of ``build_train_stream`` reading the bytes from ``path`` instead of files."""
    import math

    import ray.data

    from rayseg.datasets import ray_data as rd

    ds = ray.data.range(num_rows, override_num_blocks=max(1, min(200, math.ceil(num_rows / (rd._READ_BATCH * 4)))))
    ds = ds.map_batches(_read_packed_batch, batch_size=rd._READ_BATCH,
                        fn_kwargs={"path": path, "num_samples": len(dataset.samples), "seed": 0})
    return ds.map_batches(rd._PipelineActor, batch_size=rd._TRANSFORM_BATCH,
                          fn_constructor_kwargs={"dataset": dataset, "mode": "train", "seed": 0},
                          compute=ray.data.ActorPoolStrategy(size=num_actors), num_cpus=1.0)


def ray_data_rate(dataset, procs: int, batch: int, warmup: int, images: int, cache_decoded: str = "auto",
                  prefetch_batches: int = 2, packed: str = "") -> tuple:
    import ray

    from rayseg.datasets.executor_pacing import pace_idle_executor
    from rayseg.datasets.ray_data import build_train_stream
    from rayseg.utils.ray_session import quiet_ray_data

    # iter_torch_batches imports Ray Train's torch helpers on its first batch (0.3 CPU-s idle); a training worker
    # has them loaded before its stream starts, so the consumer here does too.
    import ray.train.torch  # noqa: F401

    ray.init(address="local", num_cpus=procs + 1, include_dashboard=False, log_to_driver=False)
    try:
        quiet_ray_data()
        start = time.perf_counter()
        rows = (warmup + 2) * batch + images
        if packed:
            pace_idle_executor()
            stream = packed_train_stream(dataset, packed, rows, procs)
        else:
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
    parser.add_argument("--bytes-from", default="files", choices=("files", "parquet"),
                        help="where the uncached stream reads encoded bytes: the image files, or all of them packed "
                             "in one Parquet file first (needs --cache-decoded false)")
    args = parser.parse_args(argv)
    if args.bytes_from == "parquet" and args.cache_decoded != "false":
        parser.error("--bytes-from parquet times the uncached stream: add --cache-decoded false")
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
    packed = ""
    with tempfile.TemporaryDirectory(prefix="rayseg-ingest-") as tmp:
        if args.bytes_from == "parquet":
            packed = os.path.join(tmp, "train.parquet")
            took = pack_parquet(dataset, packed)
            files = sum(os.path.getsize(s[k]) for s in dataset.samples for k in ("img_path", "seg_path"))
            print(f"packed {2 * len(dataset.samples)} files ({files / 1e6:.1f} MB) into one Parquet file "
                  f"({os.path.getsize(packed) / 1e6:.1f} MB) in {took:.2f} s")
        rd_first, rd_rate, _ = ray_data_rate(dataset, args.procs, args.batch, args.warmup, args.images,
                                             args.cache_decoded, args.prefetch_batches, packed)
    print(f"ray_data:   first batch {rd_first:.2f} s, steady {rd_rate:.1f} img/s (cache_decoded "
          f"{args.cache_decoded}, prefetch_batches {args.prefetch_batches}, bytes from {args.bytes_from})")
    print(f"ingest: ray_data/dataloader={rd_rate / dl_rate:.3f} limit_fraction={rd_rate / limit:.3f} "
          f"first_batch_s={rd_first:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
