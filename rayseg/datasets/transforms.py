"""Geometric and formatting pipeline steps with MMSegmentation 0.x semantics.

Images are resized bilinearly, label maps (every key in ``results['seg_fields']``) only ever with nearest
neighbour so they keep their integer labels. All randomness comes from ``np.random`` (the global numpy RNG)
so that a data worker can seed it.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from rayseg.errors import ConfigError, DataError
from rayseg.registry import TRANSFORMS

Scale = Tuple[int, int]


def as_scales(img_scale: Any, where: str) -> Optional[List[Scale]]:
    """Normalise ``img_scale`` to a list of (w, h)-style pairs: YAML gives ``[2048, 512]`` for one scale
    and ``[[2048, 512], [1024, 256]]`` for several; MMSeg's tuples mean the same."""
    if img_scale is None:
        return None
    if isinstance(img_scale, (list, tuple)) and len(img_scale) == 2 and all(
        isinstance(v, (int, float)) for v in img_scale
    ):
        img_scale = [img_scale]
    try:
        scales = [(int(s[0]), int(s[1])) for s in img_scale]
        ok = all(len(s) == 2 for s in img_scale)
    except (TypeError, IndexError):
        ok = False
    if not ok or not scales or any(v <= 0 for s in scales for v in s):
        raise ConfigError(f"{where}: img_scale must be a pair of positive ints or a list of pairs, got {img_scale!r}")
    return scales


def _as_pair(value: Any, name: str, where: str) -> Tuple[int, int]:
    if isinstance(value, int):
        value = (value, value)
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(isinstance(v, int) and v > 0 for v in value):
        raise ConfigError(f"{where}: {name} must be a positive int or a pair of positive ints, got {value!r}")
    return int(value[0]), int(value[1])


def rescale_size(w: int, h: int, scale: Sequence[float]) -> Tuple[int, int]:
    """mmcv.rescale_size: the largest size with long edge ≤ max(scale) and short edge ≤ min(scale)."""
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(w * factor + 0.5), int(h * factor + 0.5)


