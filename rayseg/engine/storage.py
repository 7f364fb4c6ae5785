"""Where Ray Train keeps a run's checkpoints: a local folder, an NFS mount, or an ``s3://``/``gs://`` URI.

Every node's workers write checkpoints to this place and the driver reads them back, so on a cluster of
several machines it must be reachable from all of them. Paths and URIs are handled through pyarrow
filesystems, the same ones Ray Train uses.
"""
from __future__ import annotations

import os
import posixpath
from typing import Iterable, List, Optional, Tuple

from rayseg.errors import ConfigError

# Filesystem types (as /proc/mounts spells them) that every node can mount at the same path.
SHARED_FS_TYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "glusterfs", "fuse.glusterfs", "ceph", "fuse.ceph",
    "gpfs", "beegfs", "fuse.juicefs", "fuse.gcsfuse", "fuse.s3fs", "fuse.mountpoint-s3", "fuse.goofys",
    "fuse.rclone", "efs", "fuse.sshfs", "wekafs", "9p",
})
# For shared filesystems the mount table doesn't reveal (e.g. a host path that is itself a network mount).
ASSUME_SHARED_ENV = "RAYSEG_STORAGE_IS_SHARED"


def is_uri(location: str) -> bool:
    return "://" in location


def storage_root(storage_path: Optional[str], work_dir: str) -> str:
    """The configured ``storage_path`` (URI kept as is, paths made absolute) or ``WORK_DIR/ray_results``."""
    if not storage_path:
        return os.path.join(work_dir, "ray_results")
    if is_uri(storage_path):
        return storage_path.rstrip("/")
    return os.path.abspath(os.path.expanduser(storage_path))


def join(root: str, *parts: str) -> str:
    return posixpath.join(root, *parts) if is_uri(root) else os.path.join(root, *parts)


def resolve(location: str):
    """``(pyarrow filesystem, path within it)`` for a local path or a URI (s3://, gs://, file://, ...)."""
    import pyarrow.fs as pafs

    if is_uri(location):
        try:
            return pafs.FileSystem.from_uri(location)
        except Exception as exc:  # pyarrow raises ArrowInvalid/OSError with the scheme in the message
            raise ConfigError(f"storage_path {location!r}: pyarrow cannot open it ({exc})") from exc
    return pafs.LocalFileSystem(), os.path.abspath(location)


def list_dir(location: str) -> List[Tuple[str, bool]]:
    """``(name, is_dir)`` of the entries directly inside ``location``; [] if it does not exist."""
    import pyarrow.fs as pafs

    fs, path = resolve(location)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return [(posixpath.basename(i.path.rstrip("/")), i.type == pafs.FileType.Directory) for i in infos]


def exists(location: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = resolve(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(location: str) -> bytes:
    fs, path = resolve(location)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def replace_dir(source_fs, source_path: str, dst: str) -> None:
    """Copy folder ``source_path`` of ``source_fs`` to ``dst`` (path or URI), replacing what was there.

    The copy goes to a sibling temporary name first, so ``dst`` is never a half-copied folder.
    """
    import pyarrow.fs as pafs

    fs, dst_path = resolve(dst)
    tmp = dst_path.rstrip("/") + ".tmp"
    if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
        fs.delete_dir(tmp)
    fs.create_dir(tmp, recursive=True)  # the local filesystem does not create the target folder itself
    pafs.copy_files(source_path, tmp, source_filesystem=source_fs, destination_filesystem=fs)
    if fs.get_file_info(dst_path).type != pafs.FileType.NotFound:
        fs.delete_dir(dst_path)
    fs.move(tmp, dst_path)


def mount_fs_type(path: str, mounts_file: str = "/proc/mounts") -> Optional[str]:
    """The filesystem type of the mount holding ``path`` (longest matching mount point), if known."""
    try:
        with open(mounts_file) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    path = os.path.realpath(path)
    best, best_type = "", None
    for line in lines:
        fields = line.split()
        if len(fields) < 3:
            continue
        mount_point = fields[1].replace("\\040", " ")
        inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fields[2]
    return best_type


def check_storage_for_cluster(storage: str, node_addresses: Iterable[str],
                              mounts_file: str = "/proc/mounts") -> None:
    """Refuse a path only the head can see when the cluster spans more than one machine.

    ``node_addresses``: the IP address of every alive node. Nodes on one machine (a laptop, or
    ``ray.cluster_utils.Cluster`` in tests) share its disk, so any path works there.
    """
    machines = set(node_addresses)
    if is_uri(storage) and not storage.startswith("file://"):
        return
    if len(machines) <= 1 or os.environ.get(ASSUME_SHARED_ENV) == "1":
        return
    path = storage[len("file://"):] if storage.startswith("file://") else storage
    fs_type = mount_fs_type(path, mounts_file)  # realpath copes with a run folder that doesn't exist yet
    if fs_type in SHARED_FS_TYPES:
        return
    raise ConfigError(
        f"storage_path {storage!r} is on this machine's local disk ({fs_type or 'unknown'} filesystem), but the "
        f"cluster spans {len(machines)} machines ({', '.join(sorted(machines))}): workers on other nodes could "
        "not write checkpoints there and a restart could not read them back. Set storage_path to an s3:// or "
        "gs:// URI, or to a folder on a shared filesystem (e.g. NFS) mounted at the same path on every node "
        f"(export {ASSUME_SHARED_ENV}=1 if it is shared in a way the mount table does not show).")
