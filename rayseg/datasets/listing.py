"""Finding a dataset's files where teams keep them: a local folder or object storage (``s3://``, ``gs://``, any
URI pyarrow opens), so ``data_root``, ``img_dir``, ``ann_dir`` and split files may be either.

Local paths keep the plain ``os`` calls (cheap, and symlinked folders are followed). On object storage every
call is a request, so a folder is listed once, recursively, and membership is answered from that listing
rather than one request per file; a dataset with a ``manifest`` lists nothing at all.
"""
from __future__ import annotations

import os
import posixpath
from typing import List, Optional, Set

from rayseg.errors import DataError


def is_uri(location: str) -> bool:
    return "://" in location


def join(root: str, *parts: str) -> str:
    """``root/part…`` for a path or a URI (a part that is absolute, or a URI, replaces the root)."""
    for part in parts:
        if is_uri(part) or os.path.isabs(part):
            root = part
        else:
            root = posixpath.join(root, part) if is_uri(root) else os.path.join(root, part)
    return root


def absolute(location: str) -> str:
    """A local path made absolute; a URI unchanged."""
    return location if is_uri(location) else os.path.abspath(location)


def _fs(location: str):
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(location)
    except Exception as exc:  # pyarrow's ArrowInvalid/OSError name the scheme
        raise DataError(f"cannot open {location}: {exc}") from exc


class FileTree:
    """The files under one folder, listed at most once: ``has(rel)`` and ``files(suffix)``.

    Local folders answer ``has`` with ``os.path.isfile`` (no listing); object storage lists recursively on
    first use.
    """

    def __init__(self, directory: str):
        self.directory = directory
        self._listing: Optional[Set[str]] = None

    def exists(self) -> bool:
        if not is_uri(self.directory):
            return os.path.isdir(self.directory)
        import pyarrow.fs as pafs

        fs, inner = _fs(self.directory)
        info = fs.get_file_info(inner)
        return info.type == pafs.FileType.Directory or (info.type == pafs.FileType.NotFound and bool(self._all()))

    def _all(self) -> Set[str]:
        if self._listing is None:
            if not is_uri(self.directory):
                found = set()
                for root, _, names in os.walk(self.directory, followlinks=True):
                    for name in names:
                        found.add(os.path.relpath(os.path.join(root, name), self.directory))
                self._listing = found
            else:
                import pyarrow.fs as pafs

                fs, inner = _fs(self.directory)
                base = inner.rstrip("/") + "/"
                infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True, allow_not_found=True))
                self._listing = {i.path[len(base):] for i in infos
                                 if i.type == pafs.FileType.File and i.path.startswith(base)}
        return self._listing

    def has(self, rel: str) -> bool:
        if not is_uri(self.directory):
            return os.path.isfile(os.path.join(self.directory, rel))
        return rel in self._all()

    def files(self, suffix: str) -> List[str]:
        """Relative paths of the files ending in ``suffix``, sorted."""
        return sorted(r for r in self._all() if r.endswith(suffix))


def is_file(location: str) -> bool:
    if not is_uri(location):
        return os.path.isfile(location)
    import pyarrow.fs as pafs

    fs, inner = _fs(location)
    return fs.get_file_info(inner).type == pafs.FileType.File


def read_bytes(location: str) -> bytes:
    """The bytes of a local file or an object (``scheme://`` through pyarrow); DataError naming it otherwise."""
    try:
        if not is_uri(location):
            with open(location, "rb") as f:
                return f.read()
        fs, inner = _fs(location)
        with fs.open_input_stream(inner) as stream:
            return stream.read()
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {location}: {exc}") from exc


def read_text(location: str) -> str:
    """The text of a local file or an object; DataError naming it when it cannot be read."""
    try:
        if not is_uri(location):
            with open(location) as f:
                return f.read()
        fs, inner = _fs(location)
        with fs.open_input_stream(inner) as stream:
            return stream.read().decode()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {location}: {exc}") from exc

