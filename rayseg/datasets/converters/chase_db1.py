"""CHASE_DB1: ``CHASEDB1.zip`` (28 ``.jpg`` images, ``_1stHO.png`` and ``_2ndHO.png`` annotations) → PNG.

As MMSeg's ``tools/dataset_converters/chase_db1.py``: of the 84 files in sorted order the first 60 (the
images of 20 eyes with both annotations) are training, the other 24 validation. ``Image_01L.jpg`` →
``images/training/Image_01L.png``, ``Image_01L_1stHO.png`` → ``annotations/training/Image_01L_1stHO.png``
(the dataset class reads ``_1stHO.png``; ``_2ndHO.png`` is written too, as MMSeg does). Labels are 1 where
the annotation is >= 128.
"""
from __future__ import annotations

from typing import List

from rayseg.datasets.converters._members import archive_path, stem
from rayseg.datasets.converters._vessels import expect_count, member_unit, out_path, sorted_split, zip_images
from rayseg.datasets.converters.base import CONVERTERS, Converter, Unit

CHASE_DB1_LEN = 28 * 3
TRAINING_LEN = 60
ARCHIVE = "CHASEDB1.zip"


def _members(path: str) -> List[str]:
    return zip_images(path, (".jpg", ".png"))


@CONVERTERS.register("chase_db1")
class ChaseDb1Converter(Converter):
    """CHASE_DB1 retinal vessels: SRC/CHASEDB1.zip → PNG, 20 training / 8 validation images."""

    def check_source(self) -> None:
        super().check_source()
        path = archive_path(self.src, ARCHIVE)
        expect_count(path, _members(path), CHASE_DB1_LEN, ".jpg/.png files")

    def units(self) -> List[Unit]:
        path = archive_path(self.src, ARCHIVE)
        units = []
        for member, split in sorted_split(_members(path), TRAINING_LEN).items():
            label = not member.lower().endswith(".jpg")  # MMSeg: .jpg is an image, anything else a label
            units.append(member_unit(self.src, path, member, out_path(self.dst, label, split, f"{stem(member)}.png"),
                                     label))
        return units
