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
    """A name → class (or function) table for one kind of part.

    ``adapt``: called with every object ``build`` makes from this registry, returning the object to use
    (the loss registry wraps MMSeg-style user losses so the decode heads can call them; see ``LOSSES``).
    """

    def __init__(self, name: str, adapt: Optional[Callable[[Any], Any]] = None):
        self.name = name
        self._entries: Dict[str, Callable] = {}
        self.adapt = adapt

    def register(self, name: Any = None, force: bool = False, module: Optional[Callable] = None) -> Callable:
        """Register a class (or function) under its own name or ``name``.

        Every spelling MMCV accepts works, so parts written for MMSeg register unchanged:
        ``@REG.register()``, ``@REG.register("Name")``, ``@REG.register_module()``, ``@REG.register_module``
        (no parentheses, as MMSeg 0.x's guides write it), ``@REG.register_module(name=..., force=True)``
        and ``REG.register_module(module=cls)``. ``name`` may be a list of names. Registering another
        object under a taken name raises ``KeyError`` unless ``force``.
        """
        if isinstance(name, type) or (callable(name) and not isinstance(name, str)):
            # ``@REG.register_module`` without parentheses: the decorated class arrives as ``name``.
            return self._add(name, None, force)
        if module is not None:
            return self._add(module, name, force)
        return lambda obj: self._add(obj, name, force)

    # MMCV spelling, so code ported from MMSeg reads naturally.
    register_module = register

    def _add(self, obj: Callable, name: Any, force: bool) -> Callable:
        names = [name] if name is None or isinstance(name, str) else list(name)
        for key in names:
            key = key or obj.__name__
            if not isinstance(key, str):
                raise TypeError(f"{self.name} registry: a name must be a string, got {key!r}")
            if key in self._entries and not force and self._entries[key] is not obj:
                raise KeyError(f"{key!r} is already registered in the {self.name} registry "
                               f"(by {_where(self._entries[key])}); pass force=True to replace it")
            self._entries[key] = obj
        return obj

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register throw-away parts clean up with this)."""
        self._entries.pop(name, None)

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


def _where(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _adapt_loss(loss: Any) -> Any:
    # Imported when a loss is built: the models package imports this module.
    from rayseg.models.losses.utils import adapt_loss

    return adapt_loss(loss)


def _adapt_backbone(backbone: Any) -> Any:
    from rayseg.models.compat import init_foreign_backbone

    return init_foreign_backbone(backbone)


MODELS = Registry("model")
# A backbone written for MMSeg on plain ``nn.Module`` gets its ``init_weights()`` called once built, which
# MMSeg's segmentor does for it; rayseg's own backbones initialise themselves.
BACKBONES = Registry("backbone", adapt=_adapt_backbone)
NECKS = Registry("neck")
HEADS = Registry("head")
# Losses written as in MMSeg's guide (``forward(pred, target, weight, avg_factor, reduction_override)``, no
# ``ignore_index``, no ``loss_name``) are wrapped so the decode heads can call them (rayseg.models.losses.utils).
LOSSES = Registry("loss", adapt=_adapt_loss)
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
# ``custom_hooks``: classes deriving from ``rayseg.engine.hooks.Hook``, run by the training workers.
HOOKS = Registry("hook")


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
                f"{where}: unknown argument {key!r}.{hint} Accepted: {', '.join(accepted) or '(none)'}"
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
        obj = target(**kwargs)
    except ConfigError:
        raise
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    return registry.adapt(obj) if registry.adapt is not None else obj
