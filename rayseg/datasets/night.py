"""Night-time test sets with Cityscapes' 19 classes: Dark Zurich and Nighttime Driving.

MMSeg evaluates Cityscapes-trained models on them (``configs/pspnet/*_dark.py``, ``*_night_driving.py``);
they are used as ``data.test`` only. Both come in their official layouts, no conversion needed::

    data/dark_zurich/rgb_anon/val/night/GOPR0356/xxx_rgb_anon.png
    data/dark_zurich/gt/val/night/GOPR0356/xxx_gt_labelTrainIds.png
    data/NighttimeDrivingTest/leftImg8bit/test/night/xxx_leftImg8bit.png
    data/NighttimeDrivingTest/gtCoarse_daytime_trainvaltest/test/night/xxx_gtCoarse_labelTrainIds.png
"""
from __future__ import annotations

from rayseg.datasets.cityscapes import CityscapesDataset
from rayseg.registry import DATASETS


@DATASETS.register()
class DarkZurichDataset(CityscapesDataset):
    """Dark Zurich (night, validation set): Cityscapes classes and palette, train ids 0–18, 255 ignored."""

    IMG_SUFFIX = "_rgb_anon.png"
    SEG_MAP_SUFFIX = "_gt_labelTrainIds.png"


@DATASETS.register()
class NightDrivingDataset(CityscapesDataset):
    """Nighttime Driving test set: Cityscapes classes, coarse train-id masks, 255 ignored."""

    IMG_SUFFIX = "_leftImg8bit.png"
    SEG_MAP_SUFFIX = "_gtCoarse_labelTrainIds.png"
