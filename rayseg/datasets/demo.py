"""A small synthetic "shapes" dataset for demos and smoke tests, and ``DemoShapesDataset`` to read it.

Each image is a textured, noisy background with 1–4 filled shapes (circle → 1, rectangle → 2,
triangle → 3; background 0). Shape colours are drawn independently of the class, so a model has to
learn shape rather than colour, but edges are sharp and contrast is kept high so it stays easy.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Sequence, Tuple

import cv2
import numpy as np

from rayseg.datasets.custom import CustomDataset
from rayseg.registry import DATASETS

DEMO_CLASSES = ("background", "circle", "rectangle", "triangle")
DEMO_PALETTE = [[0, 0, 0], [220, 20, 60], [0, 128, 255], [255, 200, 0]]


@DATASETS.register()
class DemoShapesDataset(CustomDataset):
    """The synthetic shapes written by ``make_demo_dataset`` (PNG images and 8-bit PNG masks)."""

    CLASSES = DEMO_CLASSES
    PALETTE = DEMO_PALETTE
    IMG_SUFFIX = ".png"
    SEG_MAP_SUFFIX = ".png"


def _background(rng: np.random.Generator, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """A smooth, weakly saturated random colour field plus optional stripes; returns (float image, base)."""
    grey = rng.uniform(40, 215)
    base = grey + rng.uniform(-25, 25, 3)  # low saturation: shapes stand out by colour strength
    coarse = rng.normal(0, 25, (4, 4, 3)).astype(np.float32)
    img = base.astype(np.float32) + cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    if rng.random() < 0.5:  # stripes give texture that is not a shape
        period = rng.uniform(6, 20)
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        img += (wave * rng.uniform(5, 20))[..., None]
    return img, base


# OpenCV hue (0-180) around which each class's colours vary: circles reddish, rectangles greenish,
# triangles bluish. The colour cue plus the shape makes the demo learnable in a few hundred iterations.
_CLASS_HUES = {1: 0, 2: 60, 3: 120}


def _class_colour(rng: np.random.Generator, cls: int) -> Tuple[float, float, float]:
    """A saturated BGR colour from the class's hue family."""
    hue = (_CLASS_HUES[cls] + rng.uniform(-15, 15)) % 180
    hsv = np.array([[[hue, rng.uniform(170, 255), rng.uniform(130, 255)]]], np.float32).astype(np.uint8)
    bgr = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return tuple(float(c) for c in bgr)


def _shape_polygon(rng: np.random.Generator, cls: int, h: int, w: int) -> Tuple[str, Any]:
    size = min(h, w)
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    r = rng.uniform(0.12, 0.26) * size
    if cls == 1:
        return "circle", ((int(round(cx)), int(round(cy))), max(int(round(r)), 2))
    if cls == 2:
        box = ((cx, cy), (r * rng.uniform(1.2, 2.2), r * rng.uniform(1.0, 1.8)), rng.uniform(0, 90))
        return "poly", np.round(cv2.boxPoints(box)).astype(np.int32)
    start = rng.uniform(0, 2 * np.pi)
    angles = start + np.arange(3) * 2 * np.pi / 3 + rng.uniform(-0.25, 0.25, 3)
    radii = r * rng.uniform(1.0, 1.3, 3)
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    return "poly", np.round(pts).astype(np.int32)


def make_demo_sample(rng: np.random.Generator, size: Sequence[int]) -> Tuple[np.ndarray, np.ndarray]:
    """One (BGR uint8 image, uint8 mask) pair of ``size`` (h, w)."""
    h, w = int(size[0]), int(size[1])
    img, base = _background(rng, h, w)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 5))):
        cls = int(rng.integers(1, 4))
        kind, geom = _shape_polygon(rng, cls, h, w)
        colour = _class_colour(rng, cls)
        # Same rasteriser (no anti-aliasing) for image and mask, so labels match pixels exactly;
        # later shapes occlude earlier ones in both.
        if kind == "circle":
            cv2.circle(img, geom[0], geom[1], colour, -1, cv2.LINE_8)
            cv2.circle(mask, geom[0], geom[1], cls, -1, cv2.LINE_8)
        else:
            cv2.fillPoly(img, [geom], colour, cv2.LINE_8)
            cv2.fillPoly(mask, [geom], cls, cv2.LINE_8)
    img += rng.normal(0, 8, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), mask


def make_demo_dataset(dst: str, num_train: int = 240, num_val: int = 60, size: Sequence[int] = (128, 128),
                      seed: int = 0) -> Dict[str, Any]:
    """Write ``dst/img_dir/{train,val}/NNNNN.png`` and ``dst/ann_dir/{train,val}/NNNNN.png``.

    ``size`` is (height, width). Returns a summary: counts, size, classes and per-class pixel fractions.
    """
    rng = np.random.default_rng(seed)
    counts = np.zeros(len(DEMO_CLASSES), np.int64)
    for split, n in (("train", num_train), ("val", num_val)):
        img_dir = os.path.join(dst, "img_dir", split)
        ann_dir = os.path.join(dst, "ann_dir", split)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(ann_dir, exist_ok=True)
        for i in range(int(n)):
            img, mask = make_demo_sample(rng, size)
            name = f"{split}_{i:05d}.png"
            if not (cv2.imwrite(os.path.join(img_dir, name), img)
                    and cv2.imwrite(os.path.join(ann_dir, name), mask)):
                raise OSError(f"could not write {name} under {dst}")
            counts += np.bincount(mask.ravel(), minlength=len(DEMO_CLASSES))
    total = max(int(counts.sum()), 1)
    return {
        "root": os.path.abspath(dst),
        "num_train": int(num_train),
        "num_val": int(num_val),
        "size": [int(size[0]), int(size[1])],
        "classes": list(DEMO_CLASSES),
        "class_pixel_fraction": {c: round(int(k) / total, 4) for c, k in zip(DEMO_CLASSES, counts)},
    }
