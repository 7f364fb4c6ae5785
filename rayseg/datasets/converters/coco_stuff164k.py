"""COCO-Stuff 164k: ``stuffthingmaps_trainval2017`` PNGs → ``*_labelTrainIds.png`` (MMSeg's coco_stuff164k.py).

Each ``annotations/{train2017,val2017}/<id>.png`` (0-based COCO ids, 255 unlabeled) becomes
``annotations/<split>/<id>_labelTrainIds.png`` through MMSeg's ``clsID_to_trID`` (171 classes → 0..170,
255 stays 255). When ``dst`` is not ``src``, ``images/{train2017,val2017}`` are copied (or hard-linked).
"""
from __future__ import annotations

import os
from typing import List

from rayseg.datasets.converters._coco_stuff import lookup, map_label_png, train_id_table
from rayseg.datasets.converters.base import CONVERTERS, Converter, Unit, check_layout, copy_file
from rayseg.errors import DataError

# 0-based ids of the 11 things COCO dropped (street sign, hat, shoe, eye glasses, plate, mirror, window, desk,
# door, blender, hair brush): MMSeg's table skips them, so 0..181 → 0..170.
CLS_TO_TRAIN = train_id_table(181, removed=(11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90), keep=(255,))
LUT = lookup(CLS_TO_TRAIN)
SPLITS = ("train2017", "val2017")


@CONVERTERS.register("coco_stuff164k")
class CocoStuff164kConverter(Converter):
    """COCO-Stuff 164k: annotations/{train,val}2017/*.png → *_labelTrainIds.png (171 classes).

    ``src``: the folder with ``images/`` (train2017.zip, val2017.zip) and ``annotations/``
    (stuffthingmaps_trainval2017.zip) extracted as in MMSeg's guide; ``dst``: the root to write (``src``
    itself works in place). ``link``: hard-link the images instead of copying them.
    """

    def __init__(self, src: str, dst: str, link: bool = False):
        super().__init__(src, dst)
        self.link = bool(link)

    def check_source(self) -> None:
        check_layout("coco_stuff164k", self.src, [os.path.join(top, split) for top in ("images", "annotations")
                                                  for split in SPLITS],
                     "unzip train2017.zip and val2017.zip into images/, stuffthingmaps_trainval2017.zip into "
                     "annotations/")

    def units(self) -> List[Unit]:
        units: List[Unit] = []
        for split in SPLITS:
            folder = os.path.join(self.src, "annotations", split)
            for name in sorted(os.listdir(folder)):
                # a rerun in place must not take its own outputs for inputs (MMSeg filters them the same way)
                if not name.endswith(".png") or "_labelTrainIds" in name:
                    continue
                path = os.path.join(folder, name)
                out = os.path.join(self.dst, "annotations", split, name[:-4] + "_labelTrainIds.png")
                units.append(Unit(f"annotations/{split}/{name}", map_label_png,
                                  {"src": path, "dst": out, "lut": LUT}, [path]))
            if self.dst != self.src:
                images = os.path.join(self.src, "images", split)
                for name in sorted(os.listdir(images)):
                    rel = os.path.join("images", split, name)
                    units.append(Unit(rel, copy_file, {"src": os.path.join(images, name),
                                                       "dst": os.path.join(self.dst, rel), "link": self.link},
                                      [os.path.join(images, name)]))
        if not any(u.fn is map_label_png for u in units):
            raise DataError(f"coco_stuff164k: no label PNG under {os.path.join(self.src, 'annotations')}/"
                            f"{{{','.join(SPLITS)}}}")
        return units
