"""One run per work dir: a lock that a second ``train`` in the same work dir is refused by at once.

Two runs in one work dir would interleave ``log.jsonl`` and overwrite each other's ``latest.pth``. The lock is
an ``flock`` on ``<work_dir>/.rayseg.lock``, held by the driver process for the whole run: the kernel releases
it when that process ends, however it ends, so a crashed run never leaves a lock that blocks the next one.
The file also records who holds it (PID, host, start time, command), for the refusal message; a file whose
record is still there but whose lock nobody holds is a run that died without cleaning up (stale), and is
taken over with a note.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
import warnings
from typing import Any, Dict, Optional

from rayseg.errors import ConfigError

LOCK_FILE = ".rayseg.lock"


def _describe(holder: Dict[str, Any]) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
    return f"PID {holder.get('pid', '?')} on {holder.get('host', '?')}, started {when}"


class WorkDirLock:
    """Exclusive hold on a work dir for one run (a context manager).

    ``acquire`` creates the work dir if needed and raises ``ConfigError`` naming the holder when another live
    process holds it. ``release`` clears the record; if the work dir was created by ``acquire`` and the run
    left nothing else in it (it was refused or failed before writing anything), the folder is removed too,
    so a failed start leaves no empty work dir behind.
    """

    def __init__(self, work_dir: str):
        self.work_dir = os.path.abspath(work_dir)
        self.path = os.path.join(self.work_dir, LOCK_FILE)
        self._fd: Optional[int] = None
        self._created_dir = False
        self.stale: Optional[Dict[str, Any]] = None  # the record of a dead holder this lock took over

    def acquire(self) -> "WorkDirLock":
        if self._fd is not None:
            return self
        self._created_dir = not os.path.isdir(self.work_dir)
        try:
            os.makedirs(self.work_dir, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot create the work dir lock {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_record(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                self._remove_created_dir()
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                raise ConfigError(
                    f"work dir {self.work_dir} is in use by another run ({_describe(holder)}): two runs in one work "
                    f"dir would mix their logs and checkpoints; wait for it to finish, stop it, or choose another "
                    f"--work-dir") from None
            if exc.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                # A filesystem without locks (some network mounts): run, but say the guard is off.
                warnings.warn(f"{self.path}: this filesystem does not support locks ({exc}); nothing stops a "
                              "second run from using this work dir at the same time", RuntimeWarning, stacklevel=2)
                return self
            raise ConfigError(f"cannot lock the work dir ({self.path}): {exc}") from exc
        previous = _read_record(fd)
        if previous.get("pid") is not None:
            self.stale = previous  # written by a run that ended without releasing (killed, crashed host)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # an empty record: released cleanly, not stale
        finally:
            os.close(fd)  # drops the flock
        self._remove_created_dir()

    def _remove_created_dir(self) -> None:
        """Remove the work dir if ``acquire`` made it and nothing but the lock file is in it."""
        if not self._created_dir:
            return
        try:
            if set(os.listdir(self.work_dir)) <= {LOCK_FILE}:
                if os.path.exists(self.path):
                    os.remove(self.path)
                os.rmdir(self.work_dir)
        except OSError:
            pass  # another process put something there meanwhile: it is theirs to keep

    def __enter__(self) -> "WorkDirLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def _read_record(fd: int) -> Dict[str, Any]:
    try:
        raw = os.pread(fd, 4096, 0)
        return json.loads(raw) if raw.strip() else {}
    except (OSError, ValueError):
        return {}
