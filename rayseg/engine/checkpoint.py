"""Checkpoint files: the Ray Train checkpoint (full training state) and the plain ``latest.pth``."""
from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
import warnings
from typing import Any, Dict, Optional

import torch

from rayseg.errors import CheckpointError

TRAIN_STATE_FILE = "checkpoint.pt"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The bare model inside a DistributedDataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


def current_umask() -> int:
    """This process's umask, read without changing it where Linux allows (``os.umask`` can only swap it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_torch_save(obj: Any, path: str) -> None:
    """Write to a temporary file in the same folder and rename, so a reader never sees half a file.

    The file gets the mode any new file would (0666 less the umask), not ``mkstemp``'s private 0600: a
    ``latest.pth`` is meant to be read by the team and the jobs that evaluate it.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".pth")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
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


# Storage URIs read through pyarrow (as Ray Train reads its checkpoints); other schemes are URLs or names.
STORAGE_SCHEMES = ("s3", "gs", "gcs", "file", "hdfs", "viewfs", "abfs", "abfss")
_COPY_CHUNK = 16 << 20


def is_storage_uri(path: str) -> bool:
    """True for ``s3://``, ``gs://``, ``file://`` … URIs (pyarrow filesystems), False for paths and URLs."""
    return isinstance(path, str) and "://" in path and path.split("://", 1)[0].lower() in STORAGE_SCHEMES


def read_checkpoint(path: str) -> Dict[str, Any]:
    """The whole payload of a checkpoint, read safely: the one reader behind every checkpoint rayseg opens.

    ``path`` is a ``.pth``/``.pt`` file or a Ray checkpoint folder holding ``checkpoint.pt``, given as a
    local path or a storage URI (``s3://``, ``gs://``, ``file://``: pyarrow filesystems), or a URL /
    ``open-mmlab://`` / ``torchvision://`` name fetched once into the torch hub cache. Plain tensors and
    builtins load with ``weights_only=True``; foreign objects (MMSeg 1.x's message hub) are stubbed out
    without running their code. Every failure is a ``CheckpointError`` naming the path (a
    ``CheckpointDownloadError`` for a failed download, an unknown name is a ``ConfigError``).
    """
    from rayseg.models.pretrained import fetch_checkpoint, resolve_checkpoint_url

    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"a checkpoint is named by a path or URI, got {type(path).__name__}")
    path = os.fspath(path)
    if is_storage_uri(path):
        return _read_storage(path)
    url = resolve_checkpoint_url(path)
    if url is not None:
        return _load_file(fetch_checkpoint(url, path), path if url == path else f"{path} ({url})")
    local = os.path.expanduser(path)
    if os.path.isdir(local):
        local = os.path.join(local, TRAIN_STATE_FILE)
        if not os.path.exists(local):
            raise CheckpointError(f"checkpoint folder {path} has no {TRAIN_STATE_FILE}")
    if not os.path.exists(local):
        raise CheckpointError(f"checkpoint file not found: {path}")
    return _load_file(local, path)


def _read_storage(uri: str) -> Dict[str, Any]:
    """A checkpoint file (or Ray checkpoint folder) named by a storage URI (see ``_read_filesystem``)."""
    import pyarrow.fs as pafs

    try:
        fs, remote = pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError (bad URI, credentials, network)
        raise CheckpointError(f"cannot read checkpoint {uri}: {exc}") from exc
    return _read_filesystem(fs, remote, uri)


def _read_filesystem(fs: Any, remote: str, label: str) -> Dict[str, Any]:
    """A checkpoint file (or Ray checkpoint folder) on a pyarrow filesystem, copied to a temporary file of this
    process's own in chunks (a large checkpoint never sits in memory twice) and loaded from there."""
    import pyarrow.fs as pafs

    try:
        info = fs.get_file_info(remote)
        if info.type == pafs.FileType.Directory:
            remote = remote.rstrip("/") + "/" + TRAIN_STATE_FILE
            if fs.get_file_info(remote).type != pafs.FileType.File:
                raise CheckpointError(f"checkpoint folder {label} has no {TRAIN_STATE_FILE}")
        elif info.type != pafs.FileType.File:
            raise CheckpointError(f"checkpoint file not found: {label}")
        with tempfile.TemporaryDirectory(prefix="rayseg-ckpt-") as tmp:
            local = os.path.join(tmp, os.path.basename(remote))
            with fs.open_input_stream(remote) as src, open(local, "wb") as dst:
                shutil.copyfileobj(src, dst, _COPY_CHUNK)
            return _load_file(local, label)
    except CheckpointError:
        raise
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError (bad URI, credentials, network)
        raise CheckpointError(f"cannot read checkpoint {label}: {exc}") from exc


def read_train_checkpoint(checkpoint: Any) -> Dict[str, Any]:
    """The payload of a ``ray.train.Checkpoint``, read straight from its filesystem.

    Not through ``Checkpoint.as_directory()``: for remote storage every process on a node shares one download
    folder per checkpoint, and a second process (another worker of the same run) downloads into it again
    while the first reads, which tears the file under the first (seen on S3 as "PytorchStreamReader failed
    reading file")."""
    import pyarrow.fs as pafs

    if isinstance(checkpoint.filesystem, pafs.LocalFileSystem):
        return read_checkpoint(checkpoint.path)
    name = getattr(checkpoint.filesystem, "type_name", "storage")
    return _read_filesystem(checkpoint.filesystem, checkpoint.path, f"{name}://{checkpoint.path}")


