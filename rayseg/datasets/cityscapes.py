"""Cityscapes (19 train classes) in its own layout: ``leftImg8bit/<split>/<city>/*`` and ``gtFine/...``."""
from __future__ import annotations

from rayseg.datasets.custom import CustomDataset
from rayseg.registry import DATASETS


@DATASETS.register()
class CityscapesDataset(CustomDataset):
    """Cityscapes with the 19 evaluation classes (MMSeg's CLASSES and PALETTE).

    Images are ``xxx_leftImg8bit.png``; masks are ``xxx_gtFine_labelTrainIds.png`` (train ids 0–18, 255
    ignored), as written by cityscapesscripts' ``createTrainIdLabelImgs`` / MMSeg's ``tools/convert_datasets``.
    Files are found recursively, so the per-city sub-folders need no listing.
    """

    CLASSES = ("road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
               "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
               "bicycle")
    PALETTE = [[128, 64, 128], [244, 35, 232], [70, 70, 70], [102, 102, 156], [190, 153, 153], [153, 153, 153],
               [250, 170, 30], [220, 220, 0], [107, 142, 35], [152, 251, 152], [70, 130, 180], [220, 20, 60],
               [255, 0, 0], [0, 0, 142], [0, 0, 70], [0, 60, 100], [0, 80, 100], [0, 0, 230], [119, 11, 32]]
    IMG_SUFFIX = "_leftImg8bit.png"
    SEG_MAP_SUFFIX = "_gtFine_labelTrainIds.png"
