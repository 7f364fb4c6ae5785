"""Pascal Context (VOC 2010 images with whole-scene labels): 60 classes with background, or 59 without.

Layout after ``jobs/convert_dataset.py pascal_context`` (MMSeg's ``tools/convert_datasets/pascal_context.py``),
relative to ``data/VOCdevkit/VOC2010``::

    JPEGImages/xxx.jpg   SegmentationClassContext/xxx.png   ImageSets/SegmentationContext/{train,val}.txt

The masks hold 0 = background and 1–59 = the 59 object/stuff classes.
"""
from __future__ import annotations

from rayseg.datasets.custom import CustomDataset
from rayseg.registry import DATASETS

# MMSeg 0.x's class names (alphabetical after background) and palette, shared by both variants.
_CLASSES_60 = ("background", "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book",
               "bottle", "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
               "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse",
               "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform", "pottedplant",
               "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa", "table", "track",
               "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood")
_PALETTE_60 = [[120, 120, 120], [180, 120, 120], [6, 230, 230], [80, 50, 50], [4, 200, 3], [120, 120, 80],
               [140, 140, 140], [204, 5, 255], [230, 230, 230], [4, 250, 7], [224, 5, 255], [235, 255, 7],
               [150, 5, 61], [120, 120, 70], [8, 255, 51], [255, 6, 82], [143, 255, 140], [204, 255, 4],
               [255, 51, 7], [204, 70, 3], [0, 102, 200], [61, 230, 250], [255, 6, 51], [11, 102, 255],
               [255, 7, 71], [255, 9, 224], [9, 7, 230], [220, 220, 220], [255, 9, 92], [112, 9, 255],
               [8, 255, 214], [7, 255, 224], [255, 184, 6], [10, 255, 71], [255, 41, 10], [7, 255, 255],
               [224, 255, 8], [102, 8, 255], [255, 61, 6], [255, 194, 7], [255, 122, 8], [0, 255, 20],
               [255, 8, 41], [255, 5, 153], [6, 51, 255], [235, 12, 255], [160, 150, 20], [0, 163, 255],
               [140, 140, 140], [250, 10, 15], [20, 255, 0], [31, 255, 0], [255, 31, 0], [255, 224, 0],
               [153, 255, 0], [0, 0, 255], [255, 71, 0], [0, 235, 255], [0, 173, 255], [31, 0, 255]]


@DATASETS.register()
class PascalContextDataset(CustomDataset):
    """Pascal Context with 60 classes: mask value 0 is the ``background`` class (``reduce_zero_label`` False).

    Images ``.jpg``, masks ``.png``; a split file is required, as in MMSeg.
    """

    CLASSES = _CLASSES_60
    PALETTE = _PALETTE_60
    IMG_SUFFIX = ".jpg"
    SEG_MAP_SUFFIX = ".png"
    REDUCE_ZERO_LABEL = False
    REQUIRES_SPLIT = True


@DATASETS.register()
class PascalContextDataset59(CustomDataset):
    """Pascal Context with 59 classes: background (mask value 0) is ignored and 1–59 become 0–58
    (``reduce_zero_label`` True), the same masks as the 60-class variant. A split file is required."""

    CLASSES = _CLASSES_60[1:]
    PALETTE = _PALETTE_60[1:]
    IMG_SUFFIX = ".jpg"
    SEG_MAP_SUFFIX = ".png"
    REDUCE_ZERO_LABEL = True
    REQUIRES_SPLIT = True