@TRANSFORMS.register()
class Resize:
    """Resize the image (bilinear) and masks (nearest); MMSeg 0.x modes.

    * ``ratio_range`` set: draw r ~ U(ratio_range) and scale ``img_scale`` (or the image's own size when
      ``img_scale`` is None) by r.
    * one ``img_scale``: use it; several: ``multiscale_mode='range'`` draws long/short edges between two
      scales, ``'value'`` picks one of them.
    * ``keep_ratio``: rescale so the long edge ≤ max(scale) and the short edge ≤ min(scale); otherwise the
      scale is the exact (w, h) output size.
    A ``results['scale']`` set beforehand (by MultiScaleFlipAug) is used as is.
    """

    def __init__(
        self,
        img_scale: Any = None,
        multiscale_mode: str = "range",
        ratio_range: Optional[Sequence[float]] = None,
        keep_ratio: bool = True,
    ):
        self.img_scale = as_scales(img_scale, "Resize")
        if multiscale_mode not in ("range", "value"):
            raise ConfigError(f"Resize: multiscale_mode must be 'range' or 'value', got {multiscale_mode!r}")
        if ratio_range is not None:
            if len(ratio_range) != 2 or not float(ratio_range[0]) <= float(ratio_range[1]):
                raise ConfigError(f"Resize: ratio_range must be (low, high) with low ≤ high, got {ratio_range!r}")
            ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
            if self.img_scale is not None and len(self.img_scale) != 1:
                raise ConfigError("Resize: ratio_range needs a single img_scale (or none)")
        elif self.img_scale is not None and len(self.img_scale) > 1 and multiscale_mode == "range" \
                and len(self.img_scale) != 2:
            raise ConfigError("Resize: multiscale_mode='range' needs exactly two img_scale entries")
        self.multiscale_mode = multiscale_mode
        self.ratio_range = ratio_range
        self.keep_ratio = keep_ratio

    def _random_scale(self, results: Dict[str, Any]) -> Tuple[Tuple[int, int], Optional[int]]:
        if self.ratio_range is not None:
            h, w = results["img"].shape[:2]
            base = self.img_scale[0] if self.img_scale is not None else (w, h)
            lo, hi = self.ratio_range
            ratio = np.random.random_sample() * (hi - lo) + lo
            return (int(base[0] * ratio), int(base[1] * ratio)), None
        if self.img_scale is None:
            raise ConfigError(
                "Resize: no img_scale or ratio_range, and no results['scale'] from MultiScaleFlipAug"
            )
        if len(self.img_scale) == 1:
            return self.img_scale[0], 0
        if self.multiscale_mode == "value":
            idx = np.random.randint(len(self.img_scale))
            return self.img_scale[idx], idx
        longs = [max(s) for s in self.img_scale]
        shorts = [min(s) for s in self.img_scale]
        edge_long = np.random.randint(min(longs), max(longs) + 1)
        edge_short = np.random.randint(min(shorts), max(shorts) + 1)
        return (int(edge_long), int(edge_short)), None

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        if "scale" not in results:
            results["scale"], results["scale_idx"] = self._random_scale(results)
        scale = results["scale"]
        img = results["img"]
        h, w = img.shape[:2]
        if self.keep_ratio:
            new_w, new_h = rescale_size(w, h, scale)
        else:
            new_w, new_h = int(scale[0]), int(scale[1])
        new_w, new_h = max(new_w, 1), max(new_h, 1)
        img = cv2.resize(img, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        results["img"] = img
        results["img_shape"] = img.shape
        results["pad_shape"] = img.shape
        w_scale, h_scale = new_w / w, new_h / h
        results["scale_factor"] = np.array([w_scale, h_scale, w_scale, h_scale], dtype=np.float32)
        results["keep_ratio"] = self.keep_ratio
        for key in results.get("seg_fields", []):
            results[key] = cv2.resize(results[key], (new_w, new_h), interpolation=cv2.INTER_NEAREST)
        return results

    def __repr__(self) -> str:
        return (f"Resize(img_scale={self.img_scale}, multiscale_mode={self.multiscale_mode!r}, "
                f"ratio_range={self.ratio_range}, keep_ratio={self.keep_ratio})")


@TRANSFORMS.register()
class RandomCrop:
    """Crop a random ``crop_size`` (h, w) window from the image and masks.

    With ``cat_max_ratio`` < 1, retry up to 10 times until the crop holds ≥ 2 non-ignored classes and no
    class covers ≥ cat_max_ratio of the non-ignored pixels; after 10 failures the last draw is used.
    """

    def __init__(self, crop_size: Any, cat_max_ratio: float = 1.0, ignore_index: int = 255):
        self.crop_size = _as_pair(crop_size, "crop_size", "RandomCrop")
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = ignore_index

    def get_crop_bbox(self, img: np.ndarray) -> Tuple[int, int, int, int]:
        margin_h = max(img.shape[0] - self.crop_size[0], 0)
        margin_w = max(img.shape[1] - self.crop_size[1], 0)
        offset_h = np.random.randint(0, margin_h + 1)
        offset_w = np.random.randint(0, margin_w + 1)
        return offset_h, offset_h + self.crop_size[0], offset_w, offset_w + self.crop_size[1]

    @staticmethod
    def crop(img: np.ndarray, bbox: Tuple[int, int, int, int]) -> np.ndarray:
        y1, y2, x1, x2 = bbox
        return img[y1:y2, x1:x2, ...]

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        img = results["img"]
        bbox = self.get_crop_bbox(img)
        if self.cat_max_ratio < 1.0 and "gt_semantic_seg" in results:
            for _ in range(10):
                labels, cnt = np.unique(self.crop(results["gt_semantic_seg"], bbox), return_counts=True)
                cnt = cnt[labels != self.ignore_index]
                if len(cnt) > 1 and np.max(cnt) / np.sum(cnt) < self.cat_max_ratio:
                    break
                bbox = self.get_crop_bbox(img)
        img = self.crop(img, bbox)
        results["img"] = img
        results["img_shape"] = img.shape
        for key in results.get("seg_fields", []):
            results[key] = self.crop(results[key], bbox)
        return results

    def __repr__(self) -> str:
        return f"RandomCrop(crop_size={self.crop_size}, cat_max_ratio={self.cat_max_ratio})"


_FLIP_CODES = {"horizontal": 1, "vertical": 0, "diagonal": -1}


@TRANSFORMS.register()
class RandomFlip:
    """Flip image and masks with probability ``prob`` (``flip_ratio`` is the old MMSeg name).

    A ``results['flip']`` / ``results['flip_direction']`` already set (MultiScaleFlipAug) is obeyed.
    """

    def __init__(self, prob: Optional[float] = None, direction: str = "horizontal",
                 flip_ratio: Optional[float] = None):
        if prob is not None and flip_ratio is not None:
            raise ConfigError("RandomFlip: give prob or its old name flip_ratio, not both")
        prob = flip_ratio if prob is None else prob
        if prob is not None and not 0.0 <= float(prob) <= 1.0:
            raise ConfigError(f"RandomFlip: prob must lie in [0, 1], got {prob!r}")
        if direction not in _FLIP_CODES:
            raise ConfigError(f"RandomFlip: direction must be one of {list(_FLIP_CODES)}, got {direction!r}")
        self.prob = prob
        self.direction = direction

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        if "flip" not in results:
            # prob=None is MMSeg's test-time form (MultiScaleFlipAug decides); on its own it never flips.
            results["flip"] = bool(self.prob is not None and np.random.rand() < self.prob)
        if "flip_direction" not in results:
            results["flip_direction"] = self.direction
        if results["flip"]:
            code = _FLIP_CODES[results["flip_direction"]]
            results["img"] = cv2.flip(results["img"], code)
            for key in results.get("seg_fields", []):
                results[key] = cv2.flip(results[key], code)
        return results

    def __repr__(self) -> str:
        return f"RandomFlip(prob={self.prob}, direction={self.direction!r})"


@TRANSFORMS.register()
class Normalize:
    """(img − mean) / std as float32, after BGR→RGB when ``to_rgb`` (mean/std are in RGB order then)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], to_rgb: bool = True):
        self.mean = np.array(mean, dtype=np.float64).reshape(1, -1)
        self.std = np.array(std, dtype=np.float64).reshape(1, -1)
        if self.mean.size != self.std.size or np.any(self.std == 0):
            raise ConfigError(f"Normalize: mean and std need the same length and a non-zero std, got {mean}, {std}")
        self.to_rgb = to_rgb

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        img = results["img"].astype(np.float32)  # astype copies: the input is never modified in place
        if self.to_rgb:
            cv2.cvtColor(img, cv2.COLOR_BGR2RGB, img)
        cv2.subtract(img, self.mean, img)
        cv2.multiply(img, 1.0 / self.std, img)
        results["img"] = img
        results["img_norm_cfg"] = dict(mean=self.mean.ravel().tolist(), std=self.std.ravel().tolist(),
                                       to_rgb=self.to_rgb)
        return results

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean.ravel().tolist()}, std={self.std.ravel().tolist()}, to_rgb={self.to_rgb})"


@TRANSFORMS.register()
class Pad:
    """Pad bottom/right to ``size`` (h, w) or to a multiple of ``size_divisor``.

    The image gets ``pad_val`` (a number, or one value per channel) and masks get ``seg_pad_val``.
    """

    def __init__(self, size: Any = None, size_divisor: Optional[int] = None,
                 pad_val: Union[float, Sequence[float]] = 0, seg_pad_val: int = 255):
        if (size is None) == (size_divisor is None):
            raise ConfigError("Pad: give exactly one of size and size_divisor")
        self.size = _as_pair(size, "size", "Pad") if size is not None else None
        if size_divisor is not None and (not isinstance(size_divisor, int) or size_divisor <= 0):
            raise ConfigError(f"Pad: size_divisor must be a positive int, got {size_divisor!r}")
        self.size_divisor = size_divisor
        self.pad_val = pad_val
        self.seg_pad_val = seg_pad_val

    def _target(self, h: int, w: int) -> Tuple[int, int]:
        if self.size is not None:
            return self.size
        d = self.size_divisor
        return -(-h // d) * d, -(-w // d) * d

    @staticmethod
    def _pad(img: np.ndarray, th: int, tw: int, value: Any) -> np.ndarray:
        h, w = img.shape[:2]
        if th == h and tw == w:
            return img
        channels = 1 if img.ndim == 2 else img.shape[2]
        values = list(value) if isinstance(value, (list, tuple)) else [value] * channels
        if len(values) != channels:
            raise ConfigError(f"Pad: pad_val has {len(values)} values for a {channels}-channel image")
        if channels > 4:  # cv2 border values hold at most 4 channels
            raise ConfigError(f"Pad: cannot pad a {channels}-channel image")
        fill = tuple(float(v) for v in values) + (0.0,) * (4 - channels)
        return cv2.copyMakeBorder(img, 0, th - h, 0, tw - w, cv2.BORDER_CONSTANT, value=fill)

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        img = results["img"]
        h, w = img.shape[:2]
        th, tw = self._target(h, w)
        if th < h or tw < w:
            raise DataError(f"Pad: image {results.get('filename')} is {h}x{w} (HxW), larger than pad size {th}x{tw}")
        img = self._pad(img, th, tw, self.pad_val)
        results["img"] = img
        results["pad_shape"] = img.shape
        results["pad_fixed_size"] = self.size
        results["pad_size_divisor"] = self.size_divisor
        for key in results.get("seg_fields", []):
            results[key] = self._pad(results[key], th, tw, self.seg_pad_val)
        return results

    def __repr__(self) -> str:
        return f"Pad(size={self.size}, size_divisor={self.size_divisor}, pad_val={self.pad_val})"


# MMSeg's formatting steps turn arrays into DataContainers/tensors; here batching happens in Ray Data, so
# they are accepted (for config compatibility) and do nothing.


@TRANSFORMS.register()
class DefaultFormatBundle:
    """No-op, accepted for MMSeg config compatibility (Ray Data does the batching)."""

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        return results


@TRANSFORMS.register()
class ImageToTensor:
    """No-op, accepted for MMSeg config compatibility."""

    def __init__(self, keys: Sequence[str]):
        self.keys = list(keys)

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        return results


@TRANSFORMS.register()
class Collect:
    """No-op, accepted for MMSeg config compatibility (the ingest picks the columns it needs)."""

    def __init__(self, keys: Sequence[str],
                 meta_keys: Sequence[str] = ("filename", "ori_filename", "ori_shape", "img_shape", "pad_shape",
                                             "scale_factor", "flip", "flip_direction", "img_norm_cfg")):
        self.keys = list(keys)
        self.meta_keys = list(meta_keys)

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        return results
