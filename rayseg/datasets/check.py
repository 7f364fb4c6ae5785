"""Check a dataset's files before the expensive part (``jobs/check_dataset.py``), in parallel on Ray.

Header mode opens every image and mask lazily (PIL reads the size and mode only) and reads the last few
KiB of PNG/JPEG files for their end marker, so a truncated file is found without decoding it. ``full``
mode also decodes every image as ``LoadImageFromFile`` does and every mask through the dataset's own
label rules (``label_map``, ``reduce_zero_label``, ``subset_label_map``, ``num_classes``, ``ignore_index``),
so "out of range" means exactly what training would reject, and it counts the pixels of each class.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np
from PIL import Image

from rayseg.datasets import listing
from rayseg.datasets.ray_data import read_file_bytes
from rayseg.errors import ConfigError, DataError

KINDS = ("unreadable", "missing_mask", "size_mismatch", "bad_mask_format", "label_out_of_range")
# The PIL modes decode_label (rayseg/datasets/loading.py) reads as indices; anything else (RGB) it refuses.
LABEL_MODES = ("P", "L", "I", "I;16", "I;16B", "I;16L", "1")
_END_MARKERS = {"PNG": b"IEND", "JPEG": b"\xff\xd9"}
_TAIL_BYTES = 4096  # end markers may be followed by a little padding; a real truncation loses far more
_BATCH = 8  # samples per Ray task call: small, so the progress bar moves and the work spreads evenly


@dataclass
class Problem:
    """One problem with one file: ``kind`` is one of ``KINDS``, ``reason`` a sentence naming the values."""

    path: str
    kind: str
    reason: str

    def line(self) -> str:
        """``path: reason``, the form the job prints."""
        return f"{self.path}: {self.reason}"


@dataclass
class DatasetReport:
    """What ``check_dataset`` found. The pixel counts are set only by a ``full`` check: ``class_pixels[i]``
    counts label i after the dataset's label rules, ``ignore_pixels`` the ignore index, ``out_of_range_pixels``
    the values training would reject."""

    num_samples: int
    full: bool
    class_names: List[str]
    ignore_index: int
    problems: List[Problem] = field(default_factory=list)
    class_pixels: Optional[List[int]] = None
    ignore_pixels: Optional[int] = None
    out_of_range_pixels: Optional[int] = None

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def class_frequencies(self) -> Optional[List[float]]:
        """Each class's share of the labelled pixels (ignored and out-of-range pixels left out)."""
        if self.class_pixels is None:
            return None
        total = sum(self.class_pixels)
        return [c / total if total else 0.0 for c in self.class_pixels]

    def kind_counts(self) -> Dict[str, int]:
        """``{kind: number of problems}`` for the kinds that occur."""
        counts: Dict[str, int] = {}
        for p in self.problems:
            counts[p.kind] = counts.get(p.kind, 0) + 1
        return counts

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-ready dict: every field plus ``ok`` and ``class_frequencies``."""
        return {**asdict(self), "ok": self.ok, "class_frequencies": self.class_frequencies}


def _read_header(path: str) -> Tuple[Optional[Tuple[int, int]], Optional[str], Optional[str]]:
    """``(size WxH, PIL mode, None)`` or ``(None, None, why it cannot be used)``; decodes no pixels."""
    try:
        with (io.BytesIO(read_file_bytes(path)) if "://" in path else open(path, "rb")) as f:  # object storage too
            with Image.open(f) as im:
                size, mode, fmt = im.size, im.mode, im.format
            marker = _END_MARKERS.get(fmt)
            if marker is not None:
                end = f.seek(0, os.SEEK_END)
                f.seek(max(0, end - _TAIL_BYTES))
                if marker not in f.read():
                    return None, None, f"truncated: this {fmt} file ({end} bytes) lacks its end marker {marker!r}"
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, … for bad files
        return None, None, f"cannot read the header: {exc}"
    return size, mode, None


def _header_check(img_path: str, seg_path: Optional[str]) -> Tuple[List[Problem], bool, bool]:
    """The header problems of one sample, and whether the image and the mask are fit to decode."""
    problems: List[Problem] = []
    img_size, _, why = _read_header(img_path)
    if why:
        problems.append(Problem(img_path, "unreadable", why))
    if seg_path is None:
        return problems, not why, False
    if not listing.is_file(seg_path):
        problems.append(Problem(img_path, "missing_mask", f"no mask: expected {seg_path}"))
        return problems, not why, False
    seg_size, seg_mode, seg_why = _read_header(seg_path)
    if seg_why:
        problems.append(Problem(seg_path, "unreadable", seg_why))
    elif seg_mode not in LABEL_MODES:
        problems.append(Problem(seg_path, "bad_mask_format", f"mask is a {seg_mode} image; masks must be "
                                f"single-channel (L) or palette (P) images of class indices (docs/datasets.md)"))
        seg_why = "bad format"
    elif img_size is not None and seg_size != img_size:
        problems.append(Problem(seg_path, "size_mismatch", f"mask is {seg_size[0]}x{seg_size[1]} but its image "
                                f"{img_path} is {img_size[0]}x{img_size[1]} (WxH)"))
    return problems, not why, not seg_why


def check_headers(img_path: str, seg_path: Optional[str]) -> List[Problem]:
    """The problems one sample's file headers show: unreadable or truncated files, a missing mask, a mask
    that is not single-channel/palette or not its image's size. Reads no pixels (``CustomDataset.validate``)."""
    return _header_check(img_path, seg_path)[0]


