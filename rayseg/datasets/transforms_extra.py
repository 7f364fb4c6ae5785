"""MMSegmentation 0.x pipeline steps beyond the common ones: ``ResizeToMultiple``, ``Rerange``, ``CLAHE``,
``RandomRotate``, ``RGB2Gray``, ``AdjustGamma``, ``SegRescale``, ``RandomCutOut`` and the formatting steps
``ToTensor``, ``Transpose``, ``ToDataContainer`` (``RandomMosaic`` is in ``rayseg.datasets.mosaic``).

Arguments and randomness follow MMSeg 0.x (the draws come from ``np.random`` in MMSeg's order, so a seeded
worker reproduces a sample). Image operations use OpenCV. One difference is deliberate: the CPU pipeline
hands uint8 H×W×C images to the device (Normalize runs there), so steps that MMSeg leaves as float
(``Rerange``, ``RGB2Gray``) round and clip their output to uint8, and ranges outside 0..255 are refused.
Label maps are only ever resized/rotated with nearest neighbour and padded with the ignore value.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from rayseg.errors import ConfigError, DataError
from rayseg.registry import TRANSFORMS

_INTERPOLATIONS = {
    "nearest": cv2.INTER_NEAREST,
    "bilinear": cv2.INTER_LINEAR,
    "bicubic": cv2.INTER_CUBIC,
    "area": cv2.INTER_AREA,
    "lanczos": cv2.INTER_LANCZOS4,
}


def _interp(name: Optional[str], where: str, default: str = "bilinear") -> int:
    name = default if name is None else name
    if name not in _INTERPOLATIONS:
        raise ConfigError(f"{where}: interpolation must be one of {list(_INTERPOLATIONS)}, got {name!r}")
    return _INTERPOLATIONS[name]


def _fill(value: Any, channels: int, where: str) -> Tuple[float, ...]:
    """A per-channel OpenCV border/fill value (a number fills every channel)."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * channels
    if len(values) != channels:
        raise ConfigError(f"{where}: {len(values)} fill values for a {channels}-channel image")
    return tuple(float(v) for v in values) + (0.0,) * max(0, 4 - channels)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _check_prob(prob: Any, where: str) -> float:
    if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0 <= prob <= 1:
        raise ConfigError(f"{where}: prob must be a number in [0, 1], got {prob!r}")
    return float(prob)


