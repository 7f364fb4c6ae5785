"""Checkpoint files: the Ray Train checkpoint (full training state) and the plain ``latest.pth``."""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, Optional

import torch

from rayseg.errors import CheckpointError

TRAIN_STATE_FILE = "checkpoint.pt"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside a DistributedDataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


def atomic_torch_save(obj: Any, path: str) -> None:
    """Write to a temporary file in the same folder and rename, so a reader never sees half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pth")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def weights_file_payload(state_dict: Dict[str, torch.Tensor], cfg: Dict[str, Any], iteration: int,
                         classes=None, palette=None) -> Dict[str, Any]:
    """The ``latest.pth`` layout: plain tensors and builtins only, so ``weights_only=True`` loads it."""
    return {
        "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
        "meta": {"config": cfg, "iter": int(iteration),
                 "classes": list(classes) if classes is not None else None,
                 "palette": [list(map(int, c)) for c in palette] if palette is not None else None},
    }


def load_weights_file(path: str) -> Dict[str, Any]:
    """Load a ``.pth`` weights file or a Ray checkpoint folder; returns ``{"state_dict", "meta"}``."""
    if os.path.isdir(path):
        inner = os.path.join(path, TRAIN_STATE_FILE)
        if not os.path.exists(inner):
            raise CheckpointError(f"checkpoint folder {path} has no {TRAIN_STATE_FILE}")
        path = inner
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt files
        raise CheckpointError(f"cannot load checkpoint {path}: {exc}") from exc
    if isinstance(payload, dict) and "state_dict" in payload:
        return {"state_dict": payload["state_dict"], "meta": payload.get("meta", {}) or {}}
    if isinstance(payload, dict) and all(torch.is_tensor(v) for v in payload.values()):
        return {"state_dict": payload, "meta": {}}
    raise CheckpointError(f"{path} holds no state_dict")


def load_model_weights(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], source: str,
                       strict: bool = True) -> None:
    """Load weights, naming the missing and unexpected keys when they do not match."""
    state_dict = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    result = unwrap(model).load_state_dict(state_dict, strict=False)
    if strict and (result.missing_keys or result.unexpected_keys):
        raise CheckpointError(
            f"weights in {source} do not match the model: missing keys {result.missing_keys[:20]}, "
            f"unexpected keys {result.unexpected_keys[:20]}")


def save_train_state(folder: str, model, optimizer, iteration: int, cfg: Dict[str, Any],
                     extra: Optional[Dict[str, Any]] = None) -> str:
    """Write the full training state into ``folder/checkpoint.pt`` (atomically)."""
    state = {
        "state_dict": unwrap(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "meta": {"config": cfg, "iter": int(iteration)},
        "rng": {"torch": torch.get_rng_state()},
    }
    if extra:
        state.update(extra)
    path = os.path.join(folder, TRAIN_STATE_FILE)
    atomic_torch_save(state, path)
    return path