def label_rules(dataset: Any) -> Dict[str, Any]:
    """What training applies to this dataset's files, as a small picklable dict for the Ray tasks: the
    dataset's label fields, the pipeline's ``LoadAnnotations`` flag and decoders (prepare_test uses the
    defaults when the pipeline has no LoadAnnotations)."""
    from rayseg.datasets.loading import as_label_map, map_labels

    steps = {c.get("type"): c for c in dataset.pipeline_cfg if isinstance(c, dict)}
    ann, img = steps.get("LoadAnnotations", {}), steps.get("LoadImageFromFile", {})
    fields = dataset.dataset_fields()
    rules = {
        "label_map": as_label_map(fields["label_map"]),
        "reduce_zero_label": bool(fields["reduce_zero_label"] or ann.get("reduce_zero_label", False)),
        "subset_label_map": as_label_map(fields["subset_label_map"]),
        "num_classes": int(fields["num_classes"]),
        "ignore_index": int(fields["ignore_index"]),
        "seg_backend": ann.get("imdecode_backend", "pillow"),
        "img_loader": {k: img[k] for k in ("color_type", "imdecode_backend") if k in img},
    }
    # A bad label_map entry is a config error: raise it here, once, not from every Ray task.
    map_labels(np.zeros((1, 1), np.uint8), rules["label_map"], rules["reduce_zero_label"], rules["subset_label_map"])
    return rules


def _check_pixels(img_path: str, seg_path: Optional[str], img_ok: bool, seg_ok: bool, rules: Dict[str, Any],
                  loader: Any) -> Tuple[List[Problem], np.ndarray]:
    """Decode what the header check passed; return the problems and the mask's 256 label counts."""
    from rayseg.datasets.loading import decode_label, map_labels
    from rayseg.datasets.ray_data import read_file_bytes

    problems: List[Problem] = []
    counts = np.zeros(256, np.int64)
    if img_ok:
        try:
            loader({"img_path": img_path})
        except DataError as exc:
            problems.append(Problem(img_path, "unreadable", str(exc)))
    if not seg_ok or seg_path is None:
        return problems, counts
    try:
        seg = decode_label(np.frombuffer(read_file_bytes(seg_path), np.uint8), seg_path, rules["seg_backend"])
    except DataError as exc:
        problems.append(Problem(seg_path, "unreadable", str(exc)))
        return problems, counts
    seg = map_labels(seg, rules["label_map"], rules["reduce_zero_label"], rules["subset_label_map"])
    counts = np.bincount(seg.ravel(), minlength=256).astype(np.int64)
    n, ignore = rules["num_classes"], rules["ignore_index"]
    bad = [v for v in np.flatnonzero(counts).tolist() if v >= n and v != ignore]
    if bad:  # the same test as LoadAnnotations, so this is exactly what training would refuse
        problems.append(Problem(seg_path, "label_out_of_range", f"label values {bad} ({int(counts[bad].sum())} "
                                f"pixels) outside 0..{n - 1} after label_map/reduce_zero_label/classes "
                                f"(ignore index {ignore})"))
    return problems, counts


