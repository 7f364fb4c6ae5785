"""What the retinal-vessel converters (DRIVE, STARE, HRF, CHASE_DB1) share: one unit turns one archive member
into one PNG, either the image (BGR, unchanged) or MMSeg's binary vessel label (1 = vessel, 0 = background).

They all write MMSeg's layout::

    images/{training,validation}/NAME.png
    annotations/{training,validation}/NAME<label suffix>.png
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Tuple

from rayseg.datasets.converters._members import read_color, vessel_mask, zip_files
from rayseg.datasets.converters.base import Unit, write_image
from rayseg.errors import DataError


def convert_member(archive: str, member: str, out: str, label: bool) -> List[str]:
    """Unit: decode ``member`` of ``archive`` and write it to ``out`` as PNG (the vessel mask if ``label``)."""
    img = read_color(archive, member)
    return [write_image(out, vessel_mask(img) if label else img)]


def member_unit(src: str, archive: str, member: str, out: str, label: bool) -> Unit:
    """The Unit converting one member; its key is ``archive-name/member``, unique within a conversion."""
    key = f"{os.path.relpath(archive, src)}/{member}"
    return Unit(key=key, fn=convert_member, kwargs=dict(archive=archive, member=member, out=out, label=label),
                inputs=[f"{archive}!{member}"])


def out_path(dst: str, label: bool, split: str, name: str) -> str:
    """``dst/images/split/name`` or ``dst/annotations/split/name``."""
    return os.path.join(dst, "annotations" if label else "images", split, name)


def sorted_split(members: Iterable[str], training_len: int) -> Dict[str, str]:
    """MMSeg's rule for STARE, HRF and CHASE_DB1: the first ``training_len`` files in sorted file-name order
    are training, the rest validation. Returns member → split."""
    from rayseg.datasets.converters._members import basename

    ordered = sorted(members, key=basename)
    return {m: ("training" if i < training_len else "validation") for i, m in enumerate(ordered)}


def expect_count(path: str, members: List[str], expected: int, what: str) -> None:
    """MMSeg asserts each archive holds the whole dataset (its split is positional): same check, clearer."""
    if len(members) != expected:
        raise DataError(f"{path} holds {len(members)} {what}, expected {expected} (the complete official "
                        f"archive; MMSeg's train/validation split is by position in sorted order)")


def zip_images(path: str, suffixes: Tuple[str, ...]) -> List[str]:
    """File members of zip ``path`` whose name ends with one of ``suffixes`` (case-insensitive)."""
    return [m for m in zip_files(path) if m.lower().endswith(suffixes)]
