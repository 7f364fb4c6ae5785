"""Pascal Context: ``trainval_merged.json`` (PASCAL in Detail) → ``SegmentationClassContext/*.png`` + splits.

Does what MMSeg's ``tools/dataset_converters/pascal_context.py`` does with the ``detail`` package, reading
the json itself: an image's class mask is its ``annos_segmentation`` entries (COCO RLE) painted in file
order with their ``category_id`` on a 0 background (``Detail.getMask``), then mapped through MMSeg's
``_mapping`` (background + the 59 classes' Detail ids, sorted) to indices 0..59. One mask serves both
variants: PascalContextDataset (60 classes) reads it as is, PascalContextDataset59 with
``reduce_zero_label``. ``VOC2010/ImageSets/SegmentationContext/{train,val}.txt`` list the images of each
phase, sorted. When ``dst`` is not ``src`` the listed JPEG images are copied (or hard-linked) as well.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from rayseg.datasets.converters._coco_rle import decode_rle
from rayseg.datasets.converters.base import (CONVERTERS, Converter, Unit, check_layout, copy_file, write_image,
                                             write_text)
from rayseg.errors import DataError

# MMSeg's _mapping: the Detail category ids of background (0) and the 59 Pascal Context classes, sorted;
# a pixel of category _MAPPING[k] becomes class index k (MMSeg's _key = 0..59).
MAPPING = np.sort(np.array([
    0, 2, 259, 260, 415, 324, 9, 258, 144, 18, 19, 22, 23, 397, 25, 284, 158, 159, 416, 33, 162, 420, 454, 295,
    296, 427, 44, 45, 46, 308, 59, 440, 445, 31, 232, 65, 354, 424, 68, 326, 72, 458, 34, 207, 80, 355, 85, 347,
    220, 349, 360, 98, 187, 104, 105, 366, 189, 368, 113, 115]))
VOC = "VOC2010"
PHASES = ("train", "val")


def context_mask(dst: str, anns: Sequence[Tuple[int, Dict[str, Any]]], height: int, width: int,
                 image: str) -> List[str]:
    """Paint one image's ``(category_id, rle)`` annotations and write its 0..59 class-index PNG."""
    mask = np.zeros((height, width), np.int64)
    for category, rle in anns:
        try:
            m = decode_rle(rle, height, width)
        except (DataError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{image}: annotation of category {category}: bad RLE mask: {exc}") from None
        if m.shape != mask.shape:
            raise DataError(f"{image}: annotation of category {category} is {m.shape[0]}x{m.shape[1]}, "
                            f"the image {height}x{width}")
        mask[m] = category
    values = np.unique(mask)
    unknown = values[~np.isin(values, MAPPING)]
    if unknown.size:  # MMSeg asserts the same: every painted category must be one of the 59 (+ background)
        raise DataError(f"{image}: category id(s) {unknown.tolist()} are not among Pascal Context's 59 classes")
    return [write_image(dst, np.searchsorted(MAPPING, mask).astype(np.uint8))]


@CONVERTERS.register("pascal_context")
class PascalContextConverter(Converter):
    """Pascal Context: trainval_merged.json → SegmentationClassContext/*.png (0..59) + train/val.txt.

    ``src``: the ``VOCdevkit`` folder holding ``VOC2010/`` (VOCtrainval_03-May-2010.tar); ``json_path``: the
    annotation file, relative to ``src`` or absolute (default ``VOC2010/trainval_merged.json``). ``dst``:
    the ``VOCdevkit`` to write (``src`` itself works in place). ``link``: hard-link the images.
    """

    def __init__(self, src: str, dst: str, json_path: str = os.path.join(VOC, "trainval_merged.json"),
                 link: bool = False):
        super().__init__(src, dst)
        self.json = os.path.join(self.src, json_path)
        self.link = bool(link)
        self.names: Dict[str, List[str]] = {}

    def check_source(self) -> None:
        check_layout("pascal_context", self.src, [os.path.join(VOC, "JPEGImages")],
                     "extract VOCtrainval_03-May-2010.tar there")
        if not os.path.isfile(self.json):
            raise DataError(f"pascal_context: annotation file {self.json} not found (download "
                            f"trainval_merged.json, or pass --option json_path=PATH)")

    def _load(self) -> Dict[str, Any]:
        try:
            with open(self.json) as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise DataError(f"pascal_context: cannot read {self.json} as json: {exc}") from None
        missing = [k for k in ("images", "annos_segmentation") if not isinstance(data, dict) or k not in data]
        if missing:
            raise DataError(f"pascal_context: {self.json} is not a PASCAL in Detail annotation file: no "
                            f"{', '.join(repr(k) for k in missing)}")
        return data

    def units(self) -> List[Unit]:
        data = self._load()
        by_image: Dict[Any, List[Tuple[int, Any]]] = defaultdict(list)
        for ann in data["annos_segmentation"]:  # in file order: later annotations paint over earlier ones
            by_image[ann["image_id"]].append((int(ann["category_id"]), ann["segmentation"]))
        self.names = {phase: [] for phase in PHASES}
        units: List[Unit] = []
        out = os.path.join(self.dst, VOC, "SegmentationClassContext")
        for img in data["images"]:
            phase = img.get("phase")
            if phase not in PHASES:
                continue
            fname = img["file_name"]
            stem = os.path.splitext(os.path.basename(fname))[0]
            self.names[phase].append(stem)
            where = f"{self.json} image {fname}"
            units.append(Unit(f"mask/{stem}", context_mask,
                              {"dst": os.path.join(out, stem + ".png"), "anns": by_image.get(img["image_id"], []),
                               "height": int(img["height"]), "width": int(img["width"]), "image": where},
                              [where]))
            if self.dst != self.src:
                rel = os.path.join(VOC, "JPEGImages", fname)
                path = os.path.join(self.src, rel)
                units.append(Unit(rel, copy_file, {"src": path, "dst": os.path.join(self.dst, rel),
                                                   "link": self.link}, [path]))
        if not units:
            raise DataError(f"pascal_context: {self.json} lists no image of phase train or val")
        return units

    def finish(self, written: List[str]) -> List[str]:
        sets = os.path.join(self.dst, VOC, "ImageSets", "SegmentationContext")
        return [write_text(os.path.join(sets, f"{phase}.txt"), sorted(names)) for phase, names in self.names.items()]
