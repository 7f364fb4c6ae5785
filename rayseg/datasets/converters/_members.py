"""Reading single members of the official archives (zip, tar, .gz) inside a conversion unit.

Converters of group B never extract a whole archive: each unit opens the archive, reads the one member it
converts and decodes it in memory, so a unit's memory is one image and a bad member fails only its unit.
"""
from __future__ import annotations

import gzip
import io
import os
import posixpath
import tarfile
import zipfile
import zlib
from typing import List, Optional

import numpy as np

from rayseg.errors import DataError


def archive_path(src: str, name: str) -> str:
    """``src/name``; DataError naming the missing archive when it is not there."""
    path = os.path.join(src, name)
    if not os.path.isfile(path):
        raise DataError(f"{path} is missing: the official download {name!r} must be in {src}")
    return path


def zip_files(path: str) -> List[str]:
    """Names of the file members (not folders) of zip ``path``, sorted; DataError if it is no zip."""
    try:
        with zipfile.ZipFile(path) as zf:
            return sorted(n for n in zf.namelist() if not n.endswith("/"))
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"cannot read zip archive {path}: {exc}") from None


def tar_files(path: str) -> List[str]:
    """Names of the regular-file members of tar ``path``, sorted; DataError if it is no tar."""
    try:
        with tarfile.open(path) as tf:
            return sorted(m.name for m in tf.getmembers() if m.isfile())
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"cannot read tar archive {path}: {exc}") from None


def read_member(path: str, member: str) -> bytes:
    """The bytes of ``member`` of archive ``path`` (a zip when named .zip, else a tar), un-gzipped when the
    member ends in .gz."""
    where = f"{path}!{member}"
    try:
        if path.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                data = zf.read(member)
        else:
            with tarfile.open(path) as tf:
                handle = tf.extractfile(member)
                if handle is None:
                    raise DataError(f"{where} is not a regular file")
                data = handle.read()
        if member.endswith(".gz"):
            data = gzip.decompress(data)
    except DataError:
        raise
    except (KeyError, zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {where}: {exc}") from None
    return data


def decode_color(data: bytes, where: str) -> np.ndarray:
    """Decode an encoded image to H×W×3 uint8 BGR, as ``mmcv.imread`` (colour) does; OpenCV first, Pillow
    for what OpenCV lacks (GIF, where MMSeg used cv2.VideoCapture, which also yields BGR frames)."""
    import cv2

    img: Optional[np.ndarray] = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        try:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                img = np.ascontiguousarray(np.asarray(im.convert("RGB"))[..., ::-1])
        except Exception:  # noqa: BLE001 - any Pillow failure means "unreadable", reported below
            img = None
    if img is None:
        raise DataError(f"cannot decode image {where}")
    return img


def read_color(path: str, member: str) -> np.ndarray:
    """Member ``member`` of archive ``path`` decoded to BGR (see ``decode_color``)."""
    return decode_color(read_member(path, member), f"{path}!{member}")


def vessel_mask(bgr: np.ndarray) -> np.ndarray:
    """MMSeg's vessel label: first (blue) channel // 128, i.e. 1 where the value is >= 128, else 0. The
    threshold (not ``!= 0``) is MMSeg's answer to annotations that are not exactly 0/255."""
    return (bgr[..., 0] // 128).astype(np.uint8)


def basename(member: str) -> str:
    """File name of an archive member (archives always use '/')."""
    return posixpath.basename(member)


def stem(member: str) -> str:
    """File name without its last suffix (``os.path.splitext``, as MMSeg names outputs)."""
    return posixpath.splitext(basename(member))[0]

