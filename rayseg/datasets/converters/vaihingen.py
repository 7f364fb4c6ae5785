"""ISPRS Vaihingen: ``ISPRS_semantic_labeling_Vaihingen.zip`` and
``ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip`` (or ``…_ground_truth_COMPLETE.zip``)
→ PNG patches, as MMSeg's ``tools/dataset_converters/vaihingen.py``.

Tile ``top/top_mosaic_09cm_area1.tif`` (id ``area1``) → ``img_dir/train/area1_{x0}_{y0}_{x1}_{y1}.png``; its
label ``top_mosaic_09cm_area1_noBoundary.tif`` → ``ann_dir/train/…`` with class ids (see ``_isprs``). Areas
in MMSeg's list of 16 training areas are ``train``, every other one ``val``; the ground truth of area 9 (no
image) is skipped, as MMSeg does. With the defaults this gives MMSeg's 344 training and 398 validation patches.
"""
from __future__ import annotations

from typing import List

from rayseg.datasets.converters._isprs import IsprsConverter
from rayseg.datasets.converters._members import basename
from rayseg.datasets.converters.base import CONVERTERS

TRAIN = ("area1", "area11", "area13", "area15", "area17", "area21", "area23", "area26", "area28", "area3", "area30",
         "area32", "area34", "area37", "area5", "area7")
VAL = ("area6", "area24", "area35", "area16", "area14", "area22", "area10", "area4", "area2", "area20", "area8",
       "area31", "area33", "area27", "area38", "area12", "area29")
UNUSED = ("area9",)


def _tiles(names: List[str]) -> List[str]:
    return [n for n in names if n.lower().endswith(".tif") and basename(n).startswith("top_mosaic_")]


@CONVERTERS.register("vaihingen")
class VaihingenConverter(IsprsConverter):
    """ISPRS Vaihingen: SRC/ISPRS_semantic_labeling_Vaihingen.zip + eroded ground truth → 512×512 patches.

    Options (MMSeg's): ``clip_size`` (512), ``stride_size`` (256); ``labels`` picks the ground truth
    (``auto``, ``no_boundary`` = the eroded one MMSeg requires, ``full`` = COMPLETE; see ``IsprsConverter``).
    """

    IMAGE_ZIP = "ISPRS_semantic_labeling_Vaihingen.zip"
    LABEL_ZIPS = {"no_boundary": "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip",
                  "full": "ISPRS_semantic_labeling_Vaihingen_ground_truth_COMPLETE.zip"}
    TRAIN = TRAIN

    def image_members(self, names: List[str]) -> List[str]:
        # the images are the tiles in top/ (the archive also holds other folders, e.g. the DSMs)
        return [n for n in _tiles(names) if n.split("/")[-2:-1] == ["top"]]

    def label_members(self, names: List[str]) -> List[str]:
        return [n for n in _tiles(names) if self.tile_id(n) not in UNUSED]

    def tile_id(self, member: str) -> str:
        return basename(member).split("_")[3].split(".")[0]  # top_mosaic_09cm_area1[_noBoundary].tif → area1
