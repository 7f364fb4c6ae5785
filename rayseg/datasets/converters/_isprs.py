"""What the ISPRS converters (Potsdam, Vaihingen) share: MMSeg's clipping of a big tile into patches and its
colour → class-id table. One unit reads one tile (from its zip) and writes all of its patches.

Patches are named ``{tile}_{start_x}_{start_y}_{end_x}_{end_y}.png`` in ``img_dir/{train,val}`` (images,
BGR as read) and ``ann_dir/{train,val}`` (labels, uint8 class ids), as MMSeg writes them.
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np

from rayseg.datasets.converters._members import read_color
from rayseg.datasets.converters.base import Converter, Unit, write_image
from rayseg.errors import ConfigError, DataError

# MMSeg's table, applied (as there) to the B, G, R channels of mmcv.imread's BGR image: index = label id.
# In RGB terms: 0 black (boundary / unknown), 1 impervious surfaces white, 2 building blue, 3 low vegetation
# cyan, 4 tree green, 5 car yellow, 6 clutter red. The dataset classes use reduce_zero_label, so 0 → 255.
COLOR_TABLE_BGR = ((0, 0, 0), (255, 255, 255), (255, 0, 0), (255, 255, 0), (0, 255, 0), (0, 255, 255), (0, 0, 255))
LABEL_CHOICES = ("auto", "no_boundary", "full")


def _code(bgr: np.ndarray) -> np.ndarray:
    """One int per pixel (or colour) identifying its exact (B, G, R) triple."""
    bgr = np.asarray(bgr, dtype=np.uint32)
    return (bgr[..., 0] << 16) | (bgr[..., 1] << 8) | bgr[..., 2]


def color_to_label(bgr: np.ndarray) -> np.ndarray:
    """Class ids from an ISPRS colour label. Colours outside the table become 0, as in MMSeg; unlike MMSeg's
    weighted channel sum (2B+3G+4R), colours are matched exactly, so no odd colour aliases a class."""
    code = _code(bgr)
    out = np.zeros(bgr.shape[:2], dtype=np.uint8)
    for idx, color in enumerate(COLOR_TABLE_BGR):
        out[code == _code(np.array(color))] = idx
    return out


def clip_boxes(h: int, w: int, clip_size: int, stride_size: int) -> List[Tuple[int, int, int, int]]:
    """MMSeg's ``clip_big_image`` boxes ``(start_x, start_y, end_x, end_y)``, without repeats.

    Exactly MMSeg's arithmetic: the stride only sets how many grid positions are tried; the positions
    themselves step by ``clip_size`` and the ones past the edge are pulled back to end at it. So a
    6000×6000 Potsdam tile gives patches starting at 0, 512, …, 5120 and 5488: 12 × 12 = 144. MMSeg writes
    the repeated edge boxes over each other under one name; here each is written once.
    """
    if h < clip_size or w < clip_size:
        raise DataError(f"tile of {w}×{h} pixels is smaller than clip_size={clip_size}")

    def count(n: int) -> int:
        k = math.ceil((n - clip_size) / stride_size)
        return k if k * stride_size + clip_size >= n else k + 1

    boxes: Dict[Tuple[int, int, int, int], None] = {}
    for row in range(count(h) + 1):
        for col in range(count(w) + 1):
            x, y = col * clip_size, row * clip_size
            x += min(0, w - x - clip_size)
            y += min(0, h - y - clip_size)
            boxes[(x, y, min(x + clip_size, w), min(y + clip_size, h))] = None
    return list(boxes)


def clip_tile(archive: str, member: str, out_dir: str, tile: str, clip_size: int, stride_size: int,
              label: bool) -> List[str]:
    """Unit: read one tile from ``archive`` and write its patches (class ids if ``label``) to ``out_dir``."""
    image = read_color(archive, member)
    h, w = image.shape[:2]
    try:
        boxes = clip_boxes(h, w, clip_size, stride_size)
    except DataError as exc:
        raise DataError(f"{archive}!{member}: {exc}") from None
    if label:
        image = color_to_label(image)
    return [write_image(os.path.join(out_dir, f"{tile}_{sx}_{sy}_{ex}_{ey}.png"), image[sy:ey, sx:ex])
            for sx, sy, ex, ey in boxes]


def positive_int(value, name: str) -> int:
    """``value`` (maybe a string from ``--option K=V``) as an int > 0, else ConfigError naming ``name``."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number <= 0 or str(number) != str(value).strip():
        raise ConfigError(f"option {name}={value!r}: expected a positive integer")
    return number


