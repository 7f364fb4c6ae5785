"""Ray Data ingest: manifest → read bytes → decode + transform in a CPU actor pool → uint8 batches.

The training stream is one continuous dataset covering every sample the job will consume (epochs of
per-epoch shuffled indices laid end to end), so the actor pool starts once per job rather than once per
epoch. Each row carries its image and mask together from the first step, so they cannot be paired
wrongly, and each sample's augmentation is seeded by its stream position, so a run is reproducible
whichever actor happens to process it.

A sample that cannot be used (a ``DataError`` while reading, decoding or checking it) stops the stream with
that error, or, under ``data.on_bad_sample: skip``, is dropped and reported to the run's ledger
(``rayseg.datasets.bad_samples``); the rows around it keep their positions and so their augmentation.

With ``data.cache_decoded`` the training samples are decoded once into Ray's object store
(``rayseg.datasets.decoded_cache``) and the actors only augment: the same rows, without decoding every epoch.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Dict, Iterator, List, Optional

import numpy as np

from rayseg.datasets.bad_samples import BadSamplePolicy
from rayseg.errors import DataError

# Rows handed from the read step to the transform actors per call: small enough to keep memory flat,
# large enough to amortise the per-call overhead.
_READ_BATCH = 16
_TRANSFORM_BATCH = 8


def read_file_bytes(path: str) -> bytes:
    """Read a local path or a ``scheme://`` URI (through pyarrow filesystems); errors name the path."""
    try:
        if "://" in path:
            import pyarrow.fs as pafs

            fs, inner = pafs.FileSystem.from_uri(path)
            with fs.open_input_file(inner) as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, num_samples: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


def stream_indices(positions: np.ndarray, num_samples: int, seed: int, shuffle: bool = True) -> np.ndarray:
    """Map stream positions to sample indices: epoch ``p // n`` visits a seeded permutation of the samples."""
    positions = np.asarray(positions, dtype=np.int64)
    if not shuffle:
        return positions % num_samples
    out = np.empty_like(positions)
    epochs = positions // num_samples
    for epoch in np.unique(epochs):
        sel = epochs == epoch
        out[sel] = _epoch_order(seed, int(epoch), num_samples)[positions[sel] % num_samples]
    return out


def _read_stream_batch(batch: Dict[str, np.ndarray], img_paths: List[str], seg_paths: List[Optional[str]],
                       seed: int, shuffle: bool, keep_errors: bool = False) -> Dict[str, np.ndarray]:
    """Read each row's image and mask bytes. ``keep_errors`` (``on_bad_sample: skip``): a file that cannot be
    read gives its row empty bytes and the error in ``read_error``, for the decode actor to drop and record
    (only the actors talk to the run's ledger); otherwise the ``DataError`` stops the stream here."""
    positions = batch["id"]
    indices = stream_indices(positions, len(img_paths), seed, shuffle)
    img_bytes, seg_bytes, read_errors = [], [], []
    for i in indices:
        seg_path = seg_paths[i]
        img, seg, error = b"", b"", ""
        try:
            img = read_file_bytes(img_paths[i])
            seg = read_file_bytes(seg_path) if seg_path else b""
        except DataError as exc:
            if not keep_errors:
                raise
            img, seg, error = b"", b"", str(exc)
        img_bytes.append(img)
        seg_bytes.append(seg)
        read_errors.append(error)
    out = {
        "position": positions.astype(np.int64),
        "index": indices.astype(np.int64),
        "img_bytes": np.array(img_bytes, dtype=object),
        "seg_bytes": np.array(seg_bytes, dtype=object),
    }
    if keep_errors:
        out["read_error"] = np.array(read_errors, dtype=object)
    return out


def _no_rows() -> Iterator[Dict[str, np.ndarray]]:
    """A batch function's way of emitting nothing: Ray Data iterates a returned generator, and one that
    yields nothing adds no rows. A zero-row dict would need each column's element shape, which a batch
    whose every sample was dropped does not know (and mismatched tensor shapes break the block schema)."""
    yield from ()


