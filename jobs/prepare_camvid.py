"""Turn CamVid as distributed with the SegNet tutorial into the layout configs/camvid/ reads.

    python jobs/prepare_camvid.py SRC DST [--splits train val test] [--copy] [--force]

SRC holds the SegNet tutorial's CamVid folders (or is the tutorial's root, with them under CamVid/):

    SRC/train/*.png   SRC/trainannot/*.png   (367 pairs)
    SRC/val/*.png     SRC/valannot/*.png     (101 pairs)
    SRC/test/*.png    SRC/testannot/*.png    (233 pairs)

Images are RGB 480x360; annotations are 8-bit single-channel PNGs with the same file names, labels 0-10
(Sky ... Bicyclist) and 11 = void, which CamVidDataset maps to 255 (ignored). DST gets

    DST/img_dir/{train,val,test}/*.png   DST/ann_dir/{train,val,test}/*.png

Files are hard-linked (no extra disk space) and copied where a hard link is impossible (another
filesystem), or always copied with --copy. Every split is checked before anything is written: each image
has its annotation and each annotation its image, the two have the same size, the annotation is
single-channel with labels 0-11 (or 255). Running it again over a finished DST is a no-op; a destination
file with other content is an error unless --force. Exit status 0 on success, 2 with ``error: ...`` lines.
The default DST of configs/_base_/datasets/camvid.yaml is data/camvid.
"""
from __future__ import annotations

import argparse
import errno
import filecmp
import os
import shutil
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

SPLITS = ("train", "val", "test")
IMG_SUFFIX = ".png"
MAX_LABEL = 11  # 0-10 classes, 11 void
MAX_LISTED = 5


class PrepareError(Exception):
    """A problem with SRC or DST that the user can fix; the message names the files."""