def _check_batch(batch: Dict[str, np.ndarray], rules: Optional[Dict[str, Any]]) -> Dict[str, np.ndarray]:
    """Ray task: check a batch of samples; ``rules`` None means headers only."""
    import cv2

    from rayseg.datasets.loading import LoadImageFromFile

    cv2.setNumThreads(1)  # one lane per task; OpenCV's pool would oversubscribe the node
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # a corrupt file is reported, not warned
    loader = LoadImageFromFile(**rules["img_loader"]) if rules else None
    problems, counts = [], []
    for img_path, seg_path in zip(batch["img_path"], batch["seg_path"]):
        seg_path = str(seg_path) if seg_path else None
        found, img_ok, seg_ok = _header_check(str(img_path), seg_path)
        c = np.zeros(256, np.int64)
        if rules is not None:
            more, c = _check_pixels(str(img_path), seg_path, img_ok, seg_ok, rules, loader)
            found += more
        problems.append(json.dumps([asdict(p) for p in found]))
        counts.append(c)
    return {"index": np.asarray(batch["index"], np.int64), "problems": np.array(problems, dtype=object),
            "counts": np.stack(counts)}


def check_dataset(dataset: Any, full: bool = False, num_cpus: float = 1.0, parallelism: Optional[int] = None,
                  progress: bool = True, address: Optional[str] = None, desc: str = "check") -> DatasetReport:
    """Check every sample of ``dataset`` in Ray tasks and return a ``DatasetReport``.

    Headers only by default; ``full`` also decodes every pixel and counts the classes. Each task takes
    ``num_cpus``; ``parallelism`` caps the tasks running at once (default: as many as the cluster fits).
    Connects like training (``address``/``RAY_ADDRESS``, else a local Ray). Problems are listed in sample
    order; the check itself raises only for a config error (a bad ``label_map``) or a Ray failure.
    """
    import ray.data
    from tqdm import tqdm

    from rayseg.utils.ray_session import connect_ray, quiet_ray_data, user_error

    samples = dataset.samples
    rules = label_rules(dataset) if full else None
    total = np.zeros(256, np.int64)
    found: Dict[int, List[Problem]] = {}
    if samples:
        connect_ray(address)
        quiet_ray_data()
        # quiet_ray_data turns Ray Data's bars off for ours, and Ray Data warns that it did, once per process.
        logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
        items = [{"index": i, "img_path": s["img_path"], "seg_path": s.get("seg_path")} for i, s in enumerate(samples)]
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(200, math.ceil(len(items) / _BATCH))))
        ds = ds.map_batches(_check_batch, batch_size=_BATCH, fn_kwargs={"rules": rules}, num_cpus=num_cpus,
                            concurrency=parallelism)
        with tqdm(total=len(samples), desc=desc, unit="sample", disable=not progress, smoothing=0.1) as bar:
            try:
                for out in ds.iter_batches(batch_size=None, batch_format="numpy"):
                    for index, text, counts in zip(out["index"], out["problems"], out["counts"]):
                        found[int(index)] = [Problem(**p) for p in json.loads(text)]
                        total += counts
                    bar.update(len(out["index"]))
            except Exception as exc:
                cause = user_error(exc)
                if cause is None:
                    raise
                raise cause from None  # the rayseg error's own message, not Ray's wrapper around it
        if len(found) != len(samples):  # a lost block would silently pass files nobody looked at
            raise RuntimeError(f"checked {len(found)} samples but the dataset lists {len(samples)}")
    report = DatasetReport(num_samples=len(samples), full=full, class_names=list(dataset.CLASSES),
                           ignore_index=int(dataset.ignore_index),
                           problems=[p for i in sorted(found) for p in found[i]])
    if full:
        n, ignore = dataset.num_classes, int(dataset.ignore_index)
        in_range = 0 <= ignore < 256
        report.class_pixels = [0 if c == ignore else int(total[c]) for c in range(n)]
        report.ignore_pixels = int(total[ignore]) if in_range else 0
        report.out_of_range_pixels = int(total[n:].sum() - (total[ignore] if in_range and ignore >= n else 0))
    return report


