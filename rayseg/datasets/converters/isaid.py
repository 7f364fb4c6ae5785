"""iSAID: DOTA-v1.0 images and iSAID semantic masks (zips per split) → overlapping PNG patches, as MMSeg's
``tools/dataset_converters/isaid.py``.

Source layout (MMSeg's guide)::

    SRC/train/images/part1.zip …          SRC/train/Semantic_masks/images.zip
    SRC/val/images/part1.zip …            SRC/val/Semantic_masks/images.zip
    SRC/test/images/part1.zip …           (optional: test images are copied whole)

``P0000.png`` → ``img_dir/train/P0000_{y0}_{y1}_{x0}_{x1}.png``; ``P0000_instance_color_RGB.png`` →
``ann_dir/train/P0000_{y0}_{y1}_{x0}_{x1}_instance_color_RGB.png`` with class ids 0–15 (colour table below);
a side shorter than the patch is padded at the bottom/right (images with 0, labels with 255 = ignore).
Patches start every ``patch - overlap_area`` pixels, the last one pulled back to end at the edge.
"""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

import numpy as np

from rayseg.datasets.converters._isprs import positive_int
from rayseg.datasets.converters._members import basename, read_color, read_member, zip_files
from rayseg.datasets.converters.base import CONVERTERS, Converter, Unit, write_bytes, write_image
from rayseg.errors import ConfigError, DataError

# MMSeg's iSAID_palette: RGB colour → class id (0 background, 1 ship, 2 storage tank, 3 baseball diamond,
# 4 tennis court, 5 basketball court, 6 ground track field, 7 bridge, 8 large vehicle, 9 small vehicle,
# 10 helicopter, 11 swimming pool, 12 roundabout, 13 soccer ball field, 14 plane, 15 harbor).
PALETTE_RGB = ((0, 0, 0), (0, 0, 63), (0, 63, 63), (0, 63, 0), (0, 63, 127), (0, 63, 191), (0, 63, 255),
               (0, 127, 63), (0, 127, 127), (0, 0, 127), (0, 0, 191), (0, 0, 255), (0, 191, 127), (0, 127, 191),
               (0, 127, 255), (0, 100, 155))
LABEL_SUFFIX = "_instance_color_RGB.png"
SPLITS = ("train", "val", "test")


def color_to_label(bgr: np.ndarray) -> np.ndarray:
    """Class ids from an iSAID colour mask (read as BGR); colours outside the palette become 0, as in MMSeg."""
    rgb = bgr[..., ::-1].astype(np.uint32)
    code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    out = np.zeros(bgr.shape[:2], dtype=np.uint8)
    for idx, (r, g, b) in enumerate(PALETTE_RGB):
        out[code == ((r << 16) | (g << 8) | b)] = idx
    return out


def pad_to(array: np.ndarray, patch_h: int, patch_w: int, value: int) -> np.ndarray:
    """Pad at the bottom/right so each side is at least the patch size (``mmcv.impad`` as MMSeg uses it)."""
    h, w = array.shape[:2]
    if h >= patch_h and w >= patch_w:
        return array
    pad = [(0, max(0, patch_h - h)), (0, max(0, patch_w - w))] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad, constant_values=value)


def slide_boxes(h: int, w: int, patch_h: int, patch_w: int, overlap: int) -> List[Tuple[int, int, int, int]]:
    """MMSeg's sliding window ``(y0, y1, x0, x1)`` over an (already padded) ``h``×``w`` image, without repeats
    (MMSeg writes a repeated last window twice under one name)."""
    boxes: Dict[Tuple[int, int, int, int], None] = {}
    for x in range(0, w, patch_w - overlap):
        for y in range(0, h, patch_h - overlap):
            x0, y0 = min(x, w - patch_w), min(y, h - patch_h)
            boxes[(y0, y0 + patch_h, x0, x0 + patch_w)] = None
    return list(boxes)


