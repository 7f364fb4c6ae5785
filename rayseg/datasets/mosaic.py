"""``RandomMosaic`` (MMSeg 0.x): four images tiled around a random centre, for ``MultiImageMixDataset``.

::

                    center_x
        +------------------------------+
        |       pad        |  pad      |
        |      +-----------+           |
        |      |  image1   |--------+  |
        |      |           | image2 |  |
 center_y |----+-------------+-----------|
        |    |   image3    |  image4   |
        |pad |             |           |
        +----|-------------+-----------+

The output is ``2·img_scale`` (h, w) large. Each image is resized (keeping its ratio: image bilinear, masks
nearest) to fit ``img_scale``, then the part of it that falls inside the canvas is pasted with its corner at
the centre; the rest of the canvas is ``pad_val`` (image) and ``seg_pad_val`` (masks). The first image is
the sample's own, the other three come from ``results['mix_results']``, which ``MultiImageMixDataset``
fills from ``get_indexes``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

import cv2
import numpy as np

from rayseg.errors import ConfigError, DataError
from rayseg.registry import TRANSFORMS

_CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")


@TRANSFORMS.register()
class RandomMosaic:
    """With probability ``prob``, make a mosaic of the sample and three others (see the module docstring).

    ``img_scale`` is (h, w) of one tile (the output is twice that); the centre is
    (U(center_ratio_range)·w, U(center_ratio_range)·h). Only works inside ``MultiImageMixDataset``.
    """

    def __init__(self, prob: float, img_scale: Sequence[int] = (640, 640),
                 center_ratio_range: Sequence[float] = (0.5, 1.5), pad_val: Any = 0, seg_pad_val: int = 255):
        if isinstance(prob, bool) or not isinstance(prob, (int, float)) or not 0 <= prob <= 1:
            raise ConfigError(f"RandomMosaic: prob must be a number in [0, 1], got {prob!r}")
        if not isinstance(img_scale, (list, tuple)) or len(img_scale) != 2 \
                or not all(isinstance(v, int) and v > 0 for v in img_scale):
            raise ConfigError(f"RandomMosaic: img_scale must be (h, w), two positive ints, got {img_scale!r}")
        if not isinstance(center_ratio_range, (list, tuple)) or len(center_ratio_range) != 2 \
                or not 0 <= center_ratio_range[0] <= center_ratio_range[1] <= 2:
            raise ConfigError(f"RandomMosaic: center_ratio_range must be (low, high) within [0, 2], "
                              f"got {center_ratio_range!r}")
        self.prob = float(prob)
        self.img_scale = (int(img_scale[0]), int(img_scale[1]))
        self.center_ratio_range = (float(center_ratio_range[0]), float(center_ratio_range[1]))
        self.pad_val = pad_val
        self.seg_pad_val = seg_pad_val

    def get_indexes(self, dataset: Any) -> List[int]:
        """Three random indexes of ``dataset`` (numpy's RNG: the ingest seeds it per sample)."""
        return [int(np.random.randint(0, len(dataset))) for _ in range(3)]

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        if "mix_results" not in results:
            raise ConfigError(
                "RandomMosaic needs three more images in results['mix_results']: put it in the pipeline of a "
                "MultiImageMixDataset ({type: MultiImageMixDataset, dataset: {...loading pipeline...}, "
                "pipeline: [{type: RandomMosaic, ...}, ...]}), not in a dataset's own pipeline")
        if len(results["mix_results"]) != 3:
            raise ConfigError(f"RandomMosaic: needs 3 mix_results, got {len(results['mix_results'])}")
        if np.random.rand() < self.prob:
            h, w = self.img_scale
            # Drawn x then y, as MMSeg.
            center = (int(np.random.uniform(*self.center_ratio_range) * w),
                      int(np.random.uniform(*self.center_ratio_range) * h))
            tiles = [results] + list(results["mix_results"])
            img = self._mosaic([t["img"] for t in tiles], center, self.pad_val, cv2.INTER_LINEAR, results)
            for key in results.get("seg_fields", []):
                segs = []
                for t in tiles:
                    if key not in t:
                        raise DataError(f"RandomMosaic: a mixed-in sample has no {key!r} (its dataset's pipeline "
                                        f"must load annotations like the main sample's)")
                    segs.append(t[key])
                results[key] = self._mosaic(segs, center, self.seg_pad_val, cv2.INTER_NEAREST, results)
            results["img"] = img
            results["img_shape"] = img.shape
            results["ori_shape"] = img.shape
            results["pad_shape"] = img.shape
        return results

    def _mosaic(self, arrays: List[np.ndarray], center: Tuple[int, int], pad: Any, interp: int,
                results: Dict[str, Any]) -> np.ndarray:
        h, w = self.img_scale
        first = arrays[0]
        shape = (2 * h, 2 * w) + first.shape[2:]
        if any(a.shape[2:] != first.shape[2:] for a in arrays):
            raise DataError(f"RandomMosaic: the images mixed with {results.get('filename')} have different "
                            f"channel counts {[a.shape for a in arrays]}")
        canvas = np.empty(shape, dtype=first.dtype)
        canvas[...] = pad
        for corner, arr in zip(_CORNERS, arrays):
            ah, aw = arr.shape[:2]
            ratio = min(h / ah, w / aw)
            size = (int(aw * ratio), int(ah * ratio))
            tile = cv2.resize(arr, size, interpolation=interp).reshape(size[::-1] + arr.shape[2:])
            (x1p, y1p, x2p, y2p), (x1c, y1c, x2c, y2c) = self._combine(corner, center, size)
            canvas[y1p:y2p, x1p:x2p] = tile[y1c:y2c, x1c:x2c]
        return canvas

    def _combine(self, corner: str, center: Tuple[int, int], size_wh: Tuple[int, int]):
        """MMSeg's ``_mosaic_combine``: (paste box on the canvas, crop box in the tile), both x1, y1, x2, y2."""
        cx, cy = center
        tw, th = size_wh
        h, w = self.img_scale
        if corner == "top_left":
            x1, y1, x2, y2 = max(cx - tw, 0), max(cy - th, 0), cx, cy
            crop = tw - (x2 - x1), th - (y2 - y1), tw, th
        elif corner == "top_right":
            x1, y1, x2, y2 = cx, max(cy - th, 0), min(cx + tw, w * 2), cy
            crop = 0, th - (y2 - y1), min(tw, x2 - x1), th
        elif corner == "bottom_left":
            x1, y1, x2, y2 = max(cx - tw, 0), cy, cx, min(h * 2, cy + th)
            crop = tw - (x2 - x1), 0, tw, min(y2 - y1, th)
        else:
            x1, y1, x2, y2 = cx, cy, min(cx + tw, w * 2), min(h * 2, cy + th)
            crop = 0, 0, min(tw, x2 - x1), min(y2 - y1, th)
        return (x1, y1, x2, y2), crop

    def __repr__(self) -> str:
        return (f"RandomMosaic(prob={self.prob}, img_scale={self.img_scale}, "
                f"center_ratio_range={self.center_ratio_range}, pad_val={self.pad_val}, "
                f"seg_pad_val={self.seg_pad_val})")
