"""Optimizer construction (with MMSeg's ``paramwise_cfg``) and the iteration-based lr schedule."""
from __future__ import annotations

import math
from typing import Any, Dict, List

import torch

from rayseg.errors import ConfigError
from rayseg.registry import check_kwargs


def _param_groups(model: torch.nn.Module, base_lr: float, base_wd: float,
                  paramwise_cfg: Dict[str, Any]) -> List[Dict[str, Any]]:
    """One group per parameter, with lr/decay multipliers from ``custom_keys``.

    As in MMCV's DefaultOptimizerConstructor, the longest matching key wins (ties broken
    alphabetically), and a key matches when it is a substring of the parameter name.
    """
    custom_keys: Dict[str, Dict[str, float]] = paramwise_cfg.get("custom_keys", {}) or {}
    unknown = set(paramwise_cfg) - {"custom_keys"}
    if unknown:
        raise ConfigError(f"optimizer.paramwise_cfg: unsupported keys {sorted(unknown)}; supported: custom_keys")
    for key, mults in custom_keys.items():
        bad = set(mults) - {"lr_mult", "decay_mult"}
        if bad:
            raise ConfigError(f"optimizer.paramwise_cfg.custom_keys.{key}: unknown keys {sorted(bad)}; "
                              "allowed: lr_mult, decay_mult")
    sorted_keys = sorted(custom_keys, key=lambda k: (-len(k), k))
    groups = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr_mult, decay_mult = 1.0, 1.0
        for key in sorted_keys:
            if key in name:
                lr_mult = float(custom_keys[key].get("lr_mult", 1.0))
                decay_mult = float(custom_keys[key].get("decay_mult", 1.0))
                break
        groups.append({"params": [param], "lr": base_lr * lr_mult,
                       "weight_decay": base_wd * decay_mult, "lr_mult": lr_mult, "name": name})
    return groups


def build_optimizer(model: torch.nn.Module, optimizer_cfg: Dict[str, Any]) -> torch.optim.Optimizer:
    """Build ``torch.optim.<type>`` from an MMSeg-style optimizer dict.

    Every param group remembers its ``lr_mult`` so the schedule can scale each group.
    """
    cfg = dict(optimizer_cfg)
    type_name = cfg.pop("type", "SGD")
    paramwise_cfg = cfg.pop("paramwise_cfg", None) or {}
    optim_cls = getattr(torch.optim, str(type_name), None)
    if not (isinstance(optim_cls, type) and issubclass(optim_cls, torch.optim.Optimizer)):
        raise ConfigError(f"optimizer.type: unknown optimizer {type_name!r} (any torch.optim class, e.g. SGD, AdamW)")
    check_kwargs(optim_cls, cfg, f"optimizer {type_name!r}")
    if "lr" not in cfg:
        raise ConfigError("optimizer.lr is required")
    groups = _param_groups(model, float(cfg["lr"]), float(cfg.get("weight_decay", 0.0)), paramwise_cfg)
    # The per-group entries override these defaults; the extra keys ride along in param_groups.
    return optim_cls(groups, **cfg)


class PolyLrSchedule:
    """MMSeg's iteration-based ``poly`` policy with optional warmup.

    lr(t) = (base − min_lr)·(1 − t/T)^power + min_lr, and during warmup the regular lr is scaled by
    ``warmup_ratio`` rising linearly to 1 (``linear``), held (``constant``) or ``exp``.
    """

    def __init__(self, base_lr: float, max_iters: int, power: float = 1.0, min_lr: float = 0.0,
                 warmup: str | None = None, warmup_iters: int = 0, warmup_ratio: float = 0.1,
                 policy: str = "poly", by_epoch: bool = False):
        if policy != "poly":
            raise ConfigError(f"lr_config.policy: only 'poly' is supported, got {policy!r}")
        if by_epoch:
            raise ConfigError("lr_config.by_epoch: rayseg trains by iteration; set by_epoch: false")
        if warmup not in (None, "linear", "constant", "exp"):
            raise ConfigError(f"lr_config.warmup: expected linear, constant, exp or null, got {warmup!r}")
        self.base_lr, self.max_iters, self.power, self.min_lr = base_lr, max_iters, power, min_lr
        self.warmup, self.warmup_iters, self.warmup_ratio = warmup, warmup_iters, warmup_ratio

    def regular_lr(self, it: int, base_lr: float) -> float:
        coeff = (1 - it / self.max_iters) ** self.power
        return (base_lr - self.min_lr) * coeff + self.min_lr

    def lr_at(self, it: int, base_lr: float | None = None) -> float:
        """The learning rate used for iteration ``it`` (0-based) for a group whose base lr is ``base_lr``."""
        base = self.base_lr if base_lr is None else base_lr
        lr = self.regular_lr(it, base)
        if self.warmup is None or it >= self.warmup_iters:
            return lr
        if self.warmup == "constant":
            return lr * self.warmup_ratio
        if self.warmup == "linear":
            k = (1 - it / self.warmup_iters) * (1 - self.warmup_ratio)
            return lr * (1 - k)
        k = self.warmup_ratio ** (1 - it / self.warmup_iters)
        return lr * k

    def apply(self, optimizer: torch.optim.Optimizer, it: int) -> float:
        """Set every group's lr for iteration ``it``; returns the lr of a group with lr_mult 1."""
        for group in optimizer.param_groups:
            group["lr"] = self.lr_at(it, self.base_lr * group.get("lr_mult", 1.0))
        return self.lr_at(it)


def build_lr_schedule(lr_config: Dict[str, Any], base_lr: float, max_iters: int) -> PolyLrSchedule:
    """Build the schedule from ``lr_config``; unknown keys are errors."""
    cfg = dict(lr_config or {"policy": "poly", "power": 0.9, "min_lr": 1e-4})
    check_kwargs(PolyLrSchedule, cfg, "lr_config")
    return PolyLrSchedule(base_lr=base_lr, max_iters=max_iters, **cfg)


def is_finite(value: torch.Tensor) -> bool:
    return bool(torch.isfinite(value).all()) if torch.is_tensor(value) else math.isfinite(value)
