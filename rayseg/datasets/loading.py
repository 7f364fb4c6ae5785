"""Pipeline steps that decode an image and its label map into a results dict (MMSeg semantics).

A sample is ``{"img_path": str, "seg_path": str | None}`` and may carry ``img_bytes`` / ``seg_bytes``
(raw file bytes read by Ray Data); when bytes are present they are decoded instead of reading the path.
"""
from __future__ import annotations

import io
import os
from typing import Any, Dict, Iterable, Optional, Tuple

import cv2
import numpy as np
from PIL import Image

from rayseg.datasets import listing
from rayseg.errors import ConfigError, DataError
from rayseg.registry import TRANSFORMS

_COLOR_FLAGS = {
    "color": cv2.IMREAD_COLOR,
    "grayscale": cv2.IMREAD_GRAYSCALE,
    "unchanged": cv2.IMREAD_UNCHANGED,
}
_BACKENDS = ("cv2", "pillow")


def _check_backend(backend: str, where: str) -> None:
    if backend not in _BACKENDS:
        raise ConfigError(f"{where}: imdecode_backend must be one of {_BACKENDS}, got {backend!r}")


def _read_bytes(results: Dict[str, Any], bytes_key: str, path: Optional[str]) -> np.ndarray:
    """Return the file's bytes as a uint8 array, from ``results[bytes_key]`` when present else from the file
    (a local path or an object-storage URI)."""
    data = results.pop(bytes_key, None)  # the decoded array supersedes the bytes; keeps batches small
    if data is None:
        if path is None:
            raise DataError(f"no file to read: {bytes_key!r} is absent and the path is None")
        data = listing.read_bytes(str(path))
    if isinstance(data, np.ndarray):
        return data.astype(np.uint8, copy=False).reshape(-1)
    return np.frombuffer(bytes(data), dtype=np.uint8)


def as_label_map(label_map: Any) -> Optional[Dict[int, int]]:
    """Normalise a label map given as a dict (int or numeric-string keys) or a list of (old, new) pairs.

    Pairs are accepted because a pyarrow ``map`` column (the manifest) comes back as a list of tuples.
    """
    if label_map is None:
        return None
    items: Iterable[Tuple[Any, Any]] = label_map.items() if isinstance(label_map, dict) else label_map
    try:
        return {int(k): int(v) for k, v in items}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"label_map must map integer labels to integer labels, got {label_map!r}") from exc


def _label_lut(label_map: Optional[Dict[int, int]], what: str) -> np.ndarray:
    lut = np.arange(256, dtype=np.int64)
    for old, new in (label_map or {}).items():
        if not 0 <= old <= 255 or not 0 <= new <= 255:
            raise ConfigError(f"{what} entries must lie in 0..255 for 8-bit masks, got {old}→{new}")
        lut[old] = new
    return lut


def map_labels(seg: np.ndarray, label_map: Optional[Dict[int, int]], reduce_zero_label: bool,
               subset_label_map: Optional[Dict[int, int]] = None) -> np.ndarray:
    """Apply ``label_map`` (raw values), then reduce_zero_label (0→255, k→k−1, 255 stays), then
    ``subset_label_map`` (a dataset's ``classes`` subset, on the reduced labels as in MMSeg 1.x).

    The three steps are composed into one 256-entry lookup table: every old→new pair applies to the
    values as they were before that step, which is exactly MMSeg's "map on a copy" (chains such as
    {1: 2, 2: 3} do not collide), and one table is much faster than masking.
    """
    if not label_map and not reduce_zero_label and not subset_label_map:
        return seg
    lut = _label_lut(label_map, "label_map")
    if reduce_zero_label:
        lut = np.where(lut == 0, 255, lut - 1)
        lut[lut == 254] = 255  # an original 255 (ignored) must stay 255
    if subset_label_map:
        lut = _label_lut(subset_label_map, "subset_label_map")[lut]
    return cv2.LUT(seg, lut.astype(np.uint8))


def decode_label(buf: np.ndarray, path: str, backend: str = "pillow") -> np.ndarray:
    """Decode PNG/other bytes into an HxW uint8 label map; palette images give their indices."""
    seg = None
    if backend == "cv2":
        seg = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if seg is None or seg.ndim == 3:
        # OpenCV expands palette PNGs to colours; PIL keeps the indices ("P" mode), so fall back to it.
        try:
            with Image.open(io.BytesIO(buf.tobytes())) as im:
                if im.mode not in ("P", "L", "I", "I;16", "I;16B", "I;16L", "1"):
                    raise DataError(
                        f"label map {path} is a {im.mode} image; expected a single-channel or palette image"
                    )
                seg = np.array(im)
        except DataError:
            raise
        except Exception as exc:  # PIL raises several types for corrupt files
            raise DataError(f"cannot decode label map {path}: {exc}") from exc
    if seg.ndim != 2:
        raise DataError(f"label map {path} has shape {seg.shape}; expected a single-channel H×W image")
    if seg.dtype != np.uint8:
        if seg.size and (seg.min() < 0 or seg.max() > 255):
            raise DataError(f"label map {path} has values outside 0..255 ({seg.min()}..{seg.max()})")
        seg = seg.astype(np.uint8)
    return seg