class _PipelineActor:
    """Decodes and transforms rows with a dataset's pipeline (runs inside a Ray Data actor).

    ``bad_samples`` under ``skip``: a row whose sample raises ``DataError`` (or could not be read) is dropped
    and recorded with the run's ledger as a sample of ``split``; the ledger's verdict may still stop the run.
    """

    def __init__(self, dataset: Any, mode: str, seed: int, bad_samples: Optional[BadSamplePolicy] = None,
                 split: str = "data.train"):
        import cv2

        # Each actor is one decode/augment lane with a fraction of a CPU; OpenCV's own thread pool (one
        # thread per core) would only fight the training workers for the same cores.
        cv2.setNumThreads(1)
        self.dataset = dataset
        self.mode = mode
        self.seed = seed
        self.samples = dataset.samples
        self.bad_samples = bad_samples if bad_samples is not None and bad_samples.skip else None
        self.split = split

    def _sample(self, index: int, img_bytes: bytes, seg_bytes: bytes) -> Dict[str, Any]:
        sample = dict(self.samples[int(index)])
        sample["img_bytes"] = img_bytes
        if seg_bytes:
            sample["seg_bytes"] = seg_bytes
        return sample

    def __call__(self, batch: Dict[str, np.ndarray]) -> Any:
        out = self._train(batch) if self.mode == "train" else self._test(batch)
        return _no_rows() if out is None else out

    def _prepare(self, prepare, index: int, img_bytes: bytes, seg_bytes: bytes,
                 read_error: str = "") -> Optional[Dict[str, Any]]:
        """``prepare`` (the dataset's prepare_train/prepare_test) on one row; None for a skipped bad sample."""
        if self.bad_samples is None:
            return prepare(self._sample(index, img_bytes, seg_bytes))
        try:
            if read_error:
                raise DataError(read_error)
            return prepare(self._sample(index, img_bytes, seg_bytes))
        except DataError as exc:  # only a sample's own problem is skipped; anything else is a bug and stops
            self.bad_samples.record(self.split, len(self.samples), self.samples[int(index)]["img_path"], exc)
            return None

    def _train(self, batch: Dict[str, np.ndarray]) -> Optional[Dict[str, np.ndarray]]:
        read_errors = batch.get("read_error")
        if read_errors is None:
            read_errors = [""] * len(batch["index"])
        rows = []
        for pos, index, ib, sb, error in zip(batch["position"], batch["index"], batch["img_bytes"],
                                             batch["seg_bytes"], read_errors):
            # Seeding by stream position makes augmentation independent of actor scheduling.
            np.random.seed((self.seed * 1_000_003 + int(pos)) % (2**32))
            rows.append(self._prepare(self.dataset.prepare_train, index, ib, sb, error))
        return _stack_train_rows(rows)

    def _test(self, batch: Dict[str, np.ndarray]) -> Optional[Dict[str, Any]]:
        out: Dict[str, List[Any]] = {"img": [], "gt_semantic_seg": [], "ori_shape": [], "index": []}
        read_errors = batch.get("read_error")
        if read_errors is None:
            read_errors = [""] * len(batch["index"])
        for index, ib, sb, error in zip(batch["index"], batch["img_bytes"], batch["seg_bytes"], read_errors):
            results = self._prepare(self.dataset.prepare_test, index, ib, sb, error)
            if results is None:
                continue
            out["img"].append(np.ascontiguousarray(results["img"], dtype=np.uint8))
            out["gt_semantic_seg"].append(np.ascontiguousarray(results["gt_semantic_seg"], dtype=np.uint8))
            out["ori_shape"].append(np.asarray(results["ori_shape"][:2], dtype=np.int64))
            out["index"].append(int(index))
        if not out["img"]:
            return None
        return {"img": out["img"][0][None], "gt_semantic_seg": out["gt_semantic_seg"][0][None],
                "ori_shape": np.stack(out["ori_shape"]), "index": np.asarray(out["index"])}