def _listing(items: List[str]) -> str:
    shown = "; ".join(items[:MAX_LISTED])
    return shown + (f"; ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


def find_source(src: str, splits: Tuple[str, ...]) -> str:
    """SRC itself, or SRC/CamVid when SRC is the SegNet tutorial's root."""
    if not os.path.isdir(src):
        raise PrepareError(f"source folder {src} does not exist")
    nested = os.path.join(src, "CamVid")
    if not os.path.isdir(os.path.join(src, splits[0])) and os.path.isdir(os.path.join(nested, splits[0])):
        return nested
    return src


def _pngs(folder: str) -> List[str]:
    return sorted(n for n in os.listdir(folder) if n.lower().endswith(IMG_SUFFIX)
                  and os.path.isfile(os.path.join(folder, n)))


def check_split(src: str, split: str) -> List[str]:
    """The file names of one split after checking every pair; raises PrepareError listing every problem."""
    img_dir, ann_dir = os.path.join(src, split), os.path.join(src, split + "annot")
    absent = [d for d in (img_dir, ann_dir) if not os.path.isdir(d)]
    if absent:
        raise PrepareError(f"split {split!r}: folder(s) not found: {', '.join(absent)} "
                           f"(expected {split}/ and {split}annot/ of PNGs in {src}; --splits leaves a split out)")
    images, labels = _pngs(img_dir), _pngs(ann_dir)
    if not images:
        raise PrepareError(f"split {split!r}: no {IMG_SUFFIX} images in {img_dir}")
    problems: List[str] = []
    no_label = sorted(set(images) - set(labels))
    no_image = sorted(set(labels) - set(images))
    if no_label:
        problems.append(f"{len(no_label)} image(s) in {img_dir} have no annotation in {ann_dir}: "
                        f"{_listing(no_label)}")
    if no_image:
        problems.append(f"{len(no_image)} annotation(s) in {ann_dir} have no image in {img_dir}: "
                        f"{_listing(no_image)}")
    unreadable, size_mismatch, not_single, out_of_range = [], [], [], []
    for name in sorted(set(images) & set(labels)):
        img_path, ann_path = os.path.join(img_dir, name), os.path.join(ann_dir, name)
        try:
            with Image.open(img_path) as im:
                img_size = im.size
            with Image.open(ann_path) as an:
                ann_size, mode = an.size, an.mode
                values = np.unique(np.asarray(an)) if mode in ("L", "P") else None
        except Exception as exc:  # PIL raises several types for corrupt or non-image files
            unreadable.append(f"{name} ({type(exc).__name__}: {exc})")
            continue
        if img_size != ann_size:
            size_mismatch.append(f"{name} (image {img_size[0]}x{img_size[1]}, "
                                 f"annotation {ann_size[0]}x{ann_size[1]})")
        if values is None:
            not_single.append(f"{name} (mode {mode})")
        else:
            bad = [int(v) for v in values if v > MAX_LABEL and v != 255]
            if bad:
                out_of_range.append(f"{name} (values {bad[:8]})")
    if unreadable:
        problems.append(f"{len(unreadable)} unreadable file(s) in {split}/ or {split}annot/: {_listing(unreadable)}")
    if size_mismatch:
        problems.append(f"{len(size_mismatch)} image/annotation pair(s) in {split!r} differ in size: "
                        f"{_listing(size_mismatch)}")
    if not_single:
        problems.append(f"{len(not_single)} annotation(s) in {ann_dir} are not 8-bit single-channel (L or P) "
                        f"label images: {_listing(not_single)}")
    if out_of_range:
        problems.append(f"{len(out_of_range)} annotation(s) in {ann_dir} hold labels outside 0-{MAX_LABEL} "
                        f"(and 255): {_listing(out_of_range)}")
    if problems:
        raise PrepareError("\n".join(problems))
    return images


def _same_content(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b) or filecmp.cmp(a, b, shallow=False)
    except OSError:
        return False


def _place(src: str, dst: str, copy: bool) -> str:
    """Hard-link (or copy) src to dst; returns 'linked' or 'copied'."""
    if not copy:
        try:
            os.link(src, dst)
            return "linked"
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                raise
    shutil.copy2(src, dst)
    return "copied"


def prepare(src: str, dst: str, splits: Tuple[str, ...] = SPLITS, copy: bool = False,
            force: bool = False) -> Dict[str, Dict[str, int]]:
    """Check every split, then write DST/img_dir/<split> and DST/ann_dir/<split>.

    Returns ``{split: {"pairs", "linked", "copied", "kept"}}``; raises PrepareError before writing anything
    when a split has a problem or DST holds different files (without ``force``)."""
    src = find_source(src, splits)
    names: Dict[str, List[str]] = {}
    problems: List[str] = []
    for split in splits:
        try:
            names[split] = check_split(src, split)
        except PrepareError as exc:
            problems.append(str(exc))
    if problems:
        raise PrepareError("\n".join(problems))
    plan: List[Tuple[str, str, str]] = []  # (split, source file, destination file)
    for split in splits:
        for kind, sub in (("img_dir", split), ("ann_dir", split + "annot")):
            for name in names[split]:
                plan.append((split, os.path.join(src, sub, name), os.path.join(dst, kind, split, name)))
    conflicts = [d for _, s, d in plan if os.path.lexists(d) and not _same_content(s, d)]
    if conflicts and not force:
        raise PrepareError(f"{len(conflicts)} file(s) in {dst} already exist with other content: "
                           f"{_listing(conflicts)} (use --force to replace them, or choose another DST)")
    stats = {split: {"pairs": len(names[split]), "linked": 0, "copied": 0, "kept": 0} for split in splits}
    for split, s, d in plan:
        os.makedirs(os.path.dirname(d), exist_ok=True)
        if os.path.lexists(d):
            if _same_content(s, d):
                stats[split]["kept"] += 1
                continue
            os.remove(d)  # a conflict, and force was given
        stats[split][_place(s, d, copy)] += 1
    return stats


def summary(dst: str, stats: Dict[str, Dict[str, int]]) -> str:
    pairs = ", ".join(f"{split} {s['pairs']}" for split, s in stats.items())
    counts = {k: sum(s[k] for s in stats.values()) for k in ("linked", "copied", "kept")}
    files = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "nothing to do"
    return (f"prepared CamVid in {dst}: {pairs} image/annotation pairs in img_dir/ and ann_dir/ "
            f"({files}); labels 0-10, 11 = void (ignored)")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="the SegNet tutorial's CamVid folder (train/, trainannot/, val/, ...)")
    parser.add_argument("dst", help="output folder, e.g. data/camvid")
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS,
                        help="splits to prepare (default: train val test)")
    parser.add_argument("--copy", action="store_true", help="copy the files instead of hard-linking them")
    parser.add_argument("--force", action="store_true", help="replace destination files with other content")
    args = parser.parse_args(argv)
    try:
        stats = prepare(args.src, args.dst, tuple(dict.fromkeys(args.splits)), copy=args.copy, force=args.force)
    except PrepareError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    print(summary(args.dst, stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
