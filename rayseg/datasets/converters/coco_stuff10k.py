"""COCO-Stuff 10k: ``cocostuff-10k-v1.1`` ``.mat`` annotations → ``*_labelTrainIds.png`` (MMSeg's coco_stuff10k.py).

The release has ``images/<name>.jpg``, ``annotations/<name>.mat`` (variable ``S``: 1-based COCO ids, 0
unlabeled) and ``imageLists/{train,test}.txt``. Each listed image is copied to
``images/{train2014,test2014}/<name>.jpg`` and its labels mapped through MMSeg's ``clsID_to_trID``
(0 → 0, the 171 classes → 1..171; the 10k configs train with ``reduce_zero_label``) into
``annotations/{train2014,test2014}/<name>_labelTrainIds.png``.
"""
from __future__ import annotations

import os
from typing import List

import numpy as np

from rayseg.datasets.converters._coco_stuff import lookup, map_label_array, train_id_table
from rayseg.datasets.converters.base import CONVERTERS, Converter, Unit, check_layout, copy_file
from rayseg.errors import DataError

# 1-based ids of the 11 things COCO dropped: MMSeg's table skips them, so 0..182 → 0..171.
CLS_TO_TRAIN = train_id_table(182, removed=(12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91))
LUT = lookup(CLS_TO_TRAIN)
SPLITS = {"train": "train2014", "test": "test2014"}


def convert_10k(image: str, mat: str, image_dst: str, mask_dst: str, link: bool = False) -> List[str]:
    """One listed image: copy the JPEG, map the ``S`` array of its ``.mat`` to train ids."""
    from scipy.io import loadmat

    try:
        labels = np.asarray(loadmat(mat)["S"])
    except KeyError:
        raise DataError(f"{mat} has no variable 'S' (not a COCO-Stuff 10k annotation)") from None
    except Exception as exc:  # noqa: BLE001 - scipy raises several types for a damaged .mat
        raise DataError(f"cannot read {mat} as a MATLAB file: {exc}") from None
    written = map_label_array(labels, LUT, mat, mask_dst)
    return [copy_file(image, image_dst, link=link), *written]


@CONVERTERS.register("coco_stuff10k")
class CocoStuff10kConverter(Converter):
    """COCO-Stuff 10k: annotations/*.mat → annotations/{train,test}2014/*_labelTrainIds.png (+ images).

    ``src``: cocostuff-10k-v1.1.zip extracted; ``dst``: the root to write (``src`` itself works in place).
    ``link``: hard-link the images instead of copying them.
    """

    def __init__(self, src: str, dst: str, link: bool = False):
        super().__init__(src, dst)
        self.link = bool(link)

    def check_source(self) -> None:
        check_layout("coco_stuff10k", self.src, ["images", "annotations", os.path.join("imageLists", "train.txt"),
                                                 os.path.join("imageLists", "test.txt")],
                     "extract cocostuff-10k-v1.1.zip there")

    def units(self) -> List[Unit]:
        units: List[Unit] = []
        for split, folder in SPLITS.items():
            with open(os.path.join(self.src, "imageLists", f"{split}.txt")) as f:
                names = [line.strip() for line in f if line.strip()]
            for name in names:
                image = os.path.join(self.src, "images", name + ".jpg")
                mat = os.path.join(self.src, "annotations", name + ".mat")
                units.append(Unit(f"{split}/{name}", convert_10k, {
                    "image": image, "mat": mat, "link": self.link,
                    "image_dst": os.path.join(self.dst, "images", folder, name + ".jpg"),
                    "mask_dst": os.path.join(self.dst, "annotations", folder, name + "_labelTrainIds.png")},
                    [image, mat]))
        if not units:
            raise DataError(f"coco_stuff10k: {os.path.join(self.src, 'imageLists')}/train.txt and test.txt list "
                            f"no image")
        return units
