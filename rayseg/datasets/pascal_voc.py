"""Pascal VOC 2012 (21 classes incl. background), optionally with the SBD "aug" annotations."""
from __future__ import annotations

from typing import Dict, List, Optional

from rayseg.datasets.custom import CustomDataset
from rayseg.errors import ConfigError
from rayseg.registry import DATASETS


def _as_list(value, name: str) -> List:
    if isinstance(value, (list, tuple)):
        if not value:
            raise ConfigError(f"PascalVOCDataset: {name} is an empty list")
        return list(value)
    return [value]


@DATASETS.register()
class PascalVOCDataset(CustomDataset):
    """Pascal VOC 2012: ``JPEGImages/*.jpg`` with ``SegmentationClass/*.png`` masks, listed by a split file.

    A split is required (as in MMSeg). ``ann_dir`` and ``split`` may also be equal-length lists — MMSeg's
    ``pascal_voc12_aug`` writes ``ann_dir: [SegmentationClass, SegmentationClassAug]`` with
    ``split: [train.txt, aug.txt]`` and gets a concatenation of the two; this class concatenates the
    sample lists the same way (in the order given, duplicates kept).
    """

    CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
    PALETTE = [[0, 0, 0], [128, 0, 0], [0, 128, 0], [128, 128, 0], [0, 0, 128], [128, 0, 128], [0, 128, 128],
               [128, 128, 128], [64, 0, 0], [192, 0, 0], [64, 128, 0], [192, 128, 0], [64, 0, 128],
               [192, 0, 128], [64, 128, 128], [192, 128, 128], [0, 64, 0], [128, 64, 0], [0, 192, 0],
               [128, 192, 0], [0, 64, 128]]

    def __init__(self, pipeline, data_root=None, img_dir="", ann_dir=None, img_suffix=".jpg",
                 seg_map_suffix=".png", split=None, classes=None, palette=None, label_map=None,
                 reduce_zero_label=False, ignore_index=255, test_mode=False):
        if split is None:
            raise ConfigError("PascalVOCDataset: a split file is required (e.g. ImageSets/Segmentation/train.txt)")
        splits = _as_list(split, "split")
        ann_dirs = _as_list(ann_dir, "ann_dir")
        if len(ann_dirs) == 1 and len(splits) > 1:
            ann_dirs = ann_dirs * len(splits)
        if len(ann_dirs) != len(splits):
            raise ConfigError(f"PascalVOCDataset: ann_dir has {len(ann_dirs)} entries but split has "
                              f"{len(splits)}; give one ann_dir per split file")
        self._parts = list(zip(ann_dirs, splits))
        super().__init__(pipeline=pipeline, data_root=data_root, img_dir=img_dir, ann_dir=ann_dirs[0],
                         img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, split=splits[0], classes=classes,
                         palette=palette, label_map=label_map, reduce_zero_label=reduce_zero_label,
                         ignore_index=ignore_index, test_mode=test_mode)

    def _list_samples(self) -> List[Dict[str, Optional[str]]]:
        """Concatenate the samples of every (ann_dir, split) pair, each listed by CustomDataset."""
        first = (self.ann_dir, self.split)
        samples: List[Dict[str, Optional[str]]] = []
        try:
            for ann_dir, split in self._parts:
                self.ann_dir = self._join(ann_dir) if ann_dir is not None else None
                self.split = self._join(split)
                samples.extend(super()._list_samples())
        finally:
            self.ann_dir, self.split = first
        self.ann_dirs = [self._join(a) if a is not None else None for a, _ in self._parts]
        self.splits = [self._join(s) for _, s in self._parts]
        return samples
