"""Cityscapes: gtFine label-id maps (or polygon json) → ``*_gtFine_labelTrainIds.png`` and split lists.

Does what MMSeg's ``tools/dataset_converters/cityscapes.py`` does with cityscapesscripts' ``json2labelImg``
(trainIds encoding): every ``gtFine/<split>/<city>/<stem>_gtFine_labelIds.png`` becomes
``<stem>_gtFine_labelTrainIds.png`` next to it in ``dst`` through the official labelId → trainId table
(classes not trained on → 255), and ``dst/{train,val,test}.txt`` list ``<city>/<stem>`` per split. A stem
with only ``_gtFine_polygons.json`` is drawn from its polygons as json2labelImg does. When ``dst`` is not
``src`` the ``leftImg8bit`` images are copied (or hard-linked: ``link=True``) so ``dst`` is a complete root.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List

import numpy as np

from rayseg.datasets.converters.base import (CONVERTERS, Converter, Unit, check_layout, copy_file, read_image,
                                             write_image, write_text)
from rayseg.errors import DataError

# (name, labelId, trainId) from cityscapesscripts/helpers/labels.py; trainId 255 = not trained on (ignored).
# "license plate" (id -1) is drawn by no converter: json2labelImg skips labels with a negative id.
LABELS = (
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255), ("out of roi", 3, 255),
    ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255), ("road", 7, 0), ("sidewalk", 8, 1),
    ("parking", 9, 255), ("rail track", 10, 255), ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4),
    ("guard rail", 14, 255), ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9), ("sky", 23, 10),
    ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15),
    ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
    ("license plate", -1, -1),
)
NAME_TO_TRAIN_ID: Dict[str, int] = {name: train for name, lid, train in LABELS if lid >= 0}
ID_TO_TRAIN_ID = np.full(256, 255, np.uint8)  # label ids outside the table (none in the official data) → 255
for _name, _lid, _train in LABELS:
    if _lid >= 0:
        ID_TO_TRAIN_ID[_lid] = _train

SPLITS = ("train", "val", "test")
LABEL_IDS = "_gtFine_labelIds.png"
POLYGONS = "_gtFine_polygons.json"
TRAIN_IDS = "_gtFine_labelTrainIds.png"


def label_ids_to_train_ids(src: str, dst: str) -> List[str]:
    """One ``*_gtFine_labelIds.png`` → its ``*_gtFine_labelTrainIds.png``."""
    ids = read_image(src)
    if ids.ndim != 2 or ids.dtype != np.uint8:
        raise DataError(f"{src} is not a label-id map (expected a single-channel 8-bit PNG, got shape "
                        f"{ids.shape} {ids.dtype})")
    return [write_image(dst, ID_TO_TRAIN_ID[ids])]


def polygons_to_train_ids(src: str, dst: str) -> List[str]:
    """One ``*_gtFine_polygons.json`` → ``*_gtFine_labelTrainIds.png``, drawn like cityscapesscripts'
    json2labelImg: background "unlabeled", polygons filled in file order, "deleted" ones skipped, a
    "<label>group" drawn as its label."""
    from PIL import Image, ImageDraw

    try:
        with open(src) as f:
            ann = json.load(f)
        size = (int(ann["imgWidth"]), int(ann["imgHeight"]))
        objects = ann["objects"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{src} is not a Cityscapes polygon file: {exc}") from None
    canvas = Image.new("L", size, NAME_TO_TRAIN_ID["unlabeled"])
    draw = ImageDraw.Draw(canvas)
    for obj in objects:
        if obj.get("deleted"):
            continue
        label = obj["label"]
        if label not in NAME_TO_TRAIN_ID and label.endswith("group"):
            label = label[: -len("group")]
        if label == "license plate":
            continue
        if label not in NAME_TO_TRAIN_ID:
            raise DataError(f"{src}: unknown Cityscapes label {obj['label']!r}")
        points = [(float(x), float(y)) for x, y in obj["polygon"]]
        if len(points) >= 2:
            draw.polygon(points, fill=NAME_TO_TRAIN_ID[label])
    return [write_image(dst, np.asarray(canvas, np.uint8))]


@CONVERTERS.register("cityscapes")
class CityscapesConverter(Converter):
    """Cityscapes gtFine labelIds (or polygons json) → *_gtFine_labelTrainIds.png + train/val/test.txt.

    ``src``: the download's root (``leftImg8bit/``, ``gtFine/``); ``dst``: the root to write (``src`` itself
    converts in place, as MMSeg does). ``link``: hard-link the images into ``dst`` instead of copying them.
    """

    def __init__(self, src: str, dst: str, link: bool = False):
        super().__init__(src, dst)
        self.link = bool(link)
        self.stems: Dict[str, List[str]] = {}

    def check_source(self) -> None:
        check_layout("cityscapes", self.src, ["gtFine", "leftImg8bit"],
                     "extract gtFine_trainvaltest.zip and leftImg8bit_trainvaltest.zip into it")
        if not any(os.path.isdir(os.path.join(self.src, "gtFine", s)) for s in SPLITS):
            raise DataError(f"cityscapes: {os.path.join(self.src, 'gtFine')} has none of the folders "
                            f"{', '.join(SPLITS)}")

    def units(self) -> List[Unit]:
        units: List[Unit] = []
        for split in SPLITS:
            gt = os.path.join(self.src, "gtFine", split)
            stems = set()
            for folder, _, files in sorted(os.walk(gt)):
                for fname in files:
                    for suffix in (LABEL_IDS, POLYGONS):
                        if fname.endswith(suffix):
                            stems.add(os.path.relpath(os.path.join(folder, fname[: -len(suffix)]), gt))
            self.stems[split] = sorted(stems)
            for stem in self.stems[split]:
                ids, poly = (os.path.join(gt, stem + s) for s in (LABEL_IDS, POLYGONS))
                out = os.path.join(self.dst, "gtFine", split, stem + TRAIN_IDS)
                # the label-id map when there is one: it is what json2labelImg drew from the same polygons
                fn, source = (label_ids_to_train_ids, ids) if os.path.isfile(ids) else (polygons_to_train_ids, poly)
                units.append(Unit(os.path.relpath(source, self.src), fn, {"src": source, "dst": out}, [source]))
        if self.dst != self.src:
            images = os.path.join(self.src, "leftImg8bit")
            for folder, _, files in sorted(os.walk(images)):
                for fname in sorted(f for f in files if f.endswith("_leftImg8bit.png")):
                    path = os.path.join(folder, fname)
                    rel = os.path.relpath(path, self.src)
                    units.append(Unit(rel, copy_file, {"src": path, "dst": os.path.join(self.dst, rel),
                                                       "link": self.link}, [path]))
        return units

    def finish(self, written: List[str]) -> List[str]:
        # MMSeg writes one list per split, "<city>/<city>_<seq>_<frame>" per line
        return [write_text(os.path.join(self.dst, f"{split}.txt"), stems)
                for split, stems in self.stems.items() if stems]
