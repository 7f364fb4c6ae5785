"""MMSeg 1.x dataloaders and datasets → rayseg's ``data`` section (MMSeg 0.x vocabulary).

``train_dataloader.batch_size`` → ``data.samples_per_gpu``, ``num_workers`` → ``data.workers_per_gpu``, each
dataloader's ``dataset`` → ``data.train``/``val``/``test``. A dataset's ``data_prefix=dict(img_path=,
seg_map_path=)`` → ``img_dir``/``ann_dir``, ``ann_file`` → ``split``, ``metainfo`` → ``classes``/``palette``,
``BaseSegDataset`` → ``CustomDataset``; a ``ConcatDataset`` of splits of one dataset (VOC + aug) → one dataset
with lists of ``ann_dir`` and ``split``, as in 0.x, and of different datasets → rayseg's ``ConcatDataset``;
``RepeatDataset`` and ``MultiImageMixDataset`` → the same wrappers (``rayseg.datasets.dataset_wrappers``), the
mix dataset's inner pipeline without the preprocessor's Normalize/Pad (they end its own pipeline).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from rayseg.mmseg_config.pipeline_1x import Step, translate_pipeline
from rayseg.mmseg_config.report import Report

_SAMPLERS = ("InfiniteSampler", "DefaultSampler")
_IGNORED_DATASET_KEYS = {
    "test_mode": "rayseg's split (data.train/val/test) decides how a dataset is used",
    "lazy_init": "rayseg lists a dataset once, on the driver", "serialize_data": "rayseg lists a dataset once",
    "max_refetch": "a bad sample follows data.on_bad_sample instead",
}
_SAME_KEYS = ("data_root", "img_suffix", "seg_map_suffix", "reduce_zero_label", "ignore_index")


def _registered(name: str) -> bool:
    from rayseg.datasets import CustomDataset  # noqa: F401  (registers the datasets)
    from rayseg.registry import DATASETS

    return name in DATASETS


def translate_dataset(ds: Any, where: str, report: Report, test: bool, normalize: Optional[Step],
                      pad: Optional[Step]) -> Optional[Dict[str, Any]]:
    """One 1.x dataset dict as a rayseg dataset dict (None when something in it cannot be translated)."""
    if not isinstance(ds, dict) or not isinstance(ds.get("type"), str):
        report.refuse(where, f"a dataset must be a dict with a type, got {ds!r}")
        return None
    kind = ds["type"]
    if kind == "RepeatDataset":
        inner = translate_dataset(ds.get("dataset"), f"{where}.dataset", report, test, normalize, pad)
        extra = _wrapper_extras(ds, ("dataset", "times"), where, report)
        return None if inner is None or extra else {"type": kind, "times": ds.get("times"), "dataset": inner}
    if kind == "ConcatDataset":
        return _concat(ds, where, report, test, normalize, pad)
    if kind == "MultiImageMixDataset":
        return _mix(ds, where, report, test, normalize, pad)
    out: Dict[str, Any] = {"type": "CustomDataset" if kind == "BaseSegDataset" else kind}
    if not _registered(out["type"]):
        report.refuse(f"{where}.type", f"dataset {kind!r} has no rayseg equivalent (a dataset class in "
                                       "rayseg/datasets/, see docs/design.md)")
    ok = True
    for key, value in ds.items():
        if key == "type":
            continue
        if key in _SAME_KEYS:
            out[key] = value
        elif key == "data_prefix":
            ok = _prefix(value, f"{where}.data_prefix", out, report) and ok
        elif key == "ann_file":
            if value:
                out["split"] = value
        elif key == "metainfo":
            ok = _metainfo(value, f"{where}.metainfo", out, report) and ok
        elif key == "pipeline":
            pipeline, reduce = translate_pipeline(value, f"{where}.pipeline", report, test, normalize, pad)
            ok = pipeline is not None and ok
            out["pipeline"] = pipeline
            if reduce is not None and "reduce_zero_label" not in ds:
                out["reduce_zero_label"] = reduce
                report.note(f"{where}.pipeline", f"LoadAnnotations(reduce_zero_label={reduce}) of the test "
                                                 "pipeline set as the dataset's reduce_zero_label (rayseg reads "
                                                 "evaluation masks itself)")
        elif key in _IGNORED_DATASET_KEYS:
            report.ignore(f"{where}.{key}", _IGNORED_DATASET_KEYS[key])
        elif key == "backend_args" and value is None:
            continue
        else:
            report.refuse(f"{where}.{key}", f"dataset argument {key!r} has no rayseg equivalent")
            ok = False
    return out if ok else None


def _prefix(prefix: Any, where: str, out: Dict[str, Any], report: Report) -> bool:
    if not isinstance(prefix, dict):
        report.refuse(where, f"expected dict(img_path=..., seg_map_path=...), got {prefix!r}")
        return False
    ok = True
    for key, value in prefix.items():
        if key == "img_path":
            out["img_dir"] = value
        elif key == "seg_map_path":
            out["ann_dir"] = value
        else:
            report.refuse(f"{where}.{key}", "only img_path and seg_map_path are translated (img_dir, ann_dir)")
            ok = False
    return ok


def _metainfo(meta: Any, where: str, out: Dict[str, Any], report: Report) -> bool:
    if not isinstance(meta, dict):
        report.refuse(where, f"expected dict(classes=..., palette=...), got {meta!r}")
        return False
    ok = True
    for key, value in meta.items():
        if key in ("classes", "palette"):
            out[key] = [list(v) if isinstance(v, tuple) else v for v in value] if key == "palette" else list(value)
        else:
            report.refuse(f"{where}.{key}", "only classes and palette are translated")
            ok = False
    return ok


_WRAPPER_IGNORED = {"lazy_init": "rayseg lists a dataset once, on the driver",
                    "ignore_keys": "rayseg's ConcatDataset checks that the parts agree on classes and Normalize"}


def _wrapper_extras(ds: Dict[str, Any], keys: Tuple[str, ...], where: str, report: Report) -> bool:
    """Report a wrapper's arguments other than ``keys``; True when one of them is refused."""
    refused = False
    for key in sorted(set(ds) - {"type", *keys}):
        if key in _WRAPPER_IGNORED:
            report.ignore(f"{where}.{key}", _WRAPPER_IGNORED[key])
        else:
            report.refuse(f"{where}.{key}", f"{ds['type']} argument {key!r} has no rayseg equivalent")
            refused = True
    return refused


