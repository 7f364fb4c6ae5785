"""COCO run-length encoded masks (the format of the PASCAL in Detail API's ``segmentation`` fields), in numpy.

A mask of height h and width w is read column by column (Fortran order) as alternating runs of 0s and 1s,
starting with 0s. ``counts`` is either the list of run lengths or COCO's compressed string: each run (from
the third on, the difference to the run two before) in 5-bit groups, low bits first, each group + 48 as a
character with bit 0x20 meaning "more groups follow" and bit 0x10 of the last group the sign.
"""
from __future__ import annotations

from typing import Any, List, Mapping, Union

import numpy as np

from rayseg.errors import DataError


def counts_from_string(text: str) -> List[int]:
    """The run lengths encoded in a compressed COCO RLE string (pycocotools' ``rleFrString``)."""
    counts: List[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise DataError("compressed RLE string ends inside a number")
            c = ord(text[pos]) - 48
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            pos += 1
            shift += 1
            if not more and c & 0x10:
                value |= -1 << (5 * shift)
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


def counts_to_string(counts: List[int]) -> str:
    """The compressed COCO RLE string of ``counts`` (pycocotools' ``rleToString``; tests build fixtures with it)."""
    out = []
    for i, count in enumerate(counts):
        value = count - counts[i - 2] if i > 2 else count
        more = True
        while more:
            c = value & 0x1F
            value >>= 5
            more = value != -1 if c & 0x10 else value != 0
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def decode_rle(rle: Mapping[str, Any], height: int, width: int) -> np.ndarray:
    """An H×W bool mask from ``{"counts": str | list, "size": [h, w]}`` (``size`` defaults to the image's)."""
    h, w = (int(v) for v in rle.get("size", (height, width)))
    counts: Union[str, bytes, List[int]] = rle["counts"]
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    runs = counts_from_string(counts) if isinstance(counts, str) else [int(c) for c in counts]
    if any(r < 0 for r in runs) or sum(runs) != h * w:
        raise DataError(f"RLE runs add up to {sum(runs)} pixels (some negative: {any(r < 0 for r in runs)}), "
                        f"not {h}x{w}={h * w}")
    values = np.zeros(len(runs), bool)
    values[1::2] = True
    flat = np.repeat(values, runs)
    return flat.reshape((w, h)).T
