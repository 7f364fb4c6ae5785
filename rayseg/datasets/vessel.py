"""Retinal vessel datasets (binary: background / vessel): CHASE_DB1, DRIVE, HRF and STARE.

Layout after ``jobs/convert_dataset.py {chase_db1,drive,hrf,stare}`` (MMSeg's ``tools/convert_datasets``),
relative to ``data/<NAME>``::

    images/{training,validation}/xxx.png   annotations/{training,validation}/xxx<seg_map_suffix>

Masks hold 0 = background and 1 = vessel (the converters divide the 0/255 drawings by 128). MMSeg reports
these datasets with Dice (``evaluation.metric: mDice`` in their configs).
"""
from __future__ import annotations

from rayseg.datasets.custom import CustomDataset
from rayseg.registry import DATASETS


class _VesselDataset(CustomDataset):
    """Shared class names and palette (MMSeg's); not registered itself."""

    CLASSES = ("background", "vessel")
    PALETTE = [[120, 120, 120], [6, 230, 230]]
    IMG_SUFFIX = ".png"
    REDUCE_ZERO_LABEL = False


@DATASETS.register()
class ChaseDB1Dataset(_VesselDataset):
    """CHASE_DB1: ``Image_01L.png`` with the first observer's mask ``Image_01L_1stHO.png``."""

    SEG_MAP_SUFFIX = "_1stHO.png"


@DATASETS.register()
class DRIVEDataset(_VesselDataset):
    """DRIVE: ``21.png`` with the first manual segmentation ``21_manual1.png``."""

    SEG_MAP_SUFFIX = "_manual1.png"


@DATASETS.register()
class HRFDataset(_VesselDataset):
    """HRF (High-Resolution Fundus): ``01_h.png`` with the mask of the same name."""

    SEG_MAP_SUFFIX = ".png"


@DATASETS.register()
class STAREDataset(_VesselDataset):
    """STARE: ``im0001.png`` with Adam Hoover's labelling ``im0001.ah.png``."""

    SEG_MAP_SUFFIX = ".ah.png"
