"""``momentum_config``: MMCV 1.x's momentum policies (``mmcv/runner/hooks/momentum_updater.py``), applied each
iteration beside the lr. Default: none (the optimizer's momentum stays as configured).

"Momentum" is a group's ``momentum`` (SGD, RMSprop) or, for the Adam family, ``betas[0]``, as in MMCV. Each
group's base momentum is the value it was built with, kept in the group as ``initial_momentum`` (saved with the
optimizer state, so a resumed run schedules from the same base). Like the lr schedules, every policy is a pure
function of the iteration.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

import torch

from rayseg.errors import ConfigError
from rayseg.optim.lr_schedules import CyclicPhases
from rayseg.optim.schedule_base import (EpochClock, anneal_function, annealing_cos, build_schedule,
                                        check_unit_range, check_warmup, is_int, is_number)
from rayseg.registry import MOMENTUM_POLICIES

WHERE = "momentum_config"


def group_momentum(group: Dict[str, Any]) -> Optional[float]:
    """A param group's momentum (``momentum``, else ``betas[0]``), or None when it has neither."""
    if "momentum" in group:
        return float(group["momentum"])
    if "betas" in group:
        return float(group["betas"][0])
    return None


def set_group_momentum(group: Dict[str, Any], value: float) -> None:
    if "momentum" in group:
        group["momentum"] = value
    else:
        group["betas"] = (value, group["betas"][1])


class MomentumSchedule:
    """The part every momentum policy shares (MMCV's ``MomentumUpdaterHook``): progress in iterations or epochs
    and warmup. Momentum warmup divides the regular momentum (so it starts higher): constant: m/ratio; linear:
    m/(1 − (1 − it/W)(1 − ratio)); exp: m/ratio^(1 − it/W); ``warmup_ratio`` defaults to 0.9.
    """

    epochs_supported = True

    def __init__(self, max_iters: int, by_epoch: bool = False, warmup: Optional[str] = None, warmup_iters: int = 0,
                 warmup_ratio: float = 0.9, iters_per_epoch: Optional[int] = None):
        if by_epoch and not self.epochs_supported:
            raise ConfigError(f"{WHERE}.by_epoch: policy {getattr(self, 'POLICY', type(self).__name__)} is defined "
                              "per iteration (MMCV supports only by_epoch: false for it); set by_epoch: false")
        self.clock = EpochClock(max_iters, bool(by_epoch), iters_per_epoch, WHERE)
        check_warmup(warmup, warmup_iters, warmup_ratio, WHERE)
        self.max_iters = self.clock.max_iters
        self.warmup, self.warmup_iters, self.warmup_ratio = warmup, int(warmup_iters), float(warmup_ratio)

    def get_momentum(self, progress: int, base_momentum: float) -> float:
        """The policy's regular momentum at ``progress`` (an iteration, or an epoch with ``by_epoch``)."""
        raise NotImplementedError

    def momentum_at(self, it: int, base_momentum: float) -> float:
        """The momentum used for iteration ``it`` by a group whose base momentum is ``base_momentum``."""
        m = self.get_momentum(self.clock.progress(it), base_momentum)
        if self.warmup is None or it >= self.warmup_iters:
            return m
        if self.warmup == "constant":
            return m / self.warmup_ratio
        if self.warmup == "linear":
            return m / (1 - (1 - it / self.warmup_iters) * (1 - self.warmup_ratio))
        return m / self.warmup_ratio ** (1 - it / self.warmup_iters)

    def check(self, optimizer: torch.optim.Optimizer) -> None:
        """Refuse an optimizer with no momentum to schedule (neither ``momentum`` nor ``betas``)."""
        if any(group_momentum(g) is None for g in optimizer.param_groups):
            raise ConfigError(f"{WHERE}: optimizer {type(optimizer).__name__} has neither momentum nor betas to "
                              "schedule; remove momentum_config or use e.g. SGD (momentum) or AdamW (betas[0])")

    def apply(self, optimizer: torch.optim.Optimizer, it: int) -> Optional[float]:
        """Set every group's momentum for iteration ``it``; returns the first group's."""
        self.check(optimizer)
        first = None
        for group in optimizer.param_groups:
            base = group.setdefault("initial_momentum", group_momentum(group))
            value = self.momentum_at(it, base)
            set_group_momentum(group, value)
            first = value if first is None else first
        return first


@MOMENTUM_POLICIES.register("Step")
class StepMomentumSchedule(MomentumSchedule):
    """``step``: momentum = base·gamma^k (k as in the step lr policy), clipped below at ``min_momentum``."""

    POLICY = "step"

    def __init__(self, max_iters: int, step: Union[int, List[int]], gamma: float = 0.5,
                 min_momentum: Optional[float] = None, **common: Any):
        super().__init__(max_iters, **common)
        ok = step > 0 if is_int(step) else (isinstance(step, (list, tuple)) and bool(step)
                                              and all(is_int(s) and s > 0 for s in step))
        if not ok:
            raise ConfigError(f"{WHERE}.step: expected a positive int or a list of positive ints, got {step!r}")
        if not is_number(gamma) or (min_momentum is not None and not is_number(min_momentum)):
            raise ConfigError(f"{WHERE}: gamma and min_momentum must be numbers, got {gamma!r}, {min_momentum!r}")
        self.step = step if is_int(step) else list(step)
        self.gamma, self.min_momentum = float(gamma), min_momentum

    def get_momentum(self, progress: int, base_momentum: float) -> float:
        if isinstance(self.step, int):
            exp = progress // self.step
        else:
            exp = next((i for i, s in enumerate(self.step) if progress < s), len(self.step))
        m = base_momentum * self.gamma ** exp
        return max(m, self.min_momentum) if self.min_momentum is not None else m