def crop(archive: str, member: str, out_dir: str, patch_h: int, patch_w: int, overlap: int,
         label: bool) -> List[str]:
    """Unit: read one image or colour mask from ``archive`` and write its patches to ``out_dir``."""
    image = read_color(archive, member)
    name = basename(member).split(".")[0]  # P0000 (images), P0000_instance_color_RGB (masks)
    if label:
        image, name, suffix, fill = color_to_label(image), name.split("_")[0], LABEL_SUFFIX, 255
    else:
        suffix, fill = ".png", 0
    image = pad_to(image, patch_h, patch_w, fill)
    h, w = image.shape[:2]
    return [write_image(os.path.join(out_dir, f"{name}_{y0}_{y1}_{x0}_{x1}{suffix}"), image[y0:y1, x0:x1])
            for y0, y1, x0, x1 in slide_boxes(h, w, patch_h, patch_w, overlap)]


def copy_member(archive: str, member: str, out: str) -> List[str]:
    """Unit: copy a test image as it is (MMSeg moves the test images without cropping them)."""
    return [write_bytes(out, read_member(archive, member))]


@CONVERTERS.register("isaid")
class IsaidConverter(Converter):
    """iSAID: SRC/{train,val,test}/images/*.zip + {train,val}/Semantic_masks/*.zip → 896×896 patches.

    Options (MMSeg's): ``patch_width`` (896), ``patch_height`` (896), ``overlap_area`` (384).
    """

    def __init__(self, src: str, dst: str, patch_width: int = 896, patch_height: int = 896,
                 overlap_area: int = 384):
        super().__init__(src, dst)
        self.patch_w = positive_int(patch_width, "patch_width")
        self.patch_h = positive_int(patch_height, "patch_height")
        try:
            self.overlap = int(overlap_area)
        except (TypeError, ValueError):
            raise ConfigError(f"option overlap_area={overlap_area!r}: expected an integer") from None
        if not 0 <= self.overlap < min(self.patch_w, self.patch_h):
            raise ConfigError(f"option overlap_area={overlap_area}: must be >= 0 and smaller than the patch "
                              f"({self.patch_w}×{self.patch_h})")

    def _zips(self, split: str, folder: str) -> List[str]:
        where = os.path.join(self.src, split, folder)
        if not os.path.isdir(where):
            return []
        return sorted(os.path.join(where, n) for n in os.listdir(where) if n.lower().endswith(".zip"))

    def _plan(self) -> List[Tuple[str, str, str, str]]:
        """(split, kind, archive, member) with kind 'image', 'label' or 'copy'."""
        plan = []
        for split in SPLITS:
            for archive in self._zips(split, "images"):
                for member in zip_files(archive):
                    if member.lower().endswith(".png") and not member.endswith(LABEL_SUFFIX):
                        plan.append((split, "copy" if split == "test" else "image", archive, member))
            if split != "test":
                for archive in self._zips(split, "Semantic_masks"):
                    plan += [(split, "label", archive, m) for m in zip_files(archive) if m.endswith(LABEL_SUFFIX)]
        return plan

    def check_source(self) -> None:
        super().check_source()
        plan = self._plan()
        for split in ("train", "val"):
            for kind, folder in (("image", "images"), ("label", "Semantic_masks")):
                if not any(s == split and k == kind for s, k, _, _ in plan):
                    raise DataError(f"no iSAID {kind}s found in {os.path.join(self.src, split, folder)}/*.zip "
                                    f"(expected {'*.png' if kind == 'image' else '*' + LABEL_SUFFIX} inside)")

    def units(self) -> List[Unit]:
        units = []
        for split, kind, archive, member in self._plan():
            key = f"{os.path.relpath(archive, self.src)}/{member}"
            if kind == "copy":
                fn, kwargs = copy_member, dict(archive=archive, member=member,
                                               out=os.path.join(self.dst, "img_dir", split, basename(member)))
            else:
                out_dir = os.path.join(self.dst, "ann_dir" if kind == "label" else "img_dir", split)
                fn, kwargs = crop, dict(archive=archive, member=member, out_dir=out_dir, patch_h=self.patch_h,
                                        patch_w=self.patch_w, overlap=self.overlap, label=kind == "label")
            units.append(Unit(key=key, fn=fn, kwargs=kwargs, inputs=[f"{archive}!{member}"]))
        return units