def _normalise_meta(meta: Dict[str, Any]) -> Dict[str, Any]:
    """``meta`` with class names and palette under rayseg's ``classes``/``palette`` as well: MMSeg 0.x
    keeps them as ``CLASSES``/``PALETTE``, MMSeg 1.x in ``dataset_meta: {classes, palette}``."""
    meta = dict(meta)
    dataset_meta = meta.get("dataset_meta") if isinstance(meta.get("dataset_meta"), dict) else {}
    for ours, theirs in (("classes", "CLASSES"), ("palette", "PALETTE")):
        if meta.get(ours) is None:
            for value in (dataset_meta.get(ours), meta.get(theirs)):
                if value is not None:
                    meta[ours] = value
                    break
    return meta


def load_weights_file(path: str) -> Dict[str, Any]:
    """Load weights for ``load_from`` / testing; returns ``{"state_dict", "meta"}``.

    ``path`` is anything :func:`read_checkpoint` reads holding rayseg's ``{state_dict, meta}``, MMSeg's
    ``{state_dict, meta, optimizer, ...}`` (the optimizer is ignored) or a bare state dict. The class
    names and palette of MMSeg 0.x (``meta.CLASSES``/``PALETTE``) and 1.x (``meta.dataset_meta``)
    checkpoints are put under ``meta["classes"]``/``meta["palette"]``; ``source`` is ``path``.
    """
    payload = read_checkpoint(path)
    # ``source`` travels with the weights so that a later mismatch error names the file, not "loaded state".
    if isinstance(payload.get("state_dict"), dict):
        return {"state_dict": payload["state_dict"], "meta": _normalise_meta(payload.get("meta") or {}),
                "source": str(path)}
    if payload and all(torch.is_tensor(v) for v in payload.values()):
        return {"state_dict": payload, "meta": {}, "source": str(path)}
    raise CheckpointError(f"{path} holds no state_dict")


def _load_file(path: str, label: str) -> Dict[str, Any]:
    """``torch.load`` of plain tensors and builtins; files with foreign objects (MMSeg 1.x's message_hub)
    fall back to a loader that stubs those objects out without running any of their code. ``label``
    names the checkpoint in errors and warnings (a URI or URL where ``path`` is a local copy)."""
    from rayseg.engine.safe_unpickle import drop_foreign, load_with_stubs

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        foreign = False
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise CheckpointError(f"cannot load checkpoint {label}: {exc}") from exc
        foreign = True
    except Exception as exc:  # torch raises several types for corrupt or truncated files
        raise CheckpointError(f"cannot load checkpoint {label}: {exc}") from exc
    if foreign:
        try:
            payload = drop_foreign(load_with_stubs(path))
        except Exception as exc:
            raise CheckpointError(f"cannot load checkpoint {label}: {exc}") from exc
        warnings.warn(f"{label} holds non-tensor Python objects (e.g. a training message hub); they were "
                      "skipped and only the weights and plain metadata were loaded", stacklevel=3)
    if not isinstance(payload, dict):
        raise CheckpointError(f"{label} is not a checkpoint: it holds a {type(payload).__name__}, not a dict")
    return payload


# The per-class output convolution of a decode/auxiliary head: the only layer whose shape follows
# num_classes, so the only one allowed to differ when fine-tuning on another dataset.
# A cascade (OCRNet) has a list of decode heads: decode_head.0/1.conv_seg are classifiers too.
_CLASSIFIER_KEY = re.compile(r"^(decode_head(?:\.\d+)?|auxiliary_head(?:\.\d+)?)\.conv_seg\.(weight|bias)$")


def _classifier_resized(key: str, theirs: tuple, ours: tuple) -> bool:
    return bool(_CLASSIFIER_KEY.match(key)) and len(theirs) == len(ours) and theirs[0] != ours[0] \
        and theirs[1:] == ours[1:]


def load_model_weights(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor], source: str,
                       strict: bool = True, allow_num_classes_change: bool = True) -> None:
    """Load ``state_dict`` into ``model`` for ``load_from``, checking everything before changing it.

    DDP's ``module.`` is stripped. Missing or unexpected keys are a ``CheckpointError`` listing them
    (a warning with ``strict=False``). A shape mismatch is an error naming key and shapes, except the
    heads' ``conv_seg`` classifiers when only num_classes differs (and ``allow_num_classes_change``):
    those stay at their initialisation and a warning says so, as when fine-tuning a Cityscapes model
    on another dataset. Evaluation should pass ``allow_num_classes_change=False``.
    """
    from rayseg.models.pretrained import compare_keys, format_mismatches

    state_dict = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}
    target = unwrap(model)
    missing, unexpected, mismatched = compare_keys(target.state_dict(), state_dict)
    resized = [m for m in mismatched if allow_num_classes_change and _classifier_resized(*m)]
    other = [m for m in mismatched if m not in resized]
    if other:
        raise CheckpointError(f"weights in {source} do not fit the model: shape mismatch for "
                              f"{format_mismatches(other)}")
    if missing or unexpected:
        message = (f"weights in {source} do not match the model: missing keys {missing[:20]}, "
                   f"unexpected keys {unexpected[:20]}")
        if strict:
            raise CheckpointError(message)
        warnings.warn(message, stacklevel=2)
    for head in sorted({_CLASSIFIER_KEY.match(k).group(1) for k, _, _ in resized}):
        theirs, ours = next((a[0], b[0]) for k, a, b in resized if k.startswith(head + ".conv_seg."))
        warnings.warn(f"{head}: num_classes differs: checkpoint {theirs}, model {ours} — classifier left at "
                      f"its initialisation (weights from {source})", stacklevel=2)
    skip = {k for k, _, _ in resized}
    target.load_state_dict({k: v for k, v in state_dict.items() if k not in skip}, strict=False)


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
