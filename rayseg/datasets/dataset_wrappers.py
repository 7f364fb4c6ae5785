"""Dataset wrappers with MMSegmentation 0.x's interfaces: ``RepeatDataset``, ``ConcatDataset`` and
``MultiImageMixDataset``.

A wrapper offers what the Ray Data ingest (``rayseg.datasets.ray_data``) and the training code use from a
``CustomDataset``: ``samples``, ``prepare_train``/``prepare_test``, ``pipeline_cfg``, ``CLASSES``,
``PALETTE``, ``num_classes``, ``ignore_index``, ``dataset_fields()`` and ``strip_normalize()``.

``samples`` is the list the training stream shuffles, one epoch of the stream being one pass over it:

* ``RepeatDataset``: the inner dataset's samples. Repeating a whole dataset does not change how often each
  sample is drawn, and the stream already lays epochs end to end, so ``times`` only changes ``len()``
  (what epoch-based schedules count, as in MMSeg) and never lists the files ``times`` over (a
  ``times: 40000`` wrapper of ADE20K would be 800 million rows).
* ``ConcatDataset``: every part's samples, each tagged with its part's position so that ``prepare_*``
  hands it to the part it came from (own label conventions and pipeline). A part that is (or contains) a
  ``RepeatDataset`` is listed in proportion to its repeat count, so ``ConcatDataset([RepeatDataset(A, 3),
  B])`` draws A's samples three times as often as B's, as MMSeg does.
* ``MultiImageMixDataset``: the inner dataset's samples; steps with ``get_indexes`` (``RandomMosaic``)
  receive ``mix_results``: further samples read by path inside the ingest actor and prepared with the
  inner dataset's pipeline. The stream seeds numpy per row, so the picks are reproducible.
"""
from __future__ import annotations

import collections.abc
import copy
import math
from typing import Any, Dict, List, Optional, Sequence

from rayseg.datasets.compose import build_pipeline, split_device_steps
from rayseg.errors import ConfigError
from rayseg.registry import DATASETS, build

# The key that records which part of a ConcatDataset a sample belongs to.
PART_KEY = "concat_part"
# A ConcatDataset lists parts in proportion to their repeat counts; beyond this many rows the proportions
# should be expressed with smaller ``times`` (the list is handed to every read task).
_MAX_LISTED_SAMPLES = 5_000_000


def _build(dataset: Any, where: str) -> Any:
    """A dataset object from a config dict (or an already built dataset)."""
    if isinstance(dataset, dict):
        return build(dataset, DATASETS)
    if hasattr(dataset, "samples") and hasattr(dataset, "prepare_train"):
        return dataset
    raise ConfigError(f"{where}: expected a dataset config dict with a 'type', got {dataset!r}")


def sample_index(dataset: Any, index: int) -> int:
    """The position in ``dataset.samples`` of the sample MMSeg's ``dataset[index]`` would give."""
    n = len(dataset)
    if not -n <= index < n:
        raise IndexError(f"index {index} out of range for {type(dataset).__name__} of length {n}")
    index %= n
    return dataset.sample_index(index) if hasattr(dataset, "sample_index") else index


def strip_normalize(dataset: Any) -> Any:
    """Rebuild ``dataset``'s pipeline(s) without Normalize (it runs on the device); returns the dataset."""
    if hasattr(dataset, "strip_normalize"):
        return dataset.strip_normalize()
    cpu_cfgs, _ = split_device_steps(dataset.pipeline_cfg)
    dataset.pipeline = build_pipeline(cpu_cfgs)
    return dataset


class _Wrapper:
    """What every wrapper shares: the metadata of its (first) inner dataset."""

    dataset: Any

    @property
    def CLASSES(self):  # noqa: N802  (MMSeg's attribute name)
        return self.dataset.CLASSES

    @property
    def PALETTE(self):  # noqa: N802
        return self.dataset.PALETTE

    @property
    def num_classes(self) -> int:
        return len(self.CLASSES)

    @property
    def ignore_index(self) -> int:
        return int(self.dataset.ignore_index)

    @property
    def pipeline_cfg(self) -> List[Dict[str, Any]]:
        return self.dataset.pipeline_cfg

    def dataset_fields(self) -> Dict[str, Any]:
        """The inner dataset's label fields (a ConcatDataset's differ per part: see ``parts``)."""
        return self.dataset.dataset_fields()

    def strip_normalize(self) -> "_Wrapper":
        """Drop Normalize from every inner pipeline (it runs on the device)."""
        strip_normalize(self.dataset)
        return self

    def __getitem__(self, index: int) -> Dict[str, Any]:
        """MMSeg's ``dataset[index]``: the prepared sample (reads the files from disk)."""
        sample = self.samples[sample_index(self, index)]
        return self.prepare_train(dict(sample))

    def parts(self) -> List[Any]:
        """The non-wrapper datasets inside, in order (one for Repeat/MultiImageMix)."""
        inner = self.dataset
        return inner.parts() if hasattr(inner, "parts") else [inner]


