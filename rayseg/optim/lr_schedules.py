"""``lr_config``: every lr policy of MMCV 1.x (``mmcv/runner/hooks/lr_updater.py``), iteration-based.

Each policy computes what MMCV's ``<Policy>LrUpdaterHook.get_lr`` computes, and the warmup is MMCV's
``get_warmup_lr`` on top of it, but as a pure function of the iteration (``lr_at(it, base_lr)``), so a resumed
run gets exactly the lr an uninterrupted one had. ``apply(optimizer, it)`` sets every param group to its base lr
× ``lr_mult`` scheduled, and returns the lr of a group with ``lr_mult`` 1.

Policy names are MMCV's: an all-lower-case name is title-cased (``poly`` → ``Poly``), others are used as
written. ``by_epoch: true`` counts progress in epochs of the training set (``iters_per_epoch`` from the run spec);
``warmup_iters`` still counts iterations unless ``warmup_by_epoch: true``.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

import torch

from rayseg.errors import ConfigError
from rayseg.optim.schedule_base import (EpochClock, anneal_function, annealing_cos, annealing_linear,
                                        build_schedule, check_unit_range, check_warmup, is_int, is_number)
from rayseg.registry import LR_POLICIES

DEFAULT_LR_CONFIG: Dict[str, Any] = {"policy": "poly", "power": 0.9, "min_lr": 1e-4}
WHERE = "lr_config"


class LrSchedule:
    """The part every policy shares (MMCV's ``LrUpdaterHook``): progress in iterations or epochs, and warmup.

    ``warmup`` (``constant``, ``linear``, ``exp`` or None) scales the regular lr during the first
    ``warmup_iters`` iterations (epochs with ``warmup_by_epoch``), starting from ``warmup_ratio`` × it:
    constant: lr·ratio; linear: lr·(1 − (1 − it/W)(1 − ratio)); exp: lr·ratio^(1 − it/W).
    ``base_lr`` is the optimizer's ``lr``; ``max_iters`` is ``runner.max_iters``; ``iters_per_epoch`` is filled in
    by the run spec when something counts epochs.
    """

    #: False for policies MMCV defines per iteration only (Cyclic, OneCycle): ``by_epoch: true`` is refused.
    epochs_supported = True

    def __init__(self, base_lr: float, max_iters: int, by_epoch: bool = False, warmup: Optional[str] = None,
                 warmup_iters: int = 0, warmup_ratio: float = 0.1, warmup_by_epoch: bool = False,
                 iters_per_epoch: Optional[int] = None):
        if not is_number(base_lr):
            raise ConfigError(f"optimizer.lr: expected a number, got {base_lr!r}")
        if by_epoch and not self.epochs_supported:
            raise ConfigError(f"{WHERE}.by_epoch: policy {type(self).policy_label()} is defined per iteration "
                              "(MMCV supports only by_epoch: false for it); set by_epoch: false")
        self.clock = EpochClock(max_iters, bool(by_epoch), iters_per_epoch, WHERE)
        if warmup_by_epoch and not (is_int(iters_per_epoch) and iters_per_epoch >= 1):
            raise ConfigError(f"{WHERE}.warmup_by_epoch: counting warmup epochs needs the number of iterations per "
                              f"epoch of the training set, got {iters_per_epoch!r}")
        check_warmup(warmup, warmup_iters, warmup_ratio, WHERE)
        self.base_lr = float(base_lr)
        self.max_iters = self.clock.max_iters
        self.by_epoch = self.clock.by_epoch
        self.warmup, self.warmup_ratio = warmup, float(warmup_ratio)
        # MMCV: with warmup_by_epoch, warmup_iters counts epochs and becomes epochs × len(data_loader).
        self.warmup_iters = int(warmup_iters) * (iters_per_epoch if warmup_by_epoch else 1)

    @classmethod
    def policy_label(cls) -> str:
        return getattr(cls, "POLICY", cls.__name__)

    def get_lr(self, progress: int, base_lr: float) -> float:
        """The policy's regular lr at ``progress`` (an iteration, or an epoch with ``by_epoch``)."""
        raise NotImplementedError

    def regular_lr(self, it: int, base_lr: float) -> float:
        """The lr of iteration ``it`` without warmup."""
        return self.get_lr(self.clock.progress(it), base_lr)

    def lr_at(self, it: int, base_lr: Optional[float] = None) -> float:
        """The lr used for iteration ``it`` (0-based) by a group whose base lr is ``base_lr`` (default: the
        optimizer's lr, i.e. a group with lr_mult 1)."""
        lr = self.regular_lr(it, self.base_lr if base_lr is None else base_lr)
        if self.warmup is None or it >= self.warmup_iters:
            return lr
        if self.warmup == "constant":
            return lr * self.warmup_ratio
        if self.warmup == "linear":
            return lr * (1 - (1 - it / self.warmup_iters) * (1 - self.warmup_ratio))
        return lr * self.warmup_ratio ** (1 - it / self.warmup_iters)

    def apply(self, optimizer: torch.optim.Optimizer, it: int) -> float:
        """Set every group's lr for iteration ``it``; returns the lr of a group with lr_mult 1."""
        for group in optimizer.param_groups:
            group["lr"] = self.lr_at(it, self.base_lr * group.get("lr_mult", 1.0))
        return self.lr_at(it)


def _target(base_lr: float, min_lr: Optional[float], min_lr_ratio: Optional[float]) -> float:
    return base_lr * min_lr_ratio if min_lr_ratio is not None else float(min_lr)


def _one_of_min_lr(policy: str, min_lr: Any, min_lr_ratio: Any) -> None:
    if (min_lr is None) == (min_lr_ratio is None):
        given = "both" if min_lr is not None else "neither"
        raise ConfigError(f"{WHERE}: policy {policy!r} takes exactly one of min_lr and min_lr_ratio, got {given}")
    for key, value in (("min_lr", min_lr), ("min_lr_ratio", min_lr_ratio)):
        if value is not None and not is_number(value):
            raise ConfigError(f"{WHERE}.{key}: expected a number, got {value!r}")


@LR_POLICIES.register("Fixed")
class FixedLrSchedule(LrSchedule):
    """``fixed``: the base lr throughout (warmup still applies)."""

    POLICY = "fixed"

    def get_lr(self, progress: int, base_lr: float) -> float:
        return base_lr


@LR_POLICIES.register("Poly")
class PolyLrSchedule(LrSchedule):
    """``poly``: lr = (base − min_lr)·(1 − progress/max_progress)^power + min_lr (MMCV's defaults: power 1,
    min_lr 0)."""

    POLICY = "poly"

    def __init__(self, base_lr: float, max_iters: int, power: float = 1.0, min_lr: float = 0.0, **common: Any):
        super().__init__(base_lr, max_iters, **common)
        if not is_number(power) or not is_number(min_lr):
            raise ConfigError(f"{WHERE}: poly's power and min_lr must be numbers, got {power!r} and {min_lr!r}")
        self.power, self.min_lr = float(power), float(min_lr)

    def get_lr(self, progress: int, base_lr: float) -> float:
        coeff = (1 - progress / self.clock.max_progress) ** self.power
        return (base_lr - self.min_lr) * coeff + self.min_lr


@LR_POLICIES.register("Step")
class StepLrSchedule(LrSchedule):
    """``step``: lr = base·gamma^k, k = progress // step (an int), or the number of milestones already passed (a
    list); clipped below at ``min_lr`` when set."""

    POLICY = "step"

    def __init__(self, base_lr: float, max_iters: int, step: Union[int, List[int]], gamma: float = 0.1,
                 min_lr: Optional[float] = None, **common: Any):
        super().__init__(base_lr, max_iters, **common)
        if is_int(step):
            ok = step > 0
        else:
            ok = isinstance(step, (list, tuple)) and bool(step) and all(is_int(s) and s > 0 for s in step)
        if not ok:
            raise ConfigError(f"{WHERE}.step: expected a positive int or a list of positive ints, got {step!r}")
        if not is_number(gamma) or (min_lr is not None and not is_number(min_lr)):
            raise ConfigError(f"{WHERE}: step's gamma and min_lr must be numbers, got {gamma!r} and {min_lr!r}")
        self.step = step if is_int(step) else list(step)
        self.gamma, self.min_lr = float(gamma), min_lr

    def get_lr(self, progress: int, base_lr: float) -> float:
        if isinstance(self.step, int):
            exp = progress // self.step
        else:
            exp = len(self.step)
            for i, s in enumerate(self.step):
                if progress < s:
                    exp = i
                    break
        lr = base_lr * self.gamma ** exp
        return max(lr, self.min_lr) if self.min_lr is not None else lr


@LR_POLICIES.register("Exp")
class ExpLrSchedule(LrSchedule):
    """``Exp``: lr = base·gamma^progress."""

    POLICY = "Exp"

    def __init__(self, base_lr: float, max_iters: int, gamma: float, **common: Any):
        super().__init__(base_lr, max_iters, **common)
        if not is_number(gamma):
            raise ConfigError(f"{WHERE}.gamma: expected a number, got {gamma!r}")
        self.gamma = float(gamma)

    def get_lr(self, progress: int, base_lr: float) -> float:
        return base_lr * self.gamma ** progress


@LR_POLICIES.register("Inv")
class InvLrSchedule(LrSchedule):
    """``Inv``: lr = base·(1 + gamma·progress)^(−power)."""

    POLICY = "Inv"

    def __init__(self, base_lr: float, max_iters: int, gamma: float, power: float = 1.0, **common: Any):
        super().__init__(base_lr, max_iters, **common)
        if not is_number(gamma) or not is_number(power):
            raise ConfigError(f"{WHERE}: Inv's gamma and power must be numbers, got {gamma!r} and {power!r}")
        self.gamma, self.power = float(gamma), float(power)

    def get_lr(self, progress: int, base_lr: float) -> float:
        return base_lr * (1 + self.gamma * progress) ** (-self.power)


@LR_POLICIES.register("CosineAnnealing")
class CosineAnnealingLrSchedule(LrSchedule):
    """``CosineAnnealing``: annealing_cos(base, target, progress/max_progress), target = ``min_lr`` or
    base·``min_lr_ratio`` (exactly one of the two)."""

    POLICY = "CosineAnnealing"
    anneal = staticmethod(annealing_cos)

    def __init__(self, base_lr: float, max_iters: int, min_lr: Optional[float] = None,
                 min_lr_ratio: Optional[float] = None, **common: Any):
        super().__init__(base_lr, max_iters, **common)
        _one_of_min_lr(self.POLICY, min_lr, min_lr_ratio)
        self.min_lr, self.min_lr_ratio = min_lr, min_lr_ratio

    def get_lr(self, progress: int, base_lr: float) -> float:
        target = _target(base_lr, self.min_lr, self.min_lr_ratio)
        return self.anneal(base_lr, target, progress / self.clock.max_progress)


@LR_POLICIES.register("FlatCosineAnnealing")
class FlatCosineAnnealingLrSchedule(LrSchedule):
    """``FlatCosineAnnealing``: the base lr until ``start = round(max_progress·start_percent)``, then
    annealing_cos(base, target, (progress − start)/(max_progress − start))."""

    POLICY = "FlatCosineAnnealing"

    def __init__(self, base_lr: float, max_iters: int, start_percent: float = 0.75, min_lr: Optional[float] = None,
                 min_lr_ratio: Optional[float] = None, **common: Any):
        super().__init__(base_lr, max_iters, **common)
        _one_of_min_lr(self.POLICY, min_lr, min_lr_ratio)
        self.start_percent = check_unit_range(start_percent, f"{WHERE}.start_percent", False, False)
        self.min_lr, self.min_lr_ratio = min_lr, min_lr_ratio

    def get_lr(self, progress: int, base_lr: float) -> float:
        start = round(self.clock.max_progress * self.start_percent)
        if progress < start:
            return base_lr
        target = _target(base_lr, self.min_lr, self.min_lr_ratio)
        return annealing_cos(base_lr, target, (progress - start) / (self.clock.max_progress - start))


@LR_POLICIES.register("LinearAnnealing")
class LinearAnnealingLrSchedule(CosineAnnealingLrSchedule):
    """``LinearAnnealing``: annealing_linear(base, target, progress/max_progress)."""

    POLICY = "LinearAnnealing"
    anneal = staticmethod(annealing_linear)


@LR_POLICIES.register("CosineRestart")
class CosineRestartLrSchedule(LrSchedule):
    """``CosineRestart``: cosine annealing restarted after each of ``periods`` (iterations, or epochs with
    ``by_epoch``). In period i, which starts at the sum of the periods before it:
    annealing_cos(base, target, min((progress − start)/periods[i], 1), restart_weights[i]). The periods must
    cover the whole run (MMCV stops with an error past their sum)."""

    POLICY = "CosineRestart"

    def __init__(self, base_lr: float, max_iters: int, periods: List[int], restart_weights: List[float] = (1,),
                 min_lr: Optional[float] = None, min_lr_ratio: Optional[float] = None, **common: Any):
        super().__init__(base_lr, max_iters, **common)
        _one_of_min_lr(self.POLICY, min_lr, min_lr_ratio)
        if not (isinstance(periods, (list, tuple)) and periods and all(is_int(p) and p > 0 for p in periods)):
            raise ConfigError(f"{WHERE}.periods: expected a list of positive ints, got {periods!r}")
        if not (isinstance(restart_weights, (list, tuple)) and all(is_number(w) for w in restart_weights)):
            raise ConfigError(f"{WHERE}.restart_weights: expected a list of numbers, got {restart_weights!r}")
        if len(periods) != len(restart_weights):
            raise ConfigError(f"{WHERE}.restart_weights: needs one weight per period ({len(periods)} periods, "
                              f"{len(restart_weights)} weights)")
        self.periods, self.restart_weights = list(periods), [float(w) for w in restart_weights]
        self.cumulative_periods = [sum(self.periods[:i + 1]) for i in range(len(self.periods))]
        unit = "epochs" if self.by_epoch else "iterations"
        if self.cumulative_periods[-1] < self.clock.max_progress:
            raise ConfigError(f"{WHERE}.periods: they add up to {self.cumulative_periods[-1]} {unit} but the run "
                              f"lasts {self.clock.max_progress} {unit}; the periods must cover the whole run")
        self.min_lr, self.min_lr_ratio = min_lr, min_lr_ratio

    def get_lr(self, progress: int, base_lr: float) -> float:
        target = _target(base_lr, self.min_lr, self.min_lr_ratio)
        idx = next(i for i, end in enumerate(self.cumulative_periods) if progress < end)
        nearest_restart = 0 if idx == 0 else self.cumulative_periods[idx - 1]
        alpha = min((progress - nearest_restart) / self.periods[idx], 1)
        return annealing_cos(base_lr, target, alpha, self.restart_weights[idx])


def _target_ratio(value: Any, where: str) -> tuple:
    """MMCV's ``target_ratio``: a number r means (r, r/1e5), a one-element list too, else a pair."""
    if is_number(value):
        return float(value), float(value) / 1e5
    if isinstance(value, (list, tuple)) and len(value) == 1 and is_number(value[0]):
        return float(value[0]), float(value[0]) / 1e5
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(is_number(v) for v in value):
        return float(value[0]), float(value[1])
    raise ConfigError(f"{where}.target_ratio: expected a number or a list of two numbers, got {value!r}")


class CyclicPhases:
    """MMCV's cyclic phases, shared by the Cyclic lr and momentum policies.

    Each cycle lasts ``max_iters // cyclic_times`` iterations: up from ratio 1 to ``target_ratio[0]`` for
    ``int(step_ratio_up·cycle)`` iterations, then to ``target_ratio[1]``. In cycle c the amplitude shrinks by
    ``gamma^c``: the up phase ends at 1 − s + s·r0 and the down phase starts there (s = gamma^c).
    """

    def __init__(self, max_iters: int, target_ratio: Any, cyclic_times: Any, step_ratio_up: Any,
                 anneal_strategy: Any, gamma: Any, where: str):
        self.target_ratio = _target_ratio(target_ratio, where)
        if not is_int(cyclic_times) or cyclic_times < 1:
            raise ConfigError(f"{where}.cyclic_times: expected a positive int, got {cyclic_times!r}")
        self.step_ratio_up = check_unit_range(step_ratio_up, f"{where}.step_ratio_up", False, True)
        self.gamma = check_unit_range(gamma, f"{where}.gamma", True, False)
        self.anneal = anneal_function(anneal_strategy, where)
        self.max_iter_per_phase = max_iters // cyclic_times
        if self.max_iter_per_phase < 1:
            raise ConfigError(f"{where}.cyclic_times: {cyclic_times} cycles do not fit in {max_iters} iterations")
        up = int(self.step_ratio_up * self.max_iter_per_phase)
        self.phases = [(0, up, 1.0, self.target_ratio[0]),
                       (up, self.max_iter_per_phase, self.target_ratio[0], self.target_ratio[1])]

    def value(self, it: int, base: float) -> float:
        curr_iter = it % self.max_iter_per_phase
        scale = self.gamma ** (it // self.max_iter_per_phase)
        for start_iter, end_iter, start_ratio, end_ratio in self.phases:
            if start_iter <= curr_iter < end_iter:
                # As MMCV: the phase that starts at 0 gets its end scaled, the other its start (an empty up phase
                # therefore makes the down phase the scaled one).
                if start_iter == 0:
                    end_ratio = 1 - scale + end_ratio * scale
                else:
                    start_ratio = 1 - scale + start_ratio * scale
                return self.anneal(base * start_ratio, base * end_ratio,
                                   (curr_iter - start_iter) / (end_iter - start_iter))
        raise AssertionError("unreachable: the phases cover every iteration of a cycle")


@LR_POLICIES.register("Cyclic")
class CyclicLrSchedule(LrSchedule):
    """``cyclic`` (MMCV's CLR with cosine or linear annealing): see :class:`CyclicPhases`. Iteration-based only.
    The regular warmup, if set, applies on top (as in MMCV)."""

    POLICY = "cyclic"
    epochs_supported = False

    def __init__(self, base_lr: float, max_iters: int, target_ratio: Union[float, List[float]] = (10, 1e-4),
                 cyclic_times: int = 1, step_ratio_up: float = 0.4, anneal_strategy: str = "cos",
                 gamma: float = 1.0, **common: Any):
        super().__init__(base_lr, max_iters, **common)
        self.cycle = CyclicPhases(self.max_iters, target_ratio, cyclic_times, step_ratio_up, anneal_strategy, gamma,
                                  WHERE)

    def get_lr(self, progress: int, base_lr: float) -> float:
        return self.cycle.value(progress, base_lr)


@LR_POLICIES.register("OneCycle")
class OneCycleLrSchedule(LrSchedule):
    """``OneCycle`` (1cycle, MMCV's phases): the initial lr is ``max_lr / div_factor`` (the optimizer's ``lr`` is
    not used, as in MMCV); it anneals up to ``max_lr`` by iteration pct_start·total_steps − 1, then down to
    initial/``final_div_factor`` at total_steps − 1 (three_phase: back to the initial lr at 2·pct_start·total − 2
    first). ``total_steps`` defaults to ``max_iters`` and may not be smaller. Iteration-based only.

    rayseg scales ``max_lr`` by each group's ``lr_mult`` (MMCV would give every group the same ``max_lr``); a
    group with lr_mult 1 gets exactly MMCV's lr.
    """

    POLICY = "OneCycle"
    epochs_supported = False

    def __init__(self, base_lr: float, max_iters: int, max_lr: float, total_steps: Optional[int] = None,
                 pct_start: float = 0.3, anneal_strategy: str = "cos", div_factor: float = 25,
                 final_div_factor: float = 1e4, three_phase: bool = False, **common: Any):
        super().__init__(base_lr, max_iters, **common)
        if not is_number(max_lr) or max_lr <= 0:
            raise ConfigError(f"{WHERE}.max_lr: expected a positive number, got {max_lr!r} (per-group lists do not "
                              "apply: scale groups with paramwise_cfg lr_mult)")
        total = self.max_iters if total_steps is None else total_steps
        if not is_int(total) or total < self.max_iters:
            raise ConfigError(f"{WHERE}.total_steps: must be an int >= runner.max_iters ({self.max_iters}), "
                              f"got {total_steps!r}")
        pct = check_unit_range(pct_start, f"{WHERE}.pct_start", False, False)
        for key, value in (("div_factor", div_factor), ("final_div_factor", final_div_factor)):
            if not is_number(value) or value <= 0:
                raise ConfigError(f"{WHERE}.{key}: expected a positive number, got {value!r}")
        self.anneal = anneal_function(anneal_strategy, WHERE)
        if float(pct * total) - 1 == 0:
            raise ConfigError(f"{WHERE}.pct_start: pct_start × total_steps = 1 leaves the first phase no length "
                              "(MMCV divides by zero there)")
        self.max_lr, self.total_steps = float(max_lr), total
        self.div_factor, self.final_div_factor = float(div_factor), float(final_div_factor)
        self.base_lr = self.max_lr / self.div_factor  # MMCV: initial_lr = max_lr / div_factor
        # (end_iter, start factor, end factor) of each phase, as multiples of the initial lr.
        if three_phase:
            self.phases = [(float(pct * total) - 1, 1.0, self.div_factor),
                           (float(2 * pct * total) - 2, self.div_factor, 1.0),
                           (total - 1, 1.0, 1 / self.final_div_factor)]
        else:
            self.phases = [(float(pct * total) - 1, 1.0, self.div_factor),
                           (total - 1, self.div_factor, 1 / self.final_div_factor)]

    def get_lr(self, progress: int, base_lr: float) -> float:
        start_iter = 0.0
        for end_iter, start, end in self.phases:
            if progress <= end_iter:
                return self.anneal(base_lr * start, base_lr * end, (progress - start_iter) / (end_iter - start_iter))
            start_iter = end_iter
        raise ConfigError(f"{WHERE}: iteration {progress} is past OneCycle's total_steps ({self.total_steps})")


def build_lr_schedule(lr_config: Optional[Dict[str, Any]], base_lr: float, max_iters: int,
                      iters_per_epoch: Optional[int] = None) -> LrSchedule:
    """Build the schedule ``lr_config`` names (default: poly, power 0.9, min_lr 1e-4; no ``policy`` key means
    poly). Unknown policies and keys are ConfigErrors naming the key and listing what is allowed."""
    cfg = dict(lr_config) if lr_config else dict(DEFAULT_LR_CONFIG)
    cfg.setdefault("policy", "poly")
    return build_schedule(cfg, LR_POLICIES, WHERE,
                          {"base_lr": base_lr, "max_iters": max_iters, "iters_per_epoch": iters_per_epoch})
