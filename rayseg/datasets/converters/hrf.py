"""HRF: ``healthy.zip``, ``glaucoma.zip``, ``diabetic_retinopathy.zip`` and their ``*_manualsegm.zip`` → PNG.

As MMSeg's ``tools/dataset_converters/hrf.py``: each zip holds 15 files (images ``01_h.jpg``, …; manual
segmentations ``01_h.tif``, …); per zip the first 5 in sorted order are training, the other 10 validation.
``01_h.jpg`` → ``images/training/01_h.png``, ``01_h.tif`` → ``annotations/training/01_h.png``. Labels are 1
where the segmentation is >= 128.
"""
from __future__ import annotations

from typing import List

from rayseg.datasets.converters._members import archive_path, stem
from rayseg.datasets.converters._vessels import expect_count, member_unit, out_path, sorted_split, zip_images
from rayseg.datasets.converters.base import CONVERTERS, Converter, Unit

HRF_LEN = 15
TRAINING_LEN = 5
GROUPS = ("healthy", "glaucoma", "diabetic_retinopathy")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".ppm")


def _archives():
    """(zip name, is label) for the six official zips."""
    for group in GROUPS:
        yield f"{group}.zip", False
        yield f"{group}_manualsegm.zip", True


@CONVERTERS.register("hrf")
class HrfConverter(Converter):
    """HRF retinal vessels: SRC/{healthy,glaucoma,diabetic_retinopathy}[_manualsegm].zip → PNG, 5/10 per zip."""

    def check_source(self) -> None:
        super().check_source()
        for name, _ in _archives():
            path = archive_path(self.src, name)
            expect_count(path, zip_images(path, IMAGE_SUFFIXES), HRF_LEN, "image files")

    def units(self) -> List[Unit]:
        units = []
        for name, label in _archives():
            path = archive_path(self.src, name)
            for member, split in sorted_split(zip_images(path, IMAGE_SUFFIXES), TRAINING_LEN).items():
                units.append(member_unit(self.src, path, member,
                                         out_path(self.dst, label, split, f"{stem(member)}.png"), label))
        return units