def _list_part_keeping_missing_masks(self: Any, ann_dir: Optional[str], split: Optional[str]) -> List[Dict[str, Any]]:
    """``CustomDataset._list_part`` that lists an image whose mask is missing instead of refusing the split."""
    samples = super(type(self), self)._list_part(None, split)  # the images, by the dataset's own rules
    if ann_dir is None:
        return samples
    if not self._tree(ann_dir).exists():
        raise DataError(f"annotation directory {ann_dir} does not exist")
    for s in samples:  # the pairing rule of CustomDataset._list_part: same relative name, mask suffix
        rel = s["img_path"][len(self.img_dir):].lstrip("/" + os.sep)
        s["seg_path"] = listing.join(ann_dir, rel[: -len(self.img_suffix)] + self.seg_map_suffix)
    return samples


def dataset_for_check(dataset_cfg: Dict[str, Any], where: str = "dataset") -> Any:
    """Build the dataset of ``dataset_cfg`` as training would, except that an image without its mask is
    listed (the check reports it as ``missing_mask``) rather than refused. Errors start with ``where``."""
    from rayseg.datasets import CustomDataset
    from rayseg.registry import DATASETS, check_kwargs

    try:
        if not isinstance(dataset_cfg, dict) or not isinstance(dataset_cfg.get("type"), str):
            raise ConfigError(f"expected a dict with a 'type' key, got {dataset_cfg!r}")
        kwargs = dict(dataset_cfg)
        name = kwargs.pop("type")
        cls = DATASETS.get(name)
        check_kwargs(cls, kwargs, f"dataset {name!r}")
        if isinstance(cls, type) and issubclass(cls, CustomDataset):
            # The same class under the same name, so its messages and defaults are unchanged.
            cls = type(cls.__name__, (cls,), {"_list_part": _list_part_keeping_missing_masks,
                                              "__module__": cls.__module__, "__qualname__": cls.__qualname__})
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"dataset {name!r}: {exc}") from exc
    except (ConfigError, DataError) as exc:
        raise type(exc)(f"{where}: {exc}") from exc


def check_splits(cfg: Dict[str, Any], splits: Optional[Iterable[str]] = None, **kwargs: Any) -> Dict[str, DatasetReport]:
    """Check ``data.<split>`` of a loaded config for each split (default: each of train/val/test the config
    sets); ``kwargs`` go to ``check_dataset``. A split whose config equals an earlier one's (val and test
    are often the same) shares its report instead of being read twice."""
    data = cfg.get("data") or {}
    names = list(splits) if splits is not None else [s for s in ("train", "val", "test") if data.get(s)]
    if not names:
        raise ConfigError("the config sets none of data.train, data.val, data.test")
    reports: Dict[str, DatasetReport] = {}
    for split in names:
        if not data.get(split):
            raise ConfigError(f"data.{split} is not set in the config")
        same = next((s for s in reports if data[s] == data[split]), None)
        if same is not None:
            reports[split] = reports[same]
            continue
        dataset = dataset_for_check(data[split], f"data.{split}")
        try:
            reports[split] = check_dataset(dataset, desc=f"check {split}", **kwargs)
        except (ConfigError, DataError) as exc:
            raise type(exc)(f"data.{split}: {exc}") from exc
    return reports


def format_report(split: str, report: DatasetReport, max_lines: int = 20) -> str:
    """The job's text for one split: the count, a line per problem (at most ``max_lines``), the class table."""
    what = "headers and pixels" if report.full else "headers"
    lines = [f"data.{split}: {report.num_samples} samples checked ({what}), "
             + (f"{len(report.problems)} problem(s): " + ", ".join(f"{n} {k}" for k, n in report.kind_counts().items())
                if report.problems else "no problems")]
    lines += [f"  {p.line()}" for p in report.problems[:max_lines]]
    if len(report.problems) > max_lines:
        lines.append(f"  … and {len(report.problems) - max_lines} more (--out FILE writes them all)")
    if report.class_pixels is not None:
        width = max([len("class")] + [len(c) for c in report.class_names])
        lines.append(f"  {'class':<{width}}  {'pixels':>12}  {'%':>6}")
        for name, pixels, freq in zip(report.class_names, report.class_pixels, report.class_frequencies or []):
            lines.append(f"  {name:<{width}}  {pixels:>12}  {100 * freq:>6.2f}")
        lines.append(f"  ignored ({report.ignore_index}): {report.ignore_pixels} pixels; "
                     f"out of range: {report.out_of_range_pixels} pixels (neither counts in %)")
    return "\n".join(lines)
