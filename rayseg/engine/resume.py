"""Finding where a run left off: the latest Ray checkpoint in its storage folder, and its iteration."""
from __future__ import annotations

import io
import json
import os
import re
from typing import Any, Dict, Optional, Tuple

import torch

from rayseg.engine import storage
from rayseg.engine.checkpoint import TRAIN_STATE_FILE
from rayseg.errors import CheckpointError

_ITER_DIR = re.compile(r"^iter_(\d+)$")
RUN_STATE_FILE = "run_state.json"


def latest_checkpoint(run_dir: str) -> Optional[Tuple[str, int]]:
    """(folder, iteration) of the newest complete checkpoint under ``run_dir`` (a path or URI), or None.

    A folder counts only once its ``checkpoint.pt`` exists, and that file is written atomically, so a
    checkpoint interrupted mid-write is never picked.
    """
    found = []
    for name, is_dir in storage.list_dir(run_dir):
        match = _ITER_DIR.match(name)
        if match and is_dir and storage.exists(storage.join(run_dir, name, TRAIN_STATE_FILE)):
            found.append((int(match.group(1)), storage.join(run_dir, name)))
    if not found:
        return None
    iteration, folder = max(found)
    return folder, iteration


def checkpoint_iteration(folder: str) -> int:
    """The iteration stored in a Ray checkpoint folder (path or URI) written by rayseg."""
    path = storage.join(folder, TRAIN_STATE_FILE)
    if not storage.exists(path):
        raise CheckpointError(f"{folder} is not a rayseg training checkpoint (no {TRAIN_STATE_FILE})")
    state = torch.load(io.BytesIO(storage.read_bytes(path)), map_location="cpu", weights_only=True)
    return int(state["meta"]["iter"])


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