def _stack_train_rows(rows: List[Optional[Dict[str, Any]]]) -> Optional[Dict[str, np.ndarray]]:
    """One batch of uint8 images and label maps from prepared rows (None: a dropped bad sample)."""
    imgs = [np.ascontiguousarray(r["img"], dtype=np.uint8) for r in rows if r is not None]
    segs = [np.ascontiguousarray(r["gt_semantic_seg"], dtype=np.uint8) for r in rows if r is not None]
    if not imgs:
        return None
    shapes = {im.shape for im in imgs}
    if len(shapes) > 1 or len({s.shape for s in segs}) > 1:
        raise DataError(
            f"the training pipeline produced images of different sizes {sorted(shapes)}; "
            "end it with RandomCrop and Pad(size=crop_size) so batches can be stacked")
    return {"img": np.stack(imgs), "gt_semantic_seg": np.stack(segs)}


class _CachedPipelineActor(_PipelineActor):
    """``_PipelineActor`` for a training stream whose samples are decoded once into the object store
    (``rayseg.datasets.decoded_cache``): rows are stream positions only; each is mapped to its sample, whose
    decoded results are fetched and run through the pipeline after its ``load_steps`` Load steps."""

    def __init__(self, dataset: Any, seed: int, cache: List[Any], load_steps: int,
                 bad_samples: Optional[BadSamplePolicy] = None, split: str = "data.train"):
        from rayseg.datasets.compose import Compose
        from rayseg.datasets.decoded_cache import loader_for

        super().__init__(dataset, "train", seed, bad_samples, split)
        self.cache = cache
        self.load = loader_for(dataset, load_steps)
        self.rest = Compose(dataset.pipeline.transforms[load_steps:])

    def __call__(self, batch: Dict[str, np.ndarray]) -> Any:
        import ray

        positions = batch["position"].astype(np.int64)
        indices = stream_indices(positions, len(self.samples), self.seed, True)
        refs = [self.cache[int(i)] for i in indices]
        # A sample the cache's decoder has not reached yet (the first batches) is decoded here rather than
        # waited for; the same Load steps give the same results.
        unique = list(dict.fromkeys(refs))  # ray.wait refuses repeats (a tiny split repeats samples in a batch)
        ready = set(ray.wait(unique, num_returns=len(unique), timeout=0, fetch_local=False)[0])
        try:
            fetched = iter(ray.get([r for r in refs if r in ready]))  # one round trip for the batch
        except ray.exceptions.RayError:  # the cache lost (its decoder or node gone): decode this batch here
            ready = set()
            fetched = iter(())
        decoded = [next(fetched) if r in ready else self.load(self.samples[int(i)]) for r, i in zip(refs, indices)]
        rows = []
        for pos, index, results in zip(positions, indices, decoded):
            np.random.seed((self.seed * 1_000_003 + int(pos)) % (2**32))  # as _PipelineActor._train
            rows.append(self._prepare(self._augment, index, results))
        out = _stack_train_rows(rows)
        return _no_rows() if out is None else out

    def _augment(self, results: Dict[str, Any]) -> Dict[str, Any]:
        if "error" in results:  # the Load steps failed on this sample: the error they raised
            raise DataError(results["error"])
        results = dict(results)
        for key in ("img", "gt_semantic_seg"):
            if key in results:  # the object store's arrays are read-only and shared: steps may write in place
                results[key] = results[key].copy()
        return self.rest(results)

    def _prepare(self, prepare, index: int, results: Dict[str, Any]) -> Optional[Dict[str, Any]]:  # type: ignore[override]
        if self.bad_samples is None:
            return prepare(results)
        try:
            return prepare(results)
        except DataError as exc:
            self.bad_samples.record(self.split, len(self.samples), self.samples[int(index)]["img_path"], exc)
            return None


