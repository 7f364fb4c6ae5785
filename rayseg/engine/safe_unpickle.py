"""Load checkpoints that carry foreign Python objects (e.g. MMSeg 1.x training checkpoints) safely.

MMSeg 1.x saves mmengine's ``message_hub`` (HistoryBuffer objects, numpy arrays) next to the weights, so
``torch.load(weights_only=True)`` refuses the file. Unpickling it fully would run arbitrary code from the
file. Instead every class outside a small allow-list of tensor-rebuilding helpers is replaced by an inert
stub: the tensors and plain containers come through, everything else becomes a placeholder that is
then dropped.
"""
from __future__ import annotations

import pickle
import types
from typing import Any

import torch

_ALLOWED = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("torch", "device"),
}


class ForeignObject:
    """Stands in for any object of a class the checkpoint loader does not trust."""

    def __init__(self, *args: Any, **kwargs: Any):
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> "ForeignObject":
        return ForeignObject()


class _StubUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and (name.endswith("Storage") or isinstance(getattr(torch, name, None), torch.dtype)):
            return getattr(torch, name)
        return ForeignObject


# torch.load takes a pickle *module*; this one differs from pickle only in its Unpickler.
stub_pickle_module = types.ModuleType("rayseg_stub_pickle")
stub_pickle_module.__dict__.update({k: getattr(pickle, k) for k in ("load", "loads", "dump", "dumps")})
stub_pickle_module.Unpickler = _StubUnpickler


def load_with_stubs(path: str) -> Any:
    """``torch.load`` with untrusted classes replaced by :class:`ForeignObject` (nothing from the file runs)."""
    return torch.load(path, map_location="cpu", weights_only=False, pickle_module=stub_pickle_module)


def drop_foreign(obj: Any) -> Any:
    """Remove :class:`ForeignObject` placeholders from nested dicts and lists."""
    if isinstance(obj, dict):
        return {k: drop_foreign(v) for k, v in obj.items() if not isinstance(v, ForeignObject)}
    if isinstance(obj, (list, tuple)):
        return type(obj)(drop_foreign(v) for v in obj if not isinstance(v, ForeignObject))
    return obj
