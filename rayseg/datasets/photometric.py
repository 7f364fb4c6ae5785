"""Photometric pipeline steps (image only; masks untouched)."""
from __future__ import annotations

from typing import Any, Dict, Sequence

import cv2
import numpy as np

from rayseg.errors import ConfigError
from rayseg.registry import TRANSFORMS


def _affine_lut(alpha: float, beta: float) -> np.ndarray:
    """Table for clip(x·alpha + beta, 0, 255) → uint8, computed in float32 like MMSeg's ``convert``.

    Applying a 256-entry table with cv2.LUT gives bit-identical results to the per-pixel float path and is
    several times faster on full images.
    """
    table = np.arange(256, dtype=np.float32) * np.float32(alpha) + np.float32(beta)
    return np.clip(table, 0, 255).astype(np.uint8)


@TRANSFORMS.register()
class PhotoMetricDistortion:
    """MMSeg's colour jitter on a BGR uint8 image; each part applies with probability 0.5.

    Order: brightness (+U(−delta, delta)); contrast (×U(range)) here when mode == 1; saturation
    (×U(range) on HSV's S); hue (+randint(−delta, delta) mod 180 on HSV's H); contrast here when mode == 0.
    Every part clips to uint8. HSV conversions use OpenCV on BGR, as mmcv does.
    """

    def __init__(self, brightness_delta: int = 32, contrast_range: Sequence[float] = (0.5, 1.5),
                 saturation_range: Sequence[float] = (0.5, 1.5), hue_delta: int = 18):
        for name, rng in (("contrast_range", contrast_range), ("saturation_range", saturation_range)):
            if len(rng) != 2 or not 0 <= rng[0] <= rng[1]:
                raise ConfigError(f"PhotoMetricDistortion: {name} must be (low, high) with 0 ≤ low ≤ high, got {rng!r}")
        self.brightness_delta = brightness_delta
        self.contrast_lower, self.contrast_upper = float(contrast_range[0]), float(contrast_range[1])
        self.saturation_lower, self.saturation_upper = float(saturation_range[0]), float(saturation_range[1])
        self.hue_delta = int(hue_delta)

    def brightness(self, img: np.ndarray) -> np.ndarray:
        if np.random.randint(2):
            beta = np.random.uniform(-self.brightness_delta, self.brightness_delta)
            return cv2.LUT(img, _affine_lut(1.0, beta))
        return img

    def contrast(self, img: np.ndarray) -> np.ndarray:
        if np.random.randint(2):
            alpha = np.random.uniform(self.contrast_lower, self.contrast_upper)
            return cv2.LUT(img, _affine_lut(alpha, 0.0))
        return img

    def saturation(self, img: np.ndarray) -> np.ndarray:
        if np.random.randint(2):
            hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            alpha = np.random.uniform(self.saturation_lower, self.saturation_upper)
            hsv[:, :, 1] = cv2.LUT(hsv[:, :, 1], _affine_lut(alpha, 0.0))
            return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        return img

    def hue(self, img: np.ndarray) -> np.ndarray:
        if np.random.randint(2):
            hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            delta = np.random.randint(-self.hue_delta, self.hue_delta)
            # 8-bit OpenCV hue lives in [0, 180); the table wraps it like MMSeg's "% 180".
            table = ((np.arange(256) + delta) % 180).astype(np.uint8)
            hsv[:, :, 0] = cv2.LUT(hsv[:, :, 0], table)
            return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        return img

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        img = results["img"]
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise ConfigError(
                f"PhotoMetricDistortion needs a BGR uint8 H×W×3 image, got {img.dtype} {img.shape}; "
                "put it before Normalize"
            )
        img = self.brightness(img)
        mode = np.random.randint(2)  # 1: contrast second, 0: contrast last
        if mode == 1:
            img = self.contrast(img)
        img = self.saturation(img)
        img = self.hue(img)
        if mode == 0:
            img = self.contrast(img)
        results["img"] = img
        return results

    def __repr__(self) -> str:
        return (f"PhotoMetricDistortion(brightness_delta={self.brightness_delta}, "
                f"contrast_range=({self.contrast_lower}, {self.contrast_upper}), "
                f"saturation_range=({self.saturation_lower}, {self.saturation_upper}), hue_delta={self.hue_delta})")
