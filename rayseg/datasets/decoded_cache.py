"""Decoded training samples kept in Ray's object store (``data.cache_decoded``), so epochs after the first
augment without decoding again.

One decoder actor reads each sample's files and runs the pipeline's leading Load steps (``LoadImageFromFile``,
``LoadAnnotations``) once, one call per sample; the returned results dict (the uint8 image, the label map and
their metadata) is the cache, held by its ObjectRef. The calls are made in the order the stream first needs
the samples, and an actor that meets a sample not decoded yet decodes it itself, so the first batches do not
wait for the cache. The decode/augment actors ``ray.get`` a row's results
(zero-copy on the same node) and run the rest of the pipeline on a copy, seeded by the row's stream position
as before: the Load steps draw no random numbers, so the rows are the same as without the cache.

A sample whose reading or decoding raises ``DataError`` is cached as ``{"error": message}``; the actor then
raises that error, or records and drops the row under ``on_bad_sample: skip``, exactly as it would have done
decoding the file itself.

``auto`` caches when the pipeline starts with the Load steps of a plain dataset (optionally inside a
``RepeatDataset``) and the decoded split, estimated from a few files' headers, takes at most
``STORE_SHARE`` of the cluster's object store.
"""
from __future__ import annotations

import io
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from rayseg.errors import ConfigError, DataError

MODES = ("auto", "true", "false")
DEFAULT_MODE = "auto"
# The rest of the object store carries Ray Data's blocks in flight (and other jobs' objects); a cache bigger
# than this share would push them to disk.
STORE_SHARE = 0.3
# Files whose headers are read to estimate the decoded size of the split.
_HEADER_PROBES = 3
# The samples are decoded by one actor that asks for no CPU, one sample per method call. Tasks asking for a CPU
# each were measured to take every free CPU as soon as they were submitted, before Ray Data created its
# decode/augment actors, which then waited for the whole split to be decoded (bench/ingest.py: first batch
# 10-19 s against 5-8 s uncached); several task workers also each import the pipeline code while the actors
# start. One lane is enough: the actors decode any sample whose call has not finished themselves.
DECODER_NUM_CPUS = 0


