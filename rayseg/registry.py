"""Registries for the parts that configs name, and ``build`` to make them from a config dict.

One registry per kind (models, backbones, heads, losses, transforms, datasets, optimizers and their
constructors, lr and momentum policies). A class registers itself with a decorator;
``build({"type": "Name", **kwargs}, REGISTRY)`` calls its constructor with the remaining keys. Unknown type
names and unknown constructor arguments are errors that name the offending value and suggest close matches.
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Dict, Iterable, Optional

from rayseg.errors import ConfigError


class Registry:
    """A name → class (or function) table for one kind of part."""

    def __init__(self, name: str):
        self.name = name
        self._entries: Dict[str, Callable] = {}

    def register(self, name: Optional[str] = None, force: bool = False) -> Callable:
        """Decorator: ``@BACKBONES.register()`` registers the class under its own name."""

        def decorator(obj: Callable) -> Callable:
            key = name or obj.__name__
            if key in self._entries and not force and self._entries[key] is not obj:
                raise KeyError(f"{key!r} is already registered in the {self.name} registry")
            self._entries[key] = obj
            return obj

        return decorator

    # MMCV spelling, so code ported from MMSeg reads naturally.
    register_module = register

    def get(self, name: str) -> Callable:
        """Return the entry called ``name``; an unknown name raises ConfigError with suggestions."""
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), list(self._entries), n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(
                f"unknown {self.name} type {name!r}.{hint} Registered: {', '.join(sorted(self._entries))}"
            )
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def keys(self) -> Iterable[str]:
        return sorted(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.name!r}, {sorted(self._entries)})"


MODELS = Registry("model")
BACKBONES = Registry("backbone")
NECKS = Registry("neck")
HEADS = Registry("head")
LOSSES = Registry("loss")
PIXEL_SAMPLERS = Registry("pixel sampler")
TRANSFORMS = Registry("transform")
DATASETS = Registry("dataset")
# ``optimizer.type``: every torch.optim class is registered under its own name by rayseg.optim; user optimizers
# register with ``@OPTIMIZERS.register()``. ``optimizer.constructor`` names an entry of OPTIMIZER_CONSTRUCTORS.
OPTIMIZERS = Registry("optimizer")
OPTIMIZER_CONSTRUCTORS = Registry("optimizer constructor")
# ``lr_config.policy`` / ``momentum_config.policy``, under MMCV's names (``poly``, ``CosineAnnealing``, ...).
LR_POLICIES = Registry("lr policy")
MOMENTUM_POLICIES = Registry("momentum policy")


def check_kwargs(target: Callable, kwargs: Dict[str, Any], where: str) -> None:
    """Raise ConfigError when ``kwargs`` holds a key ``target``'s signature does not accept."""
    sig = inspect.signature(target)
    params = sig.parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    for key in kwargs:
        if key not in accepted:
            close = difflib.get_close_matches(key, accepted, n=3, cutoff=0.5)
            hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ConfigError(
                f"{where}: unknown argument {key!r}.{hint} Accepted: {', '.join(accepted)}"
            )


def build(cfg: Dict[str, Any], registry: Registry, **default_args: Any) -> Any:
    """Instantiate ``cfg['type']`` from ``registry`` with the other keys as keyword arguments.

    ``default_args`` fill in keys the config does not set. The config dict is not modified.
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"expected a dict with a 'type' key to build a {registry.name}, got {cfg!r}")
    if "type" not in cfg:
        raise ConfigError(f"{registry.name} config has no 'type' key: {cfg!r}")
    kwargs = dict(cfg)
    type_name = kwargs.pop("type")
    target = registry.get(type_name) if isinstance(type_name, str) else type_name
    for key, value in default_args.items():
        kwargs.setdefault(key, value)
    where = f"{registry.name} {type_name!r}"
    check_kwargs(target, kwargs, where)
    try:
        return target(**kwargs)
    except ConfigError:
        raise
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