class IsprsConverter(Converter):
    """Base of the ISPRS converters: subclasses say which zip members are tiles and which split each is in.

    ``labels``: which ground truth to read when both are downloaded: ``no_boundary`` (the eroded labels
    whose object boundaries are 0 = ignored, the ones MMSeg requires), ``full``, or ``auto`` (no_boundary if
    that archive is in SRC, else full).
    """

    IMAGE_ZIP = ""
    LABEL_ZIPS: Dict[str, str] = {}  # "no_boundary"/"full" → zip name
    TRAIN: Sequence[str] = ()

    def __init__(self, src: str, dst: str, clip_size: int = 512, stride_size: int = 256, labels: str = "auto"):
        super().__init__(src, dst)
        self.clip_size = positive_int(clip_size, "clip_size")
        self.stride_size = positive_int(stride_size, "stride_size")
        if labels not in LABEL_CHOICES:
            raise ConfigError(f"option labels={labels!r}: expected one of {', '.join(LABEL_CHOICES)}")
        self.labels = labels

    # -- what subclasses define
    def image_members(self, names: List[str]) -> List[str]:
        raise NotImplementedError

    def label_members(self, names: List[str]) -> List[str]:
        raise NotImplementedError

    def tile_id(self, member: str) -> str:
        raise NotImplementedError

    # -- shared
    def label_zip(self) -> str:
        """The label archive chosen by ``labels``; DataError naming what is missing."""
        from rayseg.datasets.converters._members import archive_path

        if self.labels == "auto":
            for kind in ("no_boundary", "full"):
                if os.path.isfile(os.path.join(self.src, self.LABEL_ZIPS[kind])):
                    return os.path.join(self.src, self.LABEL_ZIPS[kind])
            raise DataError(f"no label archive in {self.src}: expected "
                            f"{' or '.join(repr(n) for n in self.LABEL_ZIPS.values())}")
        return archive_path(self.src, self.LABEL_ZIPS[self.labels])

    def _plan(self) -> List[Tuple[str, str, bool]]:
        """(archive, member, is label) for every tile to clip."""
        from rayseg.datasets.converters._members import archive_path, zip_files

        images = archive_path(self.src, self.IMAGE_ZIP)
        labels = self.label_zip()
        plan = [(images, m, False) for m in self.image_members(zip_files(images))]
        plan += [(labels, m, True) for m in self.label_members(zip_files(labels))]
        for archive, kind in ((images, "image"), (labels, "label")):
            if not any(a == archive for a, _, _ in plan):
                raise DataError(f"{archive} holds no {kind} tiles: not the official archive")
        return plan

    def check_source(self) -> None:
        super().check_source()
        self._plan()

    def units(self) -> List[Unit]:
        units = []
        for archive, member, label in self._plan():
            tile = self.tile_id(member)
            split = "train" if tile in self.TRAIN else "val"
            out_dir = os.path.join(self.dst, "ann_dir" if label else "img_dir", split)
            units.append(Unit(key=f"{os.path.basename(archive)}/{member}", fn=clip_tile,
                              kwargs=dict(archive=archive, member=member, out_dir=out_dir, tile=tile,
                                          clip_size=self.clip_size, stride_size=self.stride_size, label=label),
                              inputs=[f"{archive}!{member}"]))
        return units