def normalise_mode(value: Any, key: str = "data.cache_decoded") -> str:
    """``auto`` | ``true`` | ``false`` from a config value (YAML booleans or those strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str) and value.lower() in MODES:
        return value.lower()
    raise ConfigError(f"{key} must be one of auto, true, false; got {value!r}")


def split_load_steps(dataset: Any) -> Optional[Tuple[Any, int]]:
    """``(dataset whose pipeline runs, number of leading Load steps)`` when the training preparation is
    "dataset fields + pipeline" with Load steps first, so the Load part can be done once and cached; else None
    (a ConcatDataset's fields differ per part, MultiImageMixDataset reads further samples by path)."""
    from rayseg.datasets.compose import Compose
    from rayseg.datasets.custom import CustomDataset
    from rayseg.datasets.dataset_wrappers import RepeatDataset
    from rayseg.datasets.loading import LoadAnnotations, LoadImageFromFile

    while isinstance(dataset, RepeatDataset):  # its samples and preparation are the inner dataset's
        dataset = dataset.dataset
    if not isinstance(dataset, CustomDataset) or type(dataset).prepare_train is not CustomDataset.prepare_train:
        return None
    pipeline = getattr(dataset, "pipeline", None)
    if not isinstance(pipeline, Compose):
        return None
    count = 0
    for step in pipeline.transforms:
        if type(step) not in (LoadImageFromFile, LoadAnnotations):
            break
        count += 1
    if count == 0 or any(isinstance(s, LoadImageFromFile) and s.to_float32 for s in pipeline.transforms[:count]):
        return None  # nothing to cache, or float images (4x the memory for what uint8 batches do not need)
    return dataset, count


def _pixels(path: str) -> int:
    """Width x height of one image file, from its header (PIL reads the size without decoding pixels)."""
    from PIL import Image

    from rayseg.datasets.ray_data import read_file_bytes

    with Image.open(io.BytesIO(read_file_bytes(path))) as im:
        return im.size[0] * im.size[1]


def estimate_bytes(dataset: Any) -> int:
    """Object-store bytes of the decoded split: a few samples' image + mask sizes, scaled to all samples."""
    samples = dataset.samples
    if not samples:
        return 0
    probes = samples[:: max(1, len(samples) // _HEADER_PROBES)][:_HEADER_PROBES]
    sizes = []
    for s in probes:
        # An image decodes to 3 uint8 channels (LoadImageFromFile's default), a label map to one.
        size = 3 * _pixels(s["img_path"])
        if s.get("seg_path"):
            size += _pixels(s["seg_path"])
        sizes.append(size)
    return int(max(sizes) * len(samples) * 1.05)  # + metadata, and slack for larger files elsewhere


def object_store_bytes() -> float:
    """The cluster's object store capacity (Ray must be connected)."""
    import ray

    return float(ray.cluster_resources().get("object_store_memory", 0.0))


def should_cache(mode: Any, dataset: Any, store_bytes: Optional[float] = None) -> bool:
    """Whether the training stream caches decoded samples under ``data.cache_decoded: mode``.

    ``true`` insists (a pipeline that cannot be split is a ConfigError); ``auto`` caches when it can and the
    estimate fits in ``STORE_SHARE`` of ``store_bytes`` (default: the connected cluster's object store).
    """
    mode = normalise_mode(mode)
    if mode == "false":
        return False
    if split_load_steps(dataset) is None:
        if mode == "true":
            raise ConfigError("data.cache_decoded: true needs a training pipeline that starts with "
                              "LoadImageFromFile/LoadAnnotations on a plain dataset (or RepeatDataset); "
                              f"{type(dataset).__name__} with its pipeline cannot be cached; use auto or false")
        return False
    if mode == "true":
        return True
    try:
        need = estimate_bytes(dataset)
    except (DataError, OSError, ValueError):
        return False  # unreadable headers: let the stream report the file as it always does
    capacity = object_store_bytes() if store_bytes is None else float(store_bytes)
    return need <= STORE_SHARE * capacity


class _Loader:
    """The Load part of a sample's preparation: read its files, add the dataset fields, run the Load steps."""

    def __init__(self, steps: Sequence[Any], fields: Dict[str, Any]):
        self.steps, self.fields = list(steps), fields

    def __call__(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        from rayseg.datasets.ray_data import read_file_bytes

        try:
            # Read as the uncached stream's read step does, so a missing file gives the same message.
            results = dict(sample)
            results["img_bytes"] = read_file_bytes(sample["img_path"])
            if sample.get("seg_path"):
                results["seg_bytes"] = read_file_bytes(sample["seg_path"])
            results.update(self.fields)
            for step in self.steps:
                results = step(results)
        except DataError as exc:  # the actor raises or records it, as it would have decoding the file
            return {"error": str(exc)}
        results.pop("img_bytes", None)
        results.pop("seg_bytes", None)
        return results


class _Decoder:
    """The actor that decodes samples for the cache: ``decode`` returns one sample's Load results."""

    def __init__(self, loader: _Loader):
        import cv2

        cv2.setNumThreads(1)  # one lane, as the decode/augment actors
        self.loader = loader

    def decode(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        return self.loader(sample)


def first_use_order(num_samples: int, seed: int, start_position: int) -> List[int]:
    """Sample indices in the order the stream starting at ``start_position`` first needs them."""
    from rayseg.datasets.ray_data import stream_indices

    # The next two epochs' worth of positions cover every sample; the fixed order of dict keys keeps the first use.
    positions = np.arange(start_position, start_position + 2 * num_samples)
    return list(dict.fromkeys(int(i) for i in stream_indices(positions, num_samples, seed)))


def loader_for(dataset: Any, load_steps: int) -> _Loader:
    """The Load part of ``dataset``'s preparation (its first ``load_steps`` steps) as one callable."""
    return _Loader(dataset.pipeline.transforms[:load_steps], dataset.dataset_fields())


def submit(dataset: Any, seed: int, start_position: int) -> Tuple[Any, int, List[Any]]:
    """Start decoding every sample once: ``(dataset, Load step count, ObjectRef per sample index)``.

    The caller owns the results (it made the calls), so they stay in the object store while it holds the refs;
    the decoder actor's handle is dropped here, and Ray ends the actor once its queued calls are done.
    """
    import ray

    base, count = split_load_steps(dataset)
    decoder = ray.remote(num_cpus=DECODER_NUM_CPUS)(_Decoder).remote(loader_for(base, count))
    samples = base.samples
    refs: List[Any] = [None] * len(samples)
    for index in first_use_order(len(samples), seed, start_position):
        refs[index] = decoder.decode.remote(samples[index])
    return base, count, refs