def _concat(ds: Dict[str, Any], where: str, report: Report, test: bool, normalize: Optional[Step],
            pad: Optional[Step]) -> Optional[Dict[str, Any]]:
    """Splits of one dataset (same everything but ann_dir and split) → one dataset with lists of both, as 0.x
    writes them; different datasets → rayseg's ``ConcatDataset`` of the translated parts."""
    parts = ds.get("datasets")
    if not isinstance(parts, (list, tuple)) or not parts:
        report.refuse(f"{where}.datasets", "a ConcatDataset needs a non-empty datasets list")
        return None
    refused = _wrapper_extras(ds, ("datasets",), where, report)
    done = [translate_dataset(p, f"{where}.datasets.{i}", report, test, normalize, pad) for i, p in enumerate(parts)]
    if refused or any(d is None for d in done):
        return None
    shared = [{k: v for k, v in d.items() if k not in ("ann_dir", "split")} for d in done]
    if all(s == shared[0] for s in shared) and all("split" in d and "ann_dir" in d for d in done) \
            and not any(d["type"] in _WRAPPERS for d in done):
        out = dict(shared[0])
        out["ann_dir"] = [d["ann_dir"] for d in done]
        out["split"] = [d["split"] for d in done]
        return out
    return {"type": "ConcatDataset", "datasets": done}


_WRAPPERS = ("RepeatDataset", "ConcatDataset", "MultiImageMixDataset")


def _mix(ds: Dict[str, Any], where: str, report: Report, test: bool, normalize: Optional[Step],
         pad: Optional[Step]) -> Optional[Dict[str, Any]]:
    """``MultiImageMixDataset``: the inner dataset loads (no Normalize/Pad), the wrapper's pipeline mixes and
    ends with the preprocessor's steps, as a 0.x config writes it."""
    refused = _wrapper_extras(ds, ("dataset", "pipeline", "skip_type_keys"), where, report)
    inner = translate_dataset(ds.get("dataset"), f"{where}.dataset", report, test, None, None)
    pipeline, _ = translate_pipeline(ds.get("pipeline", []), f"{where}.pipeline", report, test, normalize, pad)
    if refused or inner is None or pipeline is None:
        return None
    out: Dict[str, Any] = {"type": "MultiImageMixDataset", "dataset": inner, "pipeline": pipeline}
    if ds.get("skip_type_keys") is not None:
        out["skip_type_keys"] = list(ds["skip_type_keys"])
    return out


def translate_dataloader(dl: Any, where: str, report: Report, test: bool, normalize: Optional[Step],
                         pad: Optional[Step]) -> Tuple[Optional[Dict[str, Any]], Dict[str, Any]]:
    """A dataloader's dataset (translated) and its ``batch_size``/``num_workers`` (when given)."""
    if not isinstance(dl, dict):
        report.refuse(where, f"expected a dataloader dict, got {dl!r}")
        return None, {}
    sizes: Dict[str, Any] = {}
    dataset = None
    for key, value in dl.items():
        if key == "dataset":
            dataset = translate_dataset(value, f"{where}.dataset", report, test, normalize, pad)
        elif key in ("batch_size", "num_workers"):
            sizes[key] = value
        elif key in ("persistent_workers", "pin_memory", "drop_last"):
            report.ignore(f"{where}.{key}", "Ray Data feeds the workers (no torch DataLoader)")
        elif key == "sampler" and isinstance(value, dict) and value.get("type") in _SAMPLERS:
            why = ("Ray Data streams the training set shuffled, epoch after epoch" if not test
                   else "every image is evaluated once, in order")
            report.ignore(f"{where}.sampler", why)
        elif key == "collate_fn" and isinstance(value, dict) and value.get("type") in ("pseudo_collate",
                                                                                     "default_collate"):
            report.ignore(f"{where}.collate_fn", "Ray Data batches the samples")
        else:
            report.refuse(f"{where}.{key}", f"dataloader argument {key}={value!r} has no rayseg equivalent")
    if dataset is None and "dataset" not in dl:
        report.refuse(f"{where}.dataset", "a dataloader needs a dataset")
    return dataset, sizes
