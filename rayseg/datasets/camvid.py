"""CamVid (11 classes, as distributed with the SegNet tutorial) in MMSeg's custom layout."""
from __future__ import annotations

from rayseg.datasets.custom import CustomDataset
from rayseg.registry import DATASETS


@DATASETS.register()
class CamVidDataset(CustomDataset):
    """CamVid with SegNet's 11 classes; mask value 11 (void) is mapped to 255 (ignored).

    Layout: ``img_dir/{train,val}/*.png`` (RGB) and ``ann_dir/{train,val}/*.png`` (8-bit labels 0–11).
    A user ``label_map`` is merged over ``LABEL_MAP`` ``{11: 255}``.
    """

    CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
               "Pedestrian", "Bicyclist")
    # SegNet tutorial colours (RGB), in class order.
    PALETTE = [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0],
               [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]]
    IMG_SUFFIX = ".png"
    SEG_MAP_SUFFIX = ".png"
    LABEL_MAP = {11: 255}  # void
