"""What the two COCO-Stuff converters share: MMSeg's clsID_to_trID tables and the label-map unit."""
from __future__ import annotations

from typing import Dict, Iterable, List

import numpy as np

from rayseg.datasets.converters.base import read_image, write_image
from rayseg.errors import DataError


def train_id_table(last_id: int, removed: Iterable[int], keep: Iterable[int] = ()) -> Dict[int, int]:
    """MMSeg's ``clsID_to_trID``: ids ``0..last_id`` except ``removed`` (the 11 COCO thing ids the 2017
    release dropped, which no annotation uses) numbered consecutively from 0; ``keep`` ids map to
    themselves."""
    removed = set(removed)
    table = {cls: train for train, cls in enumerate(c for c in range(last_id + 1) if c not in removed)}
    table.update({k: k for k in keep})
    return table


def lookup(table: Dict[int, int]) -> np.ndarray:
    """The 256-entry lookup of ``table``. MMSeg leaves ids outside its table as they are; none occurs in the
    official data, and one that does would alias a real class, so here it becomes 255 (ignored)."""
    lut = np.full(256, 255, np.uint8)
    for cls, train in table.items():
        lut[cls] = train
    return lut


def map_label_array(labels: np.ndarray, lut: np.ndarray, src: str, dst: str) -> List[str]:
    if labels.ndim != 2 or labels.size == 0:
        raise DataError(f"{src}: expected a 2-D label map, got shape {labels.shape}")
    if labels.min() < 0 or labels.max() > 255:
        raise DataError(f"{src}: label ids outside 0..255 (min {labels.min()}, max {labels.max()})")
    return [write_image(dst, lut[labels.astype(np.uint8)])]


def map_label_png(src: str, dst: str, lut: np.ndarray) -> List[str]:
    """One COCO-Stuff 164k ``stuffthingmaps`` PNG → ``*_labelTrainIds.png``."""
    return map_label_array(read_image(src), lut, src, dst)
