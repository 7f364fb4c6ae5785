"""``optimizer``: the optimizer registry and ``build_optimizer``.

Every ``torch.optim`` optimizer is registered under its class name (``SGD``, ``AdamW``, ...). A user optimizer
registers itself by name with ``@OPTIMIZERS.register()`` (a ``torch.optim.Optimizer`` subclass whose constructor
takes the param groups first, then keyword arguments: the YAML keys), in a module imported by ``rayseg.optim`` so
the Ray workers see it too. ``optimizer.constructor`` (default ``DefaultOptimizerConstructor``) turns the model
into param groups from ``optimizer.paramwise_cfg``.
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, Optional

import torch

from rayseg.errors import ConfigError
from rayseg.optim.constructors import build_constructor
from rayseg.registry import OPTIMIZERS, check_kwargs

DEFAULT_CONSTRUCTOR = "DefaultOptimizerConstructor"


def _register_torch_optimizers() -> None:
    """Register every optimizer class ``torch.optim`` exports under its own name (as MMCV does)."""
    for name in dir(torch.optim):
        obj = getattr(torch.optim, name)
        if (inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer) and obj is not torch.optim.Optimizer
                and name not in OPTIMIZERS):
            OPTIMIZERS.register(name)(obj)


_register_torch_optimizers()


def build_optimizer(model: torch.nn.Module, optimizer_cfg: Dict[str, Any]) -> torch.optim.Optimizer:
    """Build ``optimizer.type`` (a registered optimizer) over ``model``'s param groups, as made by
    ``optimizer.constructor`` from ``optimizer.paramwise_cfg``; the other keys are the optimizer's arguments.

    Every param group carries ``lr_mult`` so the lr schedule can scale it.
    """
    cfg = dict(optimizer_cfg)
    type_name = cfg.pop("type", "SGD")
    constructor_name = cfg.pop("constructor", DEFAULT_CONSTRUCTOR)
    paramwise_cfg = cfg.pop("paramwise_cfg", None) or {}
    if not isinstance(type_name, str):
        raise ConfigError(f"optimizer.type: expected an optimizer name, got {type_name!r}")
    try:
        optim_cls = OPTIMIZERS.get(type_name)
    except ConfigError as exc:
        raise ConfigError(f"optimizer.type: {exc}") from None
    check_kwargs(optim_cls, cfg, f"optimizer {type_name!r}")
    if "lr" not in cfg:
        raise ConfigError("optimizer.lr is required")
    constructor = build_constructor(constructor_name, paramwise_cfg)
    return constructor(model, optim_cls, cfg)


def check_grad_clip(grad_clip: Optional[Dict[str, Any]]) -> None:
    """``optimizer_config.grad_clip`` must be ``clip_grad_norm_`` arguments, with ``max_norm``."""
    if not grad_clip:
        return
    if not isinstance(grad_clip, dict):
        raise ConfigError(f"optimizer_config.grad_clip: expected a mapping such as {{max_norm: 35}}, got {grad_clip!r}")
    accepted = [p for p in inspect.signature(torch.nn.utils.clip_grad_norm_).parameters if p != "parameters"]
    for key in grad_clip:
        if key not in accepted:
            raise ConfigError(f"optimizer_config.grad_clip.{key}: not an argument of clip_grad_norm_; it takes: "
                              f"{', '.join(accepted)}")
    if "max_norm" not in grad_clip:
        raise ConfigError("optimizer_config.grad_clip.max_norm: required (the largest total gradient norm)")
    max_norm = grad_clip["max_norm"]
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or max_norm <= 0:
        raise ConfigError(f"optimizer_config.grad_clip.max_norm: expected a positive number, got {max_norm!r}")