@TRANSFORMS.register()
class ResizeToMultiple:
    """Resize image (``interpolation``, default bilinear) and masks (nearest) up to the next multiple of
    ``size_divisor`` on each side (mmcv's ``imresize_to_multiple`` with scale 1)."""

    def __init__(self, size_divisor: int = 32, interpolation: Optional[str] = None):
        if isinstance(size_divisor, bool) or not isinstance(size_divisor, int) or size_divisor <= 0:
            raise ConfigError(f"ResizeToMultiple: size_divisor must be a positive int, got {size_divisor!r}")
        self.size_divisor = size_divisor
        self.interpolation = interpolation
        self._interp = _interp(interpolation, "ResizeToMultiple")

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        h, w = results["img"].shape[:2]
        d = self.size_divisor
        size = (-(-w // d) * d, -(-h // d) * d)
        if size != (w, h):
            results["img"] = cv2.resize(results["img"], size, interpolation=self._interp)
            for key in results.get("seg_fields", []):
                results[key] = cv2.resize(results[key], size, interpolation=cv2.INTER_NEAREST)
        results["img_shape"] = results["img"].shape
        results["pad_shape"] = results["img"].shape
        return results

    def __repr__(self) -> str:
        return f"ResizeToMultiple(size_divisor={self.size_divisor}, interpolation={self.interpolation})"


@TRANSFORMS.register()
class Rerange:
    """Linearly stretch the image's value range to [min_value, max_value] (per image, all channels).

    MMSeg returns floats; here the result is rounded to uint8, so the range must lie within 0..255. An image
    with a single value cannot be stretched (MMSeg asserts): a DataError naming the file."""

    def __init__(self, min_value: float = 0, max_value: float = 255):
        if not isinstance(min_value, (int, float)) or not isinstance(max_value, (int, float)) \
                or not min_value < max_value:
            raise ConfigError(f"Rerange: need numbers min_value < max_value, got {min_value!r}, {max_value!r}")
        if min_value < 0 or max_value > 255:
            raise ConfigError(
                f"Rerange: [{min_value}, {max_value}] leaves 0..255, but the CPU pipeline hands uint8 images to "
                f"the device; rerange into 0..255 and put the scaling into Normalize's mean/std instead")
        self.min_value, self.max_value = float(min_value), float(max_value)

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        img = results["img"]
        lo, hi = float(np.min(img)), float(np.max(img))
        if not lo < hi:
            raise DataError(f"Rerange: image {results.get('filename')} has the single value {lo}; "
                            f"it cannot be stretched")
        scale = (self.max_value - self.min_value) / (hi - lo)
        results["img"] = _to_uint8((img.astype(np.float32) - lo) * scale + self.min_value)
        return results

    def __repr__(self) -> str:
        return f"Rerange(min_value={self.min_value}, max_value={self.max_value})"


@TRANSFORMS.register()
class CLAHE:
    """Contrast Limited Adaptive Histogram Equalization on each channel (OpenCV's, as mmcv.clahe)."""

    def __init__(self, clip_limit: float = 40.0, tile_grid_size: Sequence[int] = (8, 8)):
        if isinstance(clip_limit, bool) or not isinstance(clip_limit, (int, float)):
            raise ConfigError(f"CLAHE: clip_limit must be a number, got {clip_limit!r}")
        if not isinstance(tile_grid_size, (list, tuple)) or len(tile_grid_size) != 2 \
                or not all(isinstance(v, int) and v > 0 for v in tile_grid_size):
            raise ConfigError(f"CLAHE: tile_grid_size must be two positive ints, got {tile_grid_size!r}")
        self.clip_limit = float(clip_limit)
        self.tile_grid_size = (int(tile_grid_size[0]), int(tile_grid_size[1]))

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        clahe = cv2.createCLAHE(self.clip_limit, self.tile_grid_size)
        img = np.array(results["img"], dtype=np.uint8)  # a copy: the input is not changed in place
        if img.ndim == 2:
            img = clahe.apply(img)
        else:
            for c in range(img.shape[2]):
                img[:, :, c] = clahe.apply(np.ascontiguousarray(img[:, :, c]))
        results["img"] = img
        return results

    def __repr__(self) -> str:
        return f"CLAHE(clip_limit={self.clip_limit}, tile_grid_size={self.tile_grid_size})"


def rotate(img: np.ndarray, angle: float, border_value: Any, center: Any = None, auto_bound: bool = False,
           interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """mmcv.imrotate: rotate ``angle`` degrees clockwise about ``center`` (default the image centre);
    ``auto_bound`` enlarges the canvas to hold the whole rotated image."""
    h, w = img.shape[:2]
    if center is None:
        center = ((w - 1) * 0.5, (h - 1) * 0.5)
    matrix = cv2.getRotationMatrix2D((float(center[0]), float(center[1])), -angle, 1.0)
    if auto_bound:
        cos, sin = np.abs(matrix[0, 0]), np.abs(matrix[0, 1])
        new_w, new_h = w * cos + h * sin, h * cos + w * sin
        matrix[0, 2] += (new_w - w) * 0.5
        matrix[1, 2] += (new_h - h) * 0.5
        w, h = int(np.round(new_w)), int(np.round(new_h))
    channels = 1 if img.ndim == 2 else img.shape[2]
    out = cv2.warpAffine(img, matrix, (w, h), flags=interpolation, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=_fill(border_value, channels, "RandomRotate"))
    return out.reshape(out.shape[:2] + img.shape[2:])  # keep a 1-channel H×W×1 image 3-D


@TRANSFORMS.register()
class RandomRotate:
    """With probability ``prob``, rotate image (bilinear, border ``pad_val``) and masks (nearest, border
    ``seg_pad_val``) by an angle drawn from ``degree`` (a number d means (−d, d)), clockwise, as MMSeg.

    ``pad_val`` fills every channel (mmcv hands a number to OpenCV, which fills only the first channel).
    """

    def __init__(self, prob: float, degree: Any, pad_val: Any = 0, seg_pad_val: int = 255,
                 center: Optional[Sequence[float]] = None, auto_bound: bool = False):
        self.prob = _check_prob(prob, "RandomRotate")
        if isinstance(degree, (int, float)) and not isinstance(degree, bool):
            if degree <= 0:
                raise ConfigError(f"RandomRotate: degree {degree} should be positive")
            degree = (-degree, degree)
        if not isinstance(degree, (list, tuple)) or len(degree) != 2:
            raise ConfigError(f"RandomRotate: degree must be a number or (min, max), got {degree!r}")
        self.degree = (float(degree[0]), float(degree[1]))
        self.pad_val = pad_val
        self.seg_pad_val = seg_pad_val
        if center is not None and (not isinstance(center, (list, tuple)) or len(center) != 2):
            raise ConfigError(f"RandomRotate: center must be (x, y) or None, got {center!r}")
        self.center = center
        self.auto_bound = bool(auto_bound)

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        do_rotate = np.random.rand() < self.prob
        degree = np.random.uniform(min(*self.degree), max(*self.degree))  # drawn either way, as MMSeg
        if do_rotate:
            results["img"] = rotate(results["img"], degree, self.pad_val, self.center, self.auto_bound)
            for key in results.get("seg_fields", []):
                results[key] = rotate(results[key], degree, self.seg_pad_val, self.center, self.auto_bound,
                                      interpolation=cv2.INTER_NEAREST)
            results["img_shape"] = results["img"].shape
        return results

    def __repr__(self) -> str:
        return (f"RandomRotate(prob={self.prob}, degree={self.degree}, pad_val={self.pad_val}, "
                f"seg_pad_val={self.seg_pad_val}, center={self.center}, auto_bound={self.auto_bound})")


@TRANSFORMS.register()
class RGB2Gray:
    """The weighted mean of the image's channels (``weights`` in the image's channel order, as MMSeg: the
    decoded image is BGR, so the defaults weigh B by 0.299), repeated to ``out_channels`` channels (None:
    as many as the input had). Rounded to uint8."""

    def __init__(self, out_channels: Optional[int] = None, weights: Sequence[float] = (0.299, 0.587, 0.114)):
        if out_channels is not None and (not isinstance(out_channels, int) or out_channels <= 0):
            raise ConfigError(f"RGB2Gray: out_channels must be a positive int or None, got {out_channels!r}")
        if not isinstance(weights, (list, tuple)) or not weights \
                or not all(isinstance(v, (int, float)) for v in weights):
            raise ConfigError(f"RGB2Gray: weights must be a list of numbers, got {weights!r}")
        self.out_channels = out_channels
        self.weights = tuple(float(v) for v in weights)

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        img = results["img"]
        if img.ndim != 3 or img.shape[2] != len(self.weights):
            raise DataError(f"RGB2Gray: image {results.get('filename')} has shape {img.shape}; expected "
                            f"{len(self.weights)} channels (one per weight)")
        gray = (img.astype(np.float64) * np.asarray(self.weights).reshape(1, 1, -1)).sum(2, keepdims=True)
        n = len(self.weights) if self.out_channels is None else self.out_channels
        img = np.repeat(_to_uint8(gray), n, axis=2)
        results["img"] = img
        results["img_shape"] = img.shape
        return results

    def __repr__(self) -> str:
        return f"RGB2Gray(out_channels={self.out_channels}, weights={self.weights})"


@TRANSFORMS.register()
class AdjustGamma:
    """Gamma correction by a lookup table: ``v → (v/255)^(1/gamma)·255`` truncated to uint8 (MMSeg's table)."""

    def __init__(self, gamma: float = 1.0):
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)) or gamma <= 0:
            raise ConfigError(f"AdjustGamma: gamma must be a positive number, got {gamma!r}")
        self.gamma = gamma
        self.table = np.array([(i / 255.0) ** (1.0 / gamma) * 255 for i in np.arange(256)]).astype(np.uint8)

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        results["img"] = cv2.LUT(np.asarray(results["img"], dtype=np.uint8), self.table)
        return results

    def __repr__(self) -> str:
        return f"AdjustGamma(gamma={self.gamma})"


@TRANSFORMS.register()
class SegRescale:
    """Rescale the label maps (nearest) by ``scale_factor``: size ``int(w·s + 0.5)`` × ``int(h·s + 0.5)``
    (mmcv.imrescale); the image is untouched."""

    def __init__(self, scale_factor: float = 1):
        if isinstance(scale_factor, bool) or not isinstance(scale_factor, (int, float)) or scale_factor <= 0:
            raise ConfigError(f"SegRescale: scale_factor must be a positive number, got {scale_factor!r}")
        self.scale_factor = scale_factor

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        if self.scale_factor == 1:
            return results
        for key in results.get("seg_fields", []):
            h, w = results[key].shape[:2]
            size = (int(w * self.scale_factor + 0.5), int(h * self.scale_factor + 0.5))
            results[key] = cv2.resize(results[key], size, interpolation=cv2.INTER_NEAREST)
        return results

    def __repr__(self) -> str:
        return f"SegRescale(scale_factor={self.scale_factor})"


def _pairs(value: Any, where: str, name: str) -> List[Tuple[float, float]]:
    """One (a, b) pair or a list of them → list of pairs."""
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        value = [value]
    try:
        pairs = [(float(a), float(b)) for a, b in value]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {name} must be a pair or a list of pairs, got {value!r}") from None
    if not pairs:
        raise ConfigError(f"{where}: {name} must not be empty")
    return pairs


@TRANSFORMS.register()
class RandomCutOut:
    """CutOut: with probability ``prob`` fill ``n_holes`` (an int, or (min, max) drawn inclusive) random
    rectangles with ``fill_in`` and, when ``seg_fill_in`` is set, the masks with that label. A rectangle's
    (w, h) is one of ``cutout_shape`` (pixels) or ``cutout_ratio`` (× the image's w, h): give exactly one."""

    def __init__(self, prob: float, n_holes: Any, cutout_shape: Any = None, cutout_ratio: Any = None,
                 fill_in: Any = (0, 0, 0), seg_fill_in: Optional[int] = None):
        self.prob = _check_prob(prob, "RandomCutOut")
        if (cutout_shape is None) == (cutout_ratio is None):
            raise ConfigError("RandomCutOut: give exactly one of cutout_shape and cutout_ratio")
        if isinstance(n_holes, (list, tuple)):
            if len(n_holes) != 2 or not 0 <= n_holes[0] < n_holes[1]:
                raise ConfigError(f"RandomCutOut: n_holes (min, max) needs 0 ≤ min < max, got {n_holes!r}")
            n_holes = (int(n_holes[0]), int(n_holes[1]))
        elif isinstance(n_holes, int) and not isinstance(n_holes, bool) and n_holes >= 0:
            n_holes = (n_holes, n_holes)
        else:
            raise ConfigError(f"RandomCutOut: n_holes must be a non-negative int or (min, max), got {n_holes!r}")
        if seg_fill_in is not None and (not isinstance(seg_fill_in, int) or not 0 <= seg_fill_in <= 255):
            raise ConfigError(f"RandomCutOut: seg_fill_in must be an int in 0..255 or None, got {seg_fill_in!r}")
        self.n_holes = n_holes
        self.fill_in = fill_in
        self.seg_fill_in = seg_fill_in
        self.with_ratio = cutout_ratio is not None
        self.candidates = _pairs(cutout_ratio if self.with_ratio else cutout_shape, "RandomCutOut",
                                 "cutout_ratio" if self.with_ratio else "cutout_shape")

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        if not np.random.rand() < self.prob:
            return results
        img = results["img"].copy()  # never edit the caller's array in place
        h, w = img.shape[:2]
        segs = {key: results[key].copy() for key in results.get("seg_fields", [])} \
            if self.seg_fill_in is not None else {}
        fill = np.asarray(self.fill_in, dtype=img.dtype)
        for _ in range(np.random.randint(self.n_holes[0], self.n_holes[1] + 1)):
            x1, y1 = np.random.randint(0, w), np.random.randint(0, h)
            cw, ch = self.candidates[np.random.randint(0, len(self.candidates))]
            if self.with_ratio:
                cw, ch = int(cw * w), int(ch * h)
            x2, y2 = int(np.clip(x1 + cw, 0, w)), int(np.clip(y1 + ch, 0, h))
            img[y1:y2, x1:x2] = fill
            for seg in segs.values():
                seg[y1:y2, x1:x2] = self.seg_fill_in
        results["img"] = img
        results.update(segs)
        return results

    def __repr__(self) -> str:
        kind = "cutout_ratio" if self.with_ratio else "cutout_shape"
        return (f"RandomCutOut(prob={self.prob}, n_holes={self.n_holes}, {kind}={self.candidates}, "
                f"fill_in={self.fill_in}, seg_fill_in={self.seg_fill_in})")


# MMSeg's formatting steps turn arrays into tensors / DataContainers. Here the ingest keeps uint8 H×W×C
# arrays and the device makes the tensors (rayseg.datasets.ray_data.DeviceNormalizer), so the steps are
# accepted as no-ops, like DefaultFormatBundle and ImageToTensor in rayseg.datasets.transforms.


@TRANSFORMS.register()
class ToTensor:
    """No-op, accepted for MMSeg config compatibility (the device makes the tensors)."""

    def __init__(self, keys: Sequence[str]):
        self.keys = list(keys)

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        return results

    def __repr__(self) -> str:
        return f"ToTensor(keys={self.keys})"


@TRANSFORMS.register()
class ToDataContainer:
    """No-op, accepted for MMSeg config compatibility (there are no DataContainers: Ray Data batches)."""

    def __init__(self, fields: Sequence[Any] = ({"key": "img", "stack": True}, {"key": "gt_semantic_seg"})):
        self.fields = list(fields)

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        return results

    def __repr__(self) -> str:
        return f"ToDataContainer(fields={self.fields})"


@TRANSFORMS.register()
class Transpose:
    """Accepted when it is the H×W×C → C×H×W move of ``img`` (order (2, 0, 1)), which the device does for
    every batch, or an identity order: then a no-op. Any other transpose is refused: batches must stay
    H×W×C (for a geometric transpose use ``Albu`` with albumentations' ``Transpose``)."""

    def __init__(self, keys: Sequence[str], order: Sequence[int]):
        self.keys, self.order = list(keys), tuple(int(v) for v in order)
        identity = self.order == tuple(range(len(self.order)))
        to_chw = self.order == (2, 0, 1) and set(self.keys) <= {"img"}
        if not (identity or to_chw):
            raise ConfigError(
                f"Transpose(keys={self.keys}, order={list(self.order)}): the ingest hands H×W×C uint8 images "
                f"and H×W label maps to the device, which makes the C×H×W tensors itself; only "
                f"order [2, 0, 1] on img (a no-op here) is accepted. For a geometric transpose use "
                f"{{type: Albu, transforms: [{{type: Transpose, p: 0.5}}]}}")

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        return results

    def __repr__(self) -> str:
        return f"Transpose(keys={self.keys}, order={self.order})"
