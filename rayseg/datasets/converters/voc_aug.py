"""Pascal VOC 2012 + SBD ("VOC-aug"): SBD's ``dataset/cls/*.mat`` → ``SegmentationClassAug/*.png`` and split lists.

Does what MMSeg's ``tools/dataset_converters/voc_aug.py`` does: each SBD ``GTcls`` struct's
``Segmentation`` array becomes a PNG of class indices (0 background … 20), and
``ImageSets/Segmentation/trainaug.txt`` (VOC train + SBD train + SBD val, minus VOC val: 10582 names with
the full data) and ``aug.txt`` (SBD train + val minus VOC train and val) are written. The lists are sorted
(MMSeg writes a set's order). When ``dst`` is not ``src``, VOC's own ``JPEGImages``, ``SegmentationClass``
(palette PNGs, read as class indices) and split lists are carried over too, so ``dst/VOC2012`` is the
``data_root`` of ``configs/_base_/datasets/pascal_voc12_aug.yaml``.
"""
from __future__ import annotations

import os
from typing import List

import numpy as np

from rayseg.datasets.converters.base import (CONVERTERS, Converter, Unit, check_layout, copy_file, write_image,
                                             write_text)
from rayseg.errors import DataError

VOC = "VOC2012"
SETS = os.path.join(VOC, "ImageSets", "Segmentation")


def sbd_mat_to_png(src: str, dst: str) -> List[str]:
    """One SBD ``cls/<name>.mat`` (MATLAB struct ``GTcls`` with a ``Segmentation`` H×W array) → PNG."""
    from scipy.io import loadmat

    try:
        data = loadmat(src)
    except Exception as exc:  # noqa: BLE001 - scipy raises several types for a damaged .mat
        raise DataError(f"cannot read {src} as a MATLAB file: {exc}") from None
    try:
        seg = np.asarray(data["GTcls"][0]["Segmentation"][0])
    except (KeyError, IndexError, ValueError, TypeError):
        raise DataError(f"{src} has no GTcls.Segmentation array (not an SBD class annotation; its variables: "
                        f"{', '.join(k for k in data if not k.startswith('__'))})") from None
    if seg.ndim != 2 or seg.size == 0 or seg.min() < 0 or seg.max() > 255:
        raise DataError(f"{src}: GTcls.Segmentation is not a 2-D array of class indices "
                        f"(shape {seg.shape}, dtype {seg.dtype})")
    return [write_image(dst, seg.astype(np.uint8))]


def read_list(path: str) -> List[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


@CONVERTERS.register("voc_aug")
class VOCAugConverter(Converter):
    """Pascal VOC 2012 + SBD: dataset/cls/*.mat → SegmentationClassAug/*.png + aug.txt, trainaug.txt.

    ``src``: the ``VOCdevkit`` folder holding ``VOC2012/`` (VOCtrainval_11-May-2012.tar) and ``aug_dir``
    (SBD's benchmark.tgz, its ``benchmark_RELEASE`` renamed ``VOCaug`` as in MMSeg's guide; or a path
    relative to ``src``, or absolute). ``dst``: the ``VOCdevkit`` to write (``src`` itself works in place).
    ``link``: hard-link the carried-over VOC files instead of copying them.
    """

    def __init__(self, src: str, dst: str, aug_dir: str = "VOCaug", link: bool = False):
        super().__init__(src, dst)
        self.aug = os.path.join(self.src, aug_dir, "dataset")
        self.link = bool(link)

    def check_source(self) -> None:
        check_layout("voc_aug", self.src, [os.path.join(VOC, "JPEGImages"), os.path.join(VOC, "SegmentationClass"),
                                           os.path.join(SETS, "train.txt"), os.path.join(SETS, "val.txt")],
                     "extract VOCtrainval_11-May-2012.tar there")
        check_layout("voc_aug", os.path.dirname(self.aug), [os.path.join("dataset", p) for p in
                                                             ("cls", "train.txt", "val.txt")],
                     "extract SBD's benchmark.tgz and rename benchmark_RELEASE, or pass --option aug_dir=...")

    def units(self) -> List[Unit]:
        cls = os.path.join(self.aug, "cls")
        out = os.path.join(self.dst, VOC, "SegmentationClassAug")
        units = [Unit(f"cls/{name}", sbd_mat_to_png,
                      {"src": os.path.join(cls, name), "dst": os.path.join(out, name[:-4] + ".png")},
                      [os.path.join(cls, name)])
                 for name in sorted(os.listdir(cls)) if name.endswith(".mat")]
        if not units:
            raise DataError(f"voc_aug: {cls} holds no .mat files")
        if self.dst != self.src:
            for sub in ("JPEGImages", "SegmentationClass"):
                folder = os.path.join(self.src, VOC, sub)
                for name in sorted(os.listdir(folder)):
                    path = os.path.join(folder, name)
                    rel = os.path.relpath(path, self.src)
                    units.append(Unit(rel, copy_file, {"src": path, "dst": os.path.join(self.dst, rel),
                                                       "link": self.link}, [path]))
        return units

    def finish(self, written: List[str]) -> List[str]:
        sbd = read_list(os.path.join(self.aug, "train.txt")) + read_list(os.path.join(self.aug, "val.txt"))
        voc_train = read_list(os.path.join(self.src, SETS, "train.txt"))
        voc_val = read_list(os.path.join(self.src, SETS, "val.txt"))
        trainaug = sorted(set(voc_train + sbd) - set(voc_val))
        aug = sorted(set(sbd) - set(voc_train + voc_val))
        masks = {os.path.basename(p)[:-4] for p in written if os.sep + "SegmentationClassAug" + os.sep in p}
        lacking = [name for name in aug if name not in masks]
        if lacking:
            raise DataError(f"voc_aug: {len(lacking)} name(s) of SBD's train/val lists have no "
                            f"{os.path.join(self.aug, 'cls')}/<name>.mat, e.g. {', '.join(lacking[:5])}")
        sets = os.path.join(self.dst, SETS)
        extra = [write_text(os.path.join(sets, "trainaug.txt"), trainaug),
                 write_text(os.path.join(sets, "aug.txt"), aug)]
        if self.dst != self.src:
            extra += [write_text(os.path.join(sets, "train.txt"), voc_train),
                      write_text(os.path.join(sets, "val.txt"), voc_val)]
        return extra
