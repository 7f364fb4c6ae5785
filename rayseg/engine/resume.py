"""Finding where a run left off: the latest Ray checkpoint in its storage folder, and its iteration."""
from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, Optional, Tuple


from rayseg.engine import storage
from rayseg.engine.checkpoint import TRAIN_STATE_FILE, read_checkpoint
from rayseg.errors import CheckpointError

_ITER_DIR = re.compile(r"^iter_(\d+)$")
RUN_STATE_FILE = "run_state.json"
RAY_SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train v2's record of registered checkpoints


def latest_checkpoint(run_dir: str) -> Optional[Tuple[str, int]]:
    """(folder, iteration) of the newest complete checkpoint under ``run_dir`` (a path or URI), or None.

    A folder counts only once its ``checkpoint.pt`` exists, and that file is written atomically, so a
    checkpoint interrupted mid-write is never picked.
    """
    registered = _registered_latest(run_dir)
    if registered is not None:
        name = registered[0]
        if name is None:
            return None
        folder = storage.join(run_dir, name)
        match = _ITER_DIR.match(name)
        if match and storage.exists(storage.join(folder, TRAIN_STATE_FILE)):
            return folder, int(match.group(1))
    found = []
    for name, is_dir in storage.list_dir(run_dir):
        match = _ITER_DIR.match(name)
        if match and is_dir and storage.exists(storage.join(run_dir, name, TRAIN_STATE_FILE)):
            found.append((int(match.group(1)), storage.join(run_dir, name)))
    if not found:
        return None
    iteration, folder = max(found)
    return folder, iteration


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
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)
