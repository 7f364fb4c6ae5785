"""Aerial / remote-sensing datasets: LoveDA, ISPRS Potsdam and Vaihingen, iSAID.

Layout after ``jobs/convert_dataset.py {loveda,potsdam,vaihingen,isaid}`` (MMSeg's
``tools/convert_datasets``; Potsdam, Vaihingen and iSAID are cut into overlapping patches), relative to
``data/loveDA``, ``data/potsdam``, ``data/vaihingen`` or ``data/iSAID``::

    img_dir/{train,val}/xxx.png   ann_dir/{train,val}/xxx<seg_map_suffix>
"""
from __future__ import annotations

from rayseg.datasets.custom import CustomDataset
from rayseg.registry import DATASETS


@DATASETS.register()
class LoveDADataset(CustomDataset):
    """LoveDA, 7 classes. Mask value 0 is no-data and ignored (``reduce_zero_label`` True): 1–7 → 0–6."""

    CLASSES = ("background", "building", "road", "water", "barren", "forest", "agricultural")
    PALETTE = [[255, 255, 255], [255, 0, 0], [255, 255, 0], [0, 0, 255], [159, 129, 183], [0, 255, 0],
               [255, 195, 128]]
    IMG_SUFFIX = ".png"
    SEG_MAP_SUFFIX = ".png"
    REDUCE_ZERO_LABEL = True


@DATASETS.register()
class ISPRSDataset(CustomDataset):
    """ISPRS Vaihingen, 6 classes. The converter writes 0 for the boundary / unknown colour and 1–6 for the
    classes, so ``reduce_zero_label`` is True (0 ignored, 1–6 → 0–5)."""

    CLASSES = ("impervious_surface", "building", "low_vegetation", "tree", "car", "clutter")
    PALETTE = [[255, 255, 255], [0, 0, 255], [0, 255, 255], [0, 255, 0], [255, 255, 0], [255, 0, 0]]
    IMG_SUFFIX = ".png"
    SEG_MAP_SUFFIX = ".png"
    REDUCE_ZERO_LABEL = True


@DATASETS.register()
class PotsdamDataset(ISPRSDataset):
    """ISPRS Potsdam: the same 6 classes and label convention as Vaihingen (``ISPRSDataset``)."""


@DATASETS.register()
class iSAIDDataset(CustomDataset):  # noqa: N801  (MMSeg's class name, used as the config ``type``)
    """iSAID, 16 classes including ``background`` (mask value 0 is a class: ``reduce_zero_label`` False).

    Patches ``P0000_0_896_0_896.png`` pair with ``P0000_0_896_0_896_instance_color_RGB.png`` (the converter
    turns the colour masks into class indices, keeping MMSeg's file names).
    """

    CLASSES = ("background", "ship", "store_tank", "baseball_diamond", "tennis_court", "basketball_court",
               "Ground_Track_Field", "Bridge", "Large_Vehicle", "Small_Vehicle", "Helicopter", "Swimming_pool",
               "Roundabout", "Soccer_ball_field", "plane", "Harbor")
    PALETTE = [[0, 0, 0], [0, 0, 63], [0, 63, 63], [0, 63, 0], [0, 63, 127], [0, 63, 191], [0, 63, 255],
               [0, 127, 63], [0, 127, 127], [0, 0, 127], [0, 0, 191], [0, 0, 255], [0, 191, 127], [0, 127, 191],
               [0, 127, 255], [0, 100, 155]]
    IMG_SUFFIX = ".png"
    SEG_MAP_SUFFIX = "_instance_color_RGB.png"
    REDUCE_ZERO_LABEL = False
    IGNORE_INDEX = 255
