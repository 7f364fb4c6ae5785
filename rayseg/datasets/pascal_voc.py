"""Pascal VOC 2012 (21 classes incl. background), optionally with the SBD "aug" annotations."""
from __future__ import annotations

from rayseg.datasets.custom import CustomDataset
from rayseg.registry import DATASETS


@DATASETS.register()
class PascalVOCDataset(CustomDataset):
    """Pascal VOC 2012: ``JPEGImages/*.jpg`` with ``SegmentationClass/*.png`` masks, listed by a split file.

    A split is required (as in MMSeg). ``ann_dir`` and ``split`` may also be equal-length lists — MMSeg's
    ``pascal_voc12_aug`` writes ``ann_dir: [SegmentationClass, SegmentationClassAug]`` with
    ``split: [train.txt, aug.txt]`` and gets a concatenation of the two (CustomDataset does that).
    """

    CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
    PALETTE = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128], [0, 128, 128],
               [128, 128, 128], [64, 0, 0], [192, 0, 0], [64, 128, 0], [192, 128, 0], [64, 0, 128],
               [192, 0, 128], [64, 128, 128], [192, 128, 128], [0, 64, 0], [128, 64, 0], [0, 192, 0],
               [128, 192, 0], [0, 64, 128]]

    IMG_SUFFIX = ".jpg"
    SEG_MAP_SUFFIX = ".png"
    REQUIRES_SPLIT = True