@DATASETS.register()
class RepeatDataset(_Wrapper):
    """MMSeg's ``RepeatDataset``: ``dataset`` repeated ``times``; ``len()`` is ``times × len(dataset)`` and
    index ``i`` is the inner dataset's ``i % len(dataset)``.

    The training stream visits the inner samples in a fresh shuffled order on every pass, pass after pass,
    which is what repeating achieves; so ``samples`` lists them once (see the module docstring).
    """

    def __init__(self, dataset: Any, times: int):
        if isinstance(times, bool) or not isinstance(times, int) or times < 1:
            raise ConfigError(f"RepeatDataset: times must be a positive int, got {times!r}")
        self.dataset = _build(dataset, "RepeatDataset.dataset")
        self.times = times
        self._ori_len = len(self.dataset)

    @property
    def samples(self) -> List[Dict[str, Any]]:
        return self.dataset.samples

    def sample_index(self, index: int) -> int:
        return sample_index(self.dataset, index % self._ori_len)

    def prepare_train(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        return self.dataset.prepare_train(sample)

    def prepare_test(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        return self.dataset.prepare_test(sample)

    def __len__(self) -> int:
        return self.times * self._ori_len

    def __repr__(self) -> str:
        return f"RepeatDataset(times={self.times}, dataset={self.dataset!r})"


def _repeat_factor(dataset: Any) -> int:
    """How many times ``len(dataset)`` counts each of its listed samples (1 for a plain dataset)."""
    listed = len(dataset.samples)
    return max(1, len(dataset) // listed) if listed else 1


def _normalize_of(dataset: Any, where: str) -> Optional[Dict[str, Any]]:
    try:
        return split_device_steps(dataset.pipeline_cfg)[1]
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


@DATASETS.register()
class ConcatDataset(_Wrapper):
    """MMSeg's ``ConcatDataset``: ``datasets`` (configs or datasets, of any types and roots) one after another.

    Each sample is prepared by the part it came from, with that part's label conventions (label_map,
    reduce_zero_label, classes subset) and pipeline. The parts must agree on the class names, on the
    ignore index and on the Normalize step (one device normalisation serves every batch): otherwise a
    ConfigError names the part. ``CLASSES``/``PALETTE`` are the first part's.

    ``separate_eval`` (MMSeg's default True: one set of metrics per part) is recorded; rayseg's evaluation
    loop computes one set of metrics over the concatenation (MMSeg's ``separate_eval=False``), and
    ``part_of(index)`` says which part an evaluation row's sample index belongs to.
    """

    def __init__(self, datasets: Sequence[Any], separate_eval: bool = True):
        if isinstance(datasets, dict) or not isinstance(datasets, collections.abc.Sequence) or not datasets:
            raise ConfigError(f"ConcatDataset: datasets must be a non-empty list of dataset configs, got {datasets!r}")
        self.datasets = [_build(d, f"ConcatDataset.datasets.{i}") for i, d in enumerate(datasets)]
        self.dataset = self.datasets[0]
        self.separate_eval = bool(separate_eval)
        self._check_agreement()
        self.cumulative_sizes = list(_cumsum([len(d) for d in self.datasets]))
        self._samples = self._list_samples()

    def _check_agreement(self) -> None:
        first = self.datasets[0]
        norm = _normalize_of(first, "ConcatDataset.datasets.0.pipeline")
        for i, d in enumerate(self.datasets[1:], start=1):
            where = f"ConcatDataset.datasets.{i} ({type(d).__name__})"
            if tuple(d.CLASSES) != tuple(first.CLASSES):
                raise ConfigError(
                    f"{where} has classes {list(d.CLASSES)} but datasets.0 ({type(first).__name__}) has "
                    f"{list(first.CLASSES)}; concatenated datasets must label the same classes in the same "
                    f"order (map them with label_map / classes)")
            if int(d.ignore_index) != int(first.ignore_index):
                raise ConfigError(f"{where} has ignore_index {d.ignore_index} but datasets.0 has "
                                  f"{first.ignore_index}; concatenated datasets must share it")
            other = _normalize_of(d, f"ConcatDataset.datasets.{i}.pipeline")
            if other != norm:
                raise ConfigError(
                    f"{where} normalises with {other} but datasets.0 with {norm}; concatenated datasets must "
                    f"use the same Normalize step (it runs once, on the device, for every batch)")

    def _list_samples(self) -> List[Dict[str, Any]]:
        factors = [_repeat_factor(d) for d in self.datasets]
        common = math.gcd(*factors)
        total = sum(len(d.samples) * f // common for d, f in zip(self.datasets, factors))
        if total > _MAX_LISTED_SAMPLES:
            raise ConfigError(
                f"ConcatDataset: the parts' repeat counts {factors} would list {total} samples; give the parts "
                f"smaller RepeatDataset times with the same ratios (or repeat the ConcatDataset as a whole)")
        self._offsets: List[int] = []
        samples: List[Dict[str, Any]] = []
        for part, (d, f) in enumerate(zip(self.datasets, factors)):
            tagged = [{**s, PART_KEY: part} for s in d.samples]
            self._offsets.append(len(samples))
            samples.extend(tagged * (f // common))  # shared dicts: repeats cost one pointer each
        return samples

    @property
    def samples(self) -> List[Dict[str, Any]]:
        return self._samples

    def part_of(self, index: int) -> int:
        """The part (position in ``datasets``) of the sample at ``samples[index]``."""
        return int(self._samples[index][PART_KEY])

    def sample_index(self, index: int) -> int:
        part = next(i for i, end in enumerate(self.cumulative_sizes) if index < end)
        local = index - (self.cumulative_sizes[part - 1] if part else 0)
        return self._offsets[part] + sample_index(self.datasets[part], local)

    def _route(self, sample: Dict[str, Any]):
        sample = dict(sample)
        part = sample.pop(PART_KEY, None)
        if part is None:
            raise ConfigError(f"ConcatDataset: sample {sample.get('img_path')} has no {PART_KEY!r} tag; "
                              f"samples must come from this dataset's ``samples``")
        return self.datasets[int(part)], sample

    def prepare_train(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        dataset, sample = self._route(sample)
        return dataset.prepare_train(sample)

    def prepare_test(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        dataset, sample = self._route(sample)
        return dataset.prepare_test(sample)

    def strip_normalize(self) -> "ConcatDataset":
        for d in self.datasets:
            strip_normalize(d)
        return self

    def parts(self) -> List[Any]:
        out: List[Any] = []
        for d in self.datasets:
            out.extend(d.parts() if hasattr(d, "parts") else [d])
        return out

    def __len__(self) -> int:
        return self.cumulative_sizes[-1]

    def __repr__(self) -> str:
        inner = ", ".join(repr(d) for d in self.datasets)
        return f"ConcatDataset(separate_eval={self.separate_eval}, datasets=[{inner}])"


def _cumsum(values: Sequence[int]):
    total = 0
    for v in values:
        total += v
        yield total


@DATASETS.register()
class MultiImageMixDataset(_Wrapper):
    """MMSeg's ``MultiImageMixDataset``: ``dataset``'s prepared samples, then ``pipeline``.

    A step with ``get_indexes(dataset)`` (``RandomMosaic``) picks further samples of ``dataset``; they are
    read by path, prepared with ``dataset``'s own pipeline and given to the step as
    ``results['mix_results']`` (removed afterwards). Steps whose type is in ``skip_type_keys`` are skipped
    (``update_skip_type_keys`` changes the list, as MMSeg's hooks do).

    ``pipeline_cfg`` is the inner pipeline followed by this one, so the Normalize step (usually at the end
    of ``pipeline``) is found for the device, and ``strip_normalize`` removes it from both.
    """

    def __init__(self, dataset: Any, pipeline: Sequence[Dict[str, Any]],
                 skip_type_keys: Optional[Sequence[str]] = None):
        if isinstance(pipeline, (str, dict)) or not isinstance(pipeline, collections.abc.Sequence):
            raise ConfigError(f"MultiImageMixDataset: pipeline must be a list of step configs, got {pipeline!r}")
        for i, step in enumerate(pipeline):
            if not isinstance(step, dict) or "type" not in step:
                raise ConfigError(f"MultiImageMixDataset.pipeline.{i}: expected a step config dict, got {step!r}")
        self.dataset = _build(dataset, "MultiImageMixDataset.dataset")
        self.mix_pipeline_cfg = [dict(c) for c in pipeline]
        self.update_skip_type_keys(skip_type_keys)
        self._build_steps(self.mix_pipeline_cfg)
        self._samples = self.dataset.samples

    def _build_steps(self, cfgs: List[Dict[str, Any]]) -> None:
        self.pipeline_types = [c["type"] for c in cfgs]
        self.pipeline = build_pipeline(cfgs).transforms

    def update_skip_type_keys(self, skip_type_keys: Optional[Sequence[str]]) -> None:
        """Set the step types to skip (MMSeg's hook interface)."""
        if skip_type_keys is not None:
            if isinstance(skip_type_keys, str) or not all(isinstance(k, str) for k in skip_type_keys):
                raise ConfigError(f"MultiImageMixDataset: skip_type_keys must be a list of step type names, "
                                  f"got {skip_type_keys!r}")
            skip_type_keys = list(skip_type_keys)
        self._skip_type_keys = skip_type_keys

    @property
    def pipeline_cfg(self) -> List[Dict[str, Any]]:
        return list(self.dataset.pipeline_cfg) + [dict(c) for c in self.mix_pipeline_cfg]

    @property
    def samples(self) -> List[Dict[str, Any]]:
        return self._samples

    def sample_index(self, index: int) -> int:
        return sample_index(self.dataset, index)

    def strip_normalize(self) -> "MultiImageMixDataset":
        strip_normalize(self.dataset)
        self._build_steps(split_device_steps(self.mix_pipeline_cfg)[0])
        return self

    def _mix_sample(self, index: int) -> Dict[str, Any]:
        """``dataset[index]`` read by path (local or ``scheme://``) and prepared by the inner pipeline."""
        from rayseg.datasets.ray_data import read_file_bytes

        sample = dict(self._samples[sample_index(self.dataset, int(index))])
        sample["img_bytes"] = read_file_bytes(sample["img_path"])
        if sample.get("seg_path"):
            sample["seg_bytes"] = read_file_bytes(sample["seg_path"])
        return self.dataset.prepare_train(sample)

    def prepare_train(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        results = self.dataset.prepare_train(sample)
        for step, kind in zip(self.pipeline, self.pipeline_types):
            if self._skip_type_keys is not None and kind in self._skip_type_keys:
                continue
            if hasattr(step, "get_indexes"):
                indexes = step.get_indexes(self.dataset)
                if not isinstance(indexes, collections.abc.Sequence):
                    indexes = [indexes]
                results["mix_results"] = [copy.deepcopy(self._mix_sample(i)) for i in indexes]
            results = step(results)
            results.pop("mix_results", None)
        return results

    def prepare_test(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        """Evaluation uses the inner dataset's test preparation (mixing is a training augmentation)."""
        return self.dataset.prepare_test(sample)

    def __len__(self) -> int:
        return len(self.dataset)

    def __repr__(self) -> str:
        return f"MultiImageMixDataset(pipeline={self.pipeline_types}, dataset={self.dataset!r})"


# ---------------------------------------------------------------------------------------------- config dicts
# The run spec and the config checks read dataset *configs* (before any dataset is built); these helpers
# let them see through the wrappers.
_WRAPPER_INNER = {"RepeatDataset": "dataset", "MultiImageMixDataset": "dataset", "ConcatDataset": "datasets"}


def leaf_dataset_cfgs(cfg: Dict[str, Any], where: str = "data.train") -> List[tuple]:
    """``[(key path, config)]`` of the non-wrapper datasets in a dataset config, in order, e.g.
    ``[("data.train.dataset.datasets.0", {...}), ...]``; a plain dataset config gives ``[(where, cfg)]``."""
    kind = cfg.get("type") if isinstance(cfg, dict) else None
    key = _WRAPPER_INNER.get(kind) if isinstance(kind, str) else None
    if key is None:
        return [(where, cfg)]
    inner = cfg.get(key)
    if key == "datasets":
        if isinstance(inner, dict) or not isinstance(inner, collections.abc.Sequence) or not inner:
            raise ConfigError(f"{where}.datasets: expected a non-empty list of dataset configs, got {inner!r}")
        out: List[tuple] = []
        for i, d in enumerate(inner):
            out.extend(leaf_dataset_cfgs(d, f"{where}.datasets.{i}"))
        return out
    if not isinstance(inner, dict):
        raise ConfigError(f"{where}.dataset: expected a dataset config mapping, got {inner!r}")
    return leaf_dataset_cfgs(inner, f"{where}.dataset")


def dataset_pipeline_cfg(cfg: Optional[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The pipeline a (possibly wrapped) dataset config runs, as ``pipeline_cfg`` would give it once built:
    a RepeatDataset's inner one, a ConcatDataset's first part's, a MultiImageMixDataset's inner pipeline
    followed by its own (where the Normalize step usually is)."""
    if not isinstance(cfg, dict):
        return []
    kind = cfg.get("type")
    if kind == "RepeatDataset":
        return dataset_pipeline_cfg(cfg.get("dataset"))
    if kind == "ConcatDataset":
        parts = cfg.get("datasets") or []
        return dataset_pipeline_cfg(parts[0]) if isinstance(parts, list) and parts else []
    if kind == "MultiImageMixDataset":
        return dataset_pipeline_cfg(cfg.get("dataset")) + list(cfg.get("pipeline") or [])
    return list(cfg.get("pipeline") or [])