def _strip_normalize(dataset: Any) -> Any:
    """Drop Normalize from the dataset's pipeline(s): batches stay uint8 and are normalised on the device.
    Dataset wrappers (ConcatDataset, MultiImageMixDataset, ...) strip each inner pipeline themselves."""
    from rayseg.datasets.dataset_wrappers import strip_normalize

    return strip_normalize(dataset)


def position_block_sizes(num_rows: int, first_rows: int) -> List[int]:
    """Row counts of a training stream's position blocks: ``first_rows``, then doubling up to the steady size
    (``num_rows / 200``, at least ``4 * _READ_BATCH``), then the steady size.

    An actor hands on its output when it has finished an input block, so the first batch waits for the whole
    first block: small first blocks bring it after a few samples, and the larger later blocks keep the
    per-block overhead of Ray Data's scheduling down in steady state."""
    steady = max(4 * _READ_BATCH, math.ceil(num_rows / 200))
    sizes: List[int] = []
    size = max(1, first_rows)
    left = num_rows
    while left > 0:
        sizes.append(min(size, left))
        left -= sizes[-1]
        size = min(2 * size, steady)
    return sizes


def position_blocks(column: str, start_position: int, num_rows: int, first_rows: int):
    """A Ray Dataset of stream positions ``start_position ..`` in one ``column``, as blocks of
    ``position_block_sizes`` rows put by this process (``ray.data.range`` would need read tasks, each asking for a
    whole CPU before the first batch, and ``from_items`` makes equal blocks)."""
    import pyarrow as pa
    import ray.data

    blocks, begin = [], start_position
    for size in position_block_sizes(num_rows, first_rows):
        blocks.append(pa.table({column: pa.array(np.arange(begin, begin + size, dtype=np.int64))}))
        begin += size
    return ray.data.from_blocks(blocks)


def build_train_stream(dataset: Any, num_rows: int, seed: int = 0, start_position: int = 0,
                       num_actors: int = 1, actor_num_cpus: float = 1.0,
                       bad_samples: Optional[BadSamplePolicy] = None, min_actors: Optional[int] = None,
                       cache_decoded: Any = False):
    """A Ray Dataset of ``num_rows`` augmented training samples starting at stream ``start_position``.

    ``num_actors`` decode/augment actors; with ``min_actors`` the pool starts with that many and grows to
    ``num_actors`` as the cluster has room (elastic training, which may start below its full size).

    Rows are ``img`` (H, W, 3) uint8 in the pipeline's channel order and ``gt_semantic_seg`` (H, W) uint8.
    ``bad_samples`` (default: stop at the first bad sample): under ``skip`` bad samples are dropped, so the
    stream holds fewer rows (``BadSamplePolicy.stream_rows`` says how many to ask for).

    ``cache_decoded`` (``data.cache_decoded``: auto | true | false, or a bool): decode each sample once into
    the object store and augment from there (``rayseg.datasets.decoded_cache``); the rows are the same.
    """
    import ray.data

    from rayseg.datasets import decoded_cache
    from rayseg.datasets.executor_pacing import pace_idle_executor

    pace_idle_executor()  # the stream is usually ahead of training: keep its executor from spinning meanwhile
    dataset = _strip_normalize(dataset)
    if decoded_cache.should_cache(cache_decoded, dataset):
        base, load_steps, cache = decoded_cache.submit(dataset, seed, start_position)
        positions = position_blocks("position", start_position, num_rows, _TRANSFORM_BATCH)
        return positions.map_batches(
            _CachedPipelineActor, batch_size=_TRANSFORM_BATCH,
            fn_constructor_kwargs={"dataset": base, "seed": seed, "cache": cache, "load_steps": load_steps,
                                   "bad_samples": bad_samples, "split": "data.train"},
            compute=_actor_pool(num_actors, min_actors), num_cpus=actor_num_cpus)
    samples = dataset.samples
    img_paths = [s["img_path"] for s in samples]
    seg_paths = [s.get("seg_path") for s in samples]
    ds = position_blocks("id", start_position, num_rows, _READ_BATCH)
    skip = bad_samples is not None and bad_samples.skip
    ds = ds.map_batches(_read_stream_batch, batch_size=_READ_BATCH,
                        fn_kwargs={"img_paths": img_paths, "seg_paths": seg_paths, "seed": seed, "shuffle": True,
                                   "keep_errors": skip})
    return ds.map_batches(
        _PipelineActor, batch_size=_TRANSFORM_BATCH,
        fn_constructor_kwargs={"dataset": dataset, "mode": "train", "seed": seed,
                               "bad_samples": bad_samples, "split": "data.train"},
        compute=_actor_pool(num_actors, min_actors), num_cpus=actor_num_cpus)


