"""LoveDA: ``Train.zip``/``Val.zip``/``Test.zip`` unpacked into ``img_dir``/``ann_dir`` (MMSeg's loveda.py).

Every ``<Split>/{Rural,Urban}/images_png/<n>.png`` of the archives goes to ``img_dir/<split>/<n>.png`` and
every ``masks_png`` file to ``ann_dir/<split>/<n>.png`` (Test has no masks), byte for byte, one unit per
archive member, read straight from the zip (no temporary copy of the archive's contents).
"""
from __future__ import annotations

import os
import re
import zipfile
import zlib
from typing import Dict, List

from rayseg.datasets.converters.base import CONVERTERS, Converter, Unit, check_layout, write_bytes
from rayseg.errors import DataError

ARCHIVES = {"Train.zip": "train", "Val.zip": "val", "Test.zip": "test"}
# the last three parts of a member's path: the region, the kind of file, the file name
MEMBER = re.compile(r"(?:^|/)(Rural|Urban)/(images_png|masks_png)/([^/]+\.png)$")


def extract_member(archive: str, member: str, dst: str) -> List[str]:
    """One archive member, written unchanged to ``dst``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            data = zf.read(member)
    except (OSError, zipfile.BadZipFile, KeyError, RuntimeError, ValueError, zlib.error) as exc:
        # a damaged member fails its CRC check (BadZipFile) or its inflation (zlib.error)
        raise DataError(f"cannot read {member} from {archive}: {exc}") from None
    return [write_bytes(dst, data)]


@CONVERTERS.register("loveda")
class LoveDAConverter(Converter):
    """LoveDA: Train.zip, Val.zip, Test.zip → img_dir/{train,val,test}, ann_dir/{train,val}.

    ``src``: the folder holding the three archives (as downloaded from Zenodo); ``dst``: the dataset root
    to write (MMSeg's default is ``data/loveDA``).
    """

    def check_source(self) -> None:
        check_layout("loveda", self.src, list(ARCHIVES), "download them from https://zenodo.org/record/5706578")

    def units(self) -> List[Unit]:
        units: List[Unit] = []
        targets: Dict[str, str] = {}
        for archive, split in ARCHIVES.items():
            path = os.path.join(self.src, archive)
            try:
                with zipfile.ZipFile(path) as zf:
                    members = sorted(zf.namelist())
            except (OSError, zipfile.BadZipFile) as exc:
                raise DataError(f"loveda: {path} is not a readable zip archive: {exc}") from None
            for member in members:
                found = MEMBER.search(member)
                if found is None:
                    continue
                region, kind, name = found.groups()
                if kind == "masks_png" and split == "test":
                    continue  # the test split's labels are not released; MMSeg skips the folder too
                out = os.path.join(self.dst, "img_dir" if kind == "images_png" else "ann_dir", split, name)
                if out in targets:  # Rural and Urban are numbered apart; a clash would lose a file
                    raise DataError(f"loveda: {path}: {member} and {targets[out]} would both become {out}")
                targets[out] = member
                units.append(Unit(f"{archive}/{member}", extract_member,
                                  {"archive": path, "member": member, "dst": out}, [f"{path}:{member}"]))
        if not units:
            raise DataError(f"loveda: no <Split>/{{Rural,Urban}}/images_png/*.png member in "
                            f"{', '.join(ARCHIVES)} under {self.src}")
        return units
