"""STARE: ``stare-images.tar``, ``labels-ah.tar`` and ``labels-vk.tar`` (gzipped PPM files) → MMSeg's PNG layout.

As MMSeg's ``tools/dataset_converters/stare.py``: each tar holds the 20 images (``im0001.ppm.gz``, …) or their
annotations by one observer (``im0001.ah.ppm.gz``, ``im0001.vk.ppm.gz``); in sorted order the first 10 are
training, the other 10 validation. ``im0001.ppm.gz`` → ``images/training/im0001.png``,
``im0001.ah.ppm.gz`` → ``annotations/training/im0001.ah.png`` (the dataset class reads ``.ah.png``; the
``.vk.png`` annotations are written too, as MMSeg does). Labels are 1 where the annotation is >= 128.
"""
from __future__ import annotations

from typing import List

from rayseg.datasets.converters._members import archive_path, stem, tar_files
from rayseg.datasets.converters._vessels import expect_count, member_unit, out_path, sorted_split
from rayseg.datasets.converters.base import CONVERTERS, Converter, Unit

STARE_LEN = 20
TRAINING_LEN = 10
ARCHIVES = (("stare-images.tar", False), ("labels-ah.tar", True), ("labels-vk.tar", True))


def _ppm_gz(path: str) -> List[str]:
    return [m for m in tar_files(path) if m.lower().endswith(".ppm.gz")]


@CONVERTERS.register("stare")
class StareConverter(Converter):
    """STARE retinal vessels: SRC/stare-images.tar, labels-ah.tar, labels-vk.tar (.ppm.gz) → PNG, 10/10 split."""

    def check_source(self) -> None:
        super().check_source()
        for name, _ in ARCHIVES:
            path = archive_path(self.src, name)
            expect_count(path, _ppm_gz(path), STARE_LEN, ".ppm.gz files")

    def units(self) -> List[Unit]:
        units = []
        for name, label in ARCHIVES:
            path = archive_path(self.src, name)
            for member, split in sorted_split(_ppm_gz(path), TRAINING_LEN).items():
                # im0001.ah.ppm.gz → im0001.ah.ppm → im0001.ah (MMSeg strips .gz, then .ppm)
                file = stem(stem(member))
                units.append(member_unit(self.src, path, member, out_path(self.dst, label, split, f"{file}.png"),
                                         label))
        return units
