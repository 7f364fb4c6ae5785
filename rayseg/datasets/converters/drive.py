"""DRIVE: ``training.zip`` and ``test.zip`` (TIFF images, GIF manual annotations) → MMSeg's PNG layout.

As MMSeg's ``tools/dataset_converters/drive.py``: ``training/images/21_training.tif`` →
``images/training/21.png``; ``training/1st_manual/21_manual1.gif`` → ``annotations/training/21_manual1.png``;
``test/images/01_test.tif`` → ``images/validation/01.png``; ``test/1st_manual`` (and ``2nd_manual``, when the
archive has them: the official test.zip has no manual annotations) → ``annotations/validation``. Labels are
1 where the annotation is >= 128, else 0.
"""
from __future__ import annotations

from typing import List

from rayseg.datasets.converters._members import archive_path, stem, zip_files
from rayseg.datasets.converters._vessels import member_unit, out_path
from rayseg.datasets.converters.base import CONVERTERS, Converter, Unit
from rayseg.errors import DataError

# archive, the folder inside it, the split it becomes, the suffix MMSeg drops from image names
PARTS = (("training.zip", "training", "training", "_training"),
         ("test.zip", "test", "validation", "_test"))
# folders per part as MMSeg reads them (training has only the 1st manual annotation)
FOLDERS = {"training": ("images", "1st_manual"), "test": ("images", "1st_manual", "2nd_manual")}


@CONVERTERS.register("drive")
class DriveConverter(Converter):
    """DRIVE retinal vessels: SRC/training.zip + test.zip (TIFF, GIF) → images/, annotations/ PNG."""

    def _members(self, archive: str, part: str) -> List[tuple]:
        """(member, folder) for the files under ``<part>/<folder>/`` (at any depth: some copies of the
        archives nest everything in one more folder)."""
        found = []
        for member in zip_files(archive):
            pieces = member.split("/")
            if len(pieces) >= 3 and pieces[-3] == part and pieces[-2] in FOLDERS[part]:
                found.append((member, pieces[-2]))
        return found

    def check_source(self) -> None:
        super().check_source()
        for name, part, _, _ in PARTS:
            path = archive_path(self.src, name)
            if not any(folder == "images" for _, folder in self._members(path, part)):
                raise DataError(f"{path} has no images under {part}/images/: not DRIVE's official {name}")

    def units(self) -> List[Unit]:
        units = []
        for name, part, split, drop in PARTS:
            path = archive_path(self.src, name)
            for member, folder in self._members(path, part):
                label = folder != "images"
                file = stem(member) if label else stem(member).replace(drop, "")
                units.append(member_unit(self.src, path, member, out_path(self.dst, label, split, f"{file}.png"),
                                         label))
        return units