def build_eval_stream(dataset: Any, num_actors: int = 1, actor_num_cpus: float = 1.0,
                      bad_samples: Optional[BadSamplePolicy] = None, split: str = "data.val",
                      min_actors: Optional[int] = None):
    """A Ray Dataset with one row per evaluation sample: the test-pipeline image (uint8) and the
    original-size label map, plus ``ori_shape`` and the sample ``index``.

    ``bad_samples`` under ``skip``: a bad sample has no row (recorded as a sample of ``split``), and the
    metrics are computed over the others; default: the first bad sample stops the stream. ``min_actors``: as
    for ``build_train_stream``."""
    import ray.data

    samples = dataset.samples
    img_paths = [s["img_path"] for s in samples]
    seg_paths = [s.get("seg_path") for s in samples]
    n = len(samples)
    ds = ray.data.range(n, override_num_blocks=max(1, min(64, math.ceil(n / _READ_BATCH))))
    skip = bad_samples is not None and bad_samples.skip
    ds = ds.map_batches(_read_stream_batch, batch_size=_READ_BATCH,
                        fn_kwargs={"img_paths": img_paths, "seg_paths": seg_paths, "seed": 0, "shuffle": False,
                                   "keep_errors": skip})
    return ds.map_batches(
        _PipelineActor, batch_size=1,
        fn_constructor_kwargs={"dataset": _strip_normalize(dataset), "mode": "test", "seed": 0,
                               "bad_samples": bad_samples, "split": split},
        compute=_actor_pool(num_actors, min_actors), num_cpus=actor_num_cpus)


def _actor_pool(num_actors: int, min_actors: Optional[int]):
    import ray.data

    size = max(1, num_actors)
    if min_actors is None or min_actors >= size:
        return ray.data.ActorPoolStrategy(size=size)
    return ray.data.ActorPoolStrategy(min_size=max(1, min_actors), max_size=size)


class DeviceNormalizer:
    """Turns uint8 NHWC batches into normalised float NCHW tensors on the training device."""

    def __init__(self, mean, std, to_rgb: bool = True, device=None):
        import torch

        self.to_rgb = to_rgb
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)

    @classmethod
    def from_pipeline(cls, pipeline_cfg: List[Dict[str, Any]], device=None) -> "DeviceNormalizer":
        from rayseg.datasets import split_device_steps

        _, norm = split_device_steps(pipeline_cfg)
        if norm is None:  # no Normalize step: only scale to float
            return cls([0.0, 0.0, 0.0], [1.0, 1.0, 1.0], to_rgb=False, device=device)
        return cls(norm["mean"], norm["std"], norm.get("to_rgb", True), device=device)

    def __call__(self, img_nhwc):
        import torch

        x = img_nhwc.permute(0, 3, 1, 2).float()
        if self.to_rgb:
            x = torch.flip(x, dims=[1])  # pipeline images are BGR as decoded by OpenCV
        return (x - self.mean.to(x.device)) / self.std.to(x.device)
