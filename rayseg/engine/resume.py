"""Finding where a run left off: the latest Ray checkpoint in its storage folder, and its iteration."""
from __future__ import annotations

import json
import os
import re
import zipfile
from typing import Any, Dict, List, Optional, Tuple


from rayseg.engine import storage
from rayseg.engine.checkpoint import TRAIN_STATE_FILE, read_checkpoint
from rayseg.errors import CheckpointError
from rayseg.utils.files import write_text_atomic

_ITER_DIR = re.compile(r"^iter_(\d+)$")
RUN_STATE_FILE = "run_state.json"
RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train v2's record of registered checkpoints


def checkpoint_problem(folder: str) -> Optional[str]:
    """None if ``folder``'s ``checkpoint.pt`` is a whole torch archive, else what is wrong with it.

    ``torch.save`` writes a zip archive whose directory sits at the very end, so a file cut short (a node that
    died while uploading, a full disk, a copy interrupted) has no directory or one that points past the end.
    Only the directory is read, not the tensors: cheap enough to run on every resume, also on object storage.
    """
    location = storage.join(folder, TRAIN_STATE_FILE)
    try:
        fs, path = storage.resolve(location)
        with fs.open_input_file(path) as f:
            size = f.size()
            with zipfile.ZipFile(f) as archive:
                for info in archive.infolist():
                    if info.header_offset + info.compress_size > size:
                        return f"{location} is truncated ({info.filename} ends past its {size} bytes)"
    except zipfile.BadZipFile as exc:
        return f"{location} is truncated or corrupt ({exc})"
    except (OSError, ValueError) as exc:
        return f"cannot read {location} ({exc})"
    return None


def latest_checkpoint(run_dir: str, intact: bool = False,
                      skipped: Optional[List[Tuple[str, str]]] = None) -> Optional[Tuple[str, int]]:
    """(folder, iteration) of the newest complete checkpoint under ``run_dir`` (a path or URI), or None.

    A folder counts only once its ``checkpoint.pt`` exists, and that file is written atomically, so a
    checkpoint interrupted mid-write is never picked. With ``intact``, a checkpoint whose file was damaged
    afterwards (``checkpoint_problem``) is passed over for the next older one, and ``(folder, reason)`` is
    appended to ``skipped`` for each one passed over.
    """
    candidates = _candidates(run_dir)
    for folder, iteration in candidates:
        problem = checkpoint_problem(folder) if intact else None
        if problem is None:
            return folder, iteration
        if skipped is not None:
            skipped.append((folder, problem))
    return None


def _candidates(run_dir: str) -> List[Tuple[str, int]]:
    """Checkpoint folders Ray would restore from, newest first: the one Ray Train's manager registered (if it
    has a snapshot) and the older ones, else every ``iter_N`` folder holding a ``checkpoint.pt``."""
    found = []
    for name, is_dir in storage.list_dir(run_dir):
        match = _ITER_DIR.match(name)
        if match and is_dir and storage.exists(storage.join(run_dir, name, TRAIN_STATE_FILE)):
            found.append((storage.join(run_dir, name), int(match.group(1))))
    found.sort(key=lambda item: item[1], reverse=True)
    registered = _registered_latest(run_dir)
    if registered is None:
        return found
    name = registered[0]
    match = _ITER_DIR.match(name) if name else None
    if match is None:
        return []
    # Folders newer than the registered one were uploaded but never registered (a worker died meanwhile).
    return [item for item in found if item[1] <= int(match.group(1))]


def _registered_latest(run_dir: str) -> Optional[Tuple[Optional[str]]]:
    """``(checkpoint dir name or None,)`` from Ray Train's checkpoint-manager snapshot, or None without one.

    Ray restores from the checkpoint its manager registered, not from the newest folder on storage: after a
    worker dies, rank 0 may already have uploaded a later folder that was never registered. The training
    stream must start where Ray's restore starts.
    """
    path = storage.join(run_dir, RAY_SNAPSHOT_FILE)
    try:
        if not storage.exists(path):
            return None
        snapshot = json.loads(storage.read_bytes(path))
    except (OSError, ValueError):
        return None  # unreadable: fall back to scanning the folders
    latest = snapshot.get("latest_checkpoint_result") or {}
    return (latest.get("checkpoint_dir_name"),)


def read_train_state(folder: str) -> Dict[str, Any]:
    """The training state (``checkpoint.pt``) of a Ray checkpoint folder, a local path or a storage URI,
    read by ``read_checkpoint`` (the one safe reader); every failure is a ``CheckpointError`` naming it."""
    return read_checkpoint(folder)


def checkpoint_iteration(folder: str) -> int:
    """The iteration stored in a Ray checkpoint folder (path or URI) written by rayseg."""
    state = read_train_state(folder)
    try:
        return int(state["meta"]["iter"])
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{folder} is not a rayseg training checkpoint (no meta.iter)") from None


def read_run_state(work_dir: str) -> Dict[str, Any]:
    """What a previous run of this work dir recorded (its MLflow run id)."""
    path = os.path.join(work_dir, RUN_STATE_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def write_run_state(work_dir: str, state: Dict[str, Any]) -> None:
    path = os.path.join(work_dir, RUN_STATE_FILE)
    write_text_atomic(path, json.dumps(state))
