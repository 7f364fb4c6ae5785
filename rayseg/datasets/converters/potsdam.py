"""ISPRS Potsdam: ``2_Ortho_RGB.zip`` and ``5_Labels_all_noBoundary.zip`` (or ``5_Labels_all.zip``) of 6000×6000
TIFF tiles → PNG patches, as MMSeg's ``tools/dataset_converters/potsdam.py``.

Tile ``top_potsdam_2_10_RGB.tif`` (id ``2_10``) → ``img_dir/train/2_10_{x0}_{y0}_{x1}_{y1}.png``; its label
``top_potsdam_2_10_label_noBoundary.tif`` → ``ann_dir/train/…`` with class ids (see ``_isprs``). Tiles in
MMSeg's list of 24 training ids are ``train``, every other tile ``val``. With the defaults
(``clip_size=512``, ``stride_size=256``) this gives MMSeg's 3456 training and 2016 validation patches.
"""
from __future__ import annotations

from typing import List

from rayseg.datasets.converters._isprs import IsprsConverter
from rayseg.datasets.converters._members import basename
from rayseg.datasets.converters.base import CONVERTERS

TRAIN = ("2_10", "2_11", "2_12", "3_10", "3_11", "3_12", "4_10", "4_11", "4_12", "5_10", "5_11", "5_12", "6_10",
         "6_11", "6_12", "6_7", "6_8", "6_9", "7_10", "7_11", "7_12", "7_7", "7_8", "7_9")
VAL = ("5_15", "6_15", "6_13", "3_13", "4_14", "6_14", "5_14", "2_13", "4_15", "2_14", "5_13", "4_13", "3_14",
       "7_13")


def _tiles(names: List[str]) -> List[str]:
    return [n for n in names if n.lower().endswith(".tif") and basename(n).startswith("top_potsdam_")]


@CONVERTERS.register("potsdam")
class PotsdamConverter(IsprsConverter):
    """ISPRS Potsdam: SRC/2_Ortho_RGB.zip + 5_Labels_all_noBoundary.zip → 512×512 patches as MMSeg clips them.

    Options (MMSeg's): ``clip_size`` (512), ``stride_size`` (256); ``labels`` picks the label archive
    (``auto``, ``no_boundary``, ``full``; see ``IsprsConverter``).
    """

    IMAGE_ZIP = "2_Ortho_RGB.zip"
    LABEL_ZIPS = {"no_boundary": "5_Labels_all_noBoundary.zip", "full": "5_Labels_all.zip"}
    TRAIN = TRAIN

    def image_members(self, names: List[str]) -> List[str]:
        return [n for n in _tiles(names) if "label" not in basename(n)]

    def label_members(self, names: List[str]) -> List[str]:
        return [n for n in _tiles(names) if "label" in basename(n)]

    def tile_id(self, member: str) -> str:
        return "_".join(basename(member).split("_")[2:4])  # top_potsdam_2_10_RGB.tif → 2_10