@MOMENTUM_POLICIES.register("CosineAnnealing")
class CosineAnnealingMomentumSchedule(MomentumSchedule):
    """``CosineAnnealing``: annealing_cos(base, target, progress/max_progress), target = ``min_momentum`` or
    base·``min_momentum_ratio`` (exactly one)."""

    POLICY = "CosineAnnealing"

    def __init__(self, max_iters: int, min_momentum: Optional[float] = None,
                 min_momentum_ratio: Optional[float] = None, **common: Any):
        super().__init__(max_iters, **common)
        if (min_momentum is None) == (min_momentum_ratio is None):
            raise ConfigError(f"{WHERE}: CosineAnnealing takes exactly one of min_momentum and min_momentum_ratio")
        for key, value in (("min_momentum", min_momentum), ("min_momentum_ratio", min_momentum_ratio)):
            if value is not None and not is_number(value):
                raise ConfigError(f"{WHERE}.{key}: expected a number, got {value!r}")
        self.min_momentum, self.min_momentum_ratio = min_momentum, min_momentum_ratio

    def get_momentum(self, progress: int, base_momentum: float) -> float:
        target = (base_momentum * self.min_momentum_ratio if self.min_momentum_ratio is not None
                  else float(self.min_momentum))
        return annealing_cos(base_momentum, target, progress / self.clock.max_progress)


@MOMENTUM_POLICIES.register("Cyclic")
class CyclicMomentumSchedule(MomentumSchedule):
    """``cyclic``: MMCV's cyclic momentum, the lr's cyclic phases with momentum ratios (default: down to
    0.85/0.95 of the base while the lr goes up, back to the base after). Iteration-based only."""

    POLICY = "cyclic"
    epochs_supported = False

    def __init__(self, max_iters: int, target_ratio: Union[float, List[float]] = (0.85 / 0.95, 1.0),
                 cyclic_times: int = 1, step_ratio_up: float = 0.4, anneal_strategy: str = "cos",
                 gamma: float = 1.0, **common: Any):
        super().__init__(max_iters, **common)
        self.cycle = CyclicPhases(self.max_iters, target_ratio, cyclic_times, step_ratio_up, anneal_strategy, gamma,
                                  WHERE)

    def get_momentum(self, progress: int, base_momentum: float) -> float:
        return self.cycle.value(progress, base_momentum)


@MOMENTUM_POLICIES.register("OneCycle")
class OneCycleMomentumSchedule(MomentumSchedule):
    """``OneCycle``: from ``max_momentum`` down to ``base_momentum`` by iteration pct_start·max_iters − 1, then
    back up to ``max_momentum`` at max_iters − 1 (three_phase: back up at 2·pct_start·max_iters − 2, then held).
    The groups' own momentum is not used (MMCV sets it to max_momentum). Iteration-based only."""

    POLICY = "OneCycle"
    epochs_supported = False

    def __init__(self, max_iters: int, base_momentum: float = 0.85, max_momentum: float = 0.95,
                 pct_start: float = 0.3, anneal_strategy: str = "cos", three_phase: bool = False, **common: Any):
        super().__init__(max_iters, **common)
        for key, value in (("base_momentum", base_momentum), ("max_momentum", max_momentum)):
            if not is_number(value):
                raise ConfigError(f"{WHERE}.{key}: expected a number, got {value!r}")
        pct = check_unit_range(pct_start, f"{WHERE}.pct_start", False, False)
        self.anneal = anneal_function(anneal_strategy, WHERE)
        lo, hi, n = float(base_momentum), float(max_momentum), self.max_iters
        if float(pct * n) - 1 == 0:
            raise ConfigError(f"{WHERE}.pct_start: pct_start × max_iters = 1 leaves the first phase no length")
        if three_phase:
            self.phases = [(float(pct * n) - 1, hi, lo), (float(2 * pct * n) - 2, lo, hi), (n - 1, hi, hi)]
        else:
            self.phases = [(float(pct * n) - 1, hi, lo), (n - 1, lo, hi)]

    def get_momentum(self, progress: int, base_momentum: float) -> float:
        start_iter = 0.0
        for i, (end_iter, start, end) in enumerate(self.phases):
            # MMCV: the last phase also takes any iteration past its end.
            if progress <= end_iter or i == len(self.phases) - 1:
                return self.anneal(start, end, (progress - start_iter) / (end_iter - start_iter))
            start_iter = end_iter
        raise AssertionError("unreachable")


def build_momentum_schedule(momentum_config: Optional[Dict[str, Any]], max_iters: int,
                            iters_per_epoch: Optional[int] = None) -> Optional[MomentumSchedule]:
    """The schedule ``momentum_config`` names, or None without one. Errors name ``momentum_config.<key>``."""
    if not momentum_config:
        return None
    if not isinstance(momentum_config, dict):
        raise ConfigError(f"{WHERE}: expected a mapping with a policy, got {momentum_config!r}")
    if "policy" not in momentum_config:
        raise ConfigError(f"{WHERE}.policy: required (one of {', '.join(MOMENTUM_POLICIES.keys())})")
    return build_schedule(momentum_config, MOMENTUM_POLICIES, WHERE,
                          {"max_iters": max_iters, "iters_per_epoch": iters_per_epoch})