@TRANSFORMS.register()
class LoadImageFromFile:
    """Decode ``img_bytes`` (or read ``img_path``) into a BGR uint8 H×W×3 image, as MMSeg/cv2 do."""

    def __init__(self, to_float32: bool = False, color_type: str = "color", imdecode_backend: str = "cv2"):
        if color_type not in _COLOR_FLAGS:
            raise ConfigError(f"LoadImageFromFile: color_type must be one of {list(_COLOR_FLAGS)}, got {color_type!r}")
        _check_backend(imdecode_backend, "LoadImageFromFile")
        self.to_float32 = to_float32
        self.color_type = color_type
        self.imdecode_backend = imdecode_backend

    def _decode(self, buf: np.ndarray, path: str) -> np.ndarray:
        if self.imdecode_backend == "cv2":
            img = cv2.imdecode(buf, _COLOR_FLAGS[self.color_type])
            if img is None:
                raise DataError(f"cannot decode image {path} (not an image file, or corrupt)")
            return img
        try:
            with Image.open(io.BytesIO(buf.tobytes())) as im:
                if self.color_type == "color":
                    return cv2.cvtColor(np.array(im.convert("RGB")), cv2.COLOR_RGB2BGR)
                if self.color_type == "grayscale":
                    return np.array(im.convert("L"))
                return np.array(im)
        except Exception as exc:
            raise DataError(f"cannot decode image {path}: {exc}") from exc

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        path = results.get("img_path")
        img = self._decode(_read_bytes(results, "img_bytes", path), str(path))
        if self.to_float32:
            img = img.astype(np.float32)
        results["filename"] = path
        results["ori_filename"] = os.path.basename(path) if path else None
        results["img"] = img
        results["img_shape"] = img.shape
        results["ori_shape"] = img.shape
        results["pad_shape"] = img.shape
        results["scale_factor"] = 1.0
        return results

    def __repr__(self) -> str:
        return f"LoadImageFromFile(to_float32={self.to_float32}, color_type={self.color_type!r})"


@TRANSFORMS.register()
class LoadAnnotations:
    """Decode ``seg_bytes`` (or read ``seg_path``) into ``gt_semantic_seg`` (H×W uint8), checked and mapped.

    Applies ``results['label_map']``, reduce_zero_label (the results' flag or this step's), then
    ``results['subset_label_map']`` (see ``map_labels``), checks the mask's size against the image's
    original size and, when ``results['num_classes']`` is set, that each value is < num_classes or equal
    to the ignore index.
    """

    def __init__(self, reduce_zero_label: bool = False, imdecode_backend: str = "pillow"):
        _check_backend(imdecode_backend, "LoadAnnotations")
        self.reduce_zero_label = reduce_zero_label
        self.imdecode_backend = imdecode_backend

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        path = results.get("seg_path")
        img_path = results.get("filename") or results.get("img_path")
        if path is None and results.get("seg_bytes") is None:
            raise DataError(f"image {img_path} has no annotation (seg_path is None) but LoadAnnotations ran")
        seg = decode_label(_read_bytes(results, "seg_bytes", path), str(path), self.imdecode_backend)
        reduce = bool(self.reduce_zero_label or results.get("reduce_zero_label", False))
        seg = map_labels(seg, as_label_map(results.get("label_map")), reduce,
                         as_label_map(results.get("subset_label_map")))

        ori_shape = results.get("ori_shape")
        if ori_shape is not None and tuple(seg.shape[:2]) != tuple(ori_shape[:2]):
            raise DataError(
                f"mask {path} is {seg.shape[1]}x{seg.shape[0]} (WxH) but image {img_path} is "
                f"{ori_shape[1]}x{ori_shape[0]}"
            )
        num_classes = results.get("num_classes")
        if num_classes is not None:
            ignore_index = results.get("ignore_index", 255)
            values = np.flatnonzero(np.bincount(seg.ravel(), minlength=256))  # faster than np.unique
            bad = values[(values >= num_classes) & (values != ignore_index)]
            if bad.size:
                raise DataError(
                    f"mask {path} has label values {bad.tolist()} outside 0..{num_classes - 1} "
                    f"(ignore index {ignore_index}); check label_map / reduce_zero_label / classes"
                )
        results["gt_semantic_seg"] = seg
        # A new list: results dicts are shallow-copied (MultiScaleFlipAug), so never mutate a shared one.
        fields = list(results.get("seg_fields", []))
        if "gt_semantic_seg" not in fields:
            fields.append("gt_semantic_seg")
        results["seg_fields"] = fields
        return results

    def __repr__(self) -> str:
        return f"LoadAnnotations(reduce_zero_label={self.reduce_zero_label})"
