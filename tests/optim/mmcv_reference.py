"""MMCV 1.x's lr and momentum updater hooks, re-stated for the tests.

Each policy's ``get_lr``/``get_momentum`` is written out as a closed form from MMCV's
``mmcv/runner/hooks/lr_updater.py`` and ``momentum_updater.py`` (the function it restates is named in each
docstring), and ``hook_values`` replays the hooks' call sequence over a run: ``before_train_epoch`` at the start
of every epoch of an ``EpochBasedRunner`` (``by_epoch``) and ``before_train_iter`` before every iteration,
each setting the value the way the hook does (warmup included). rayseg's schedules are pure functions of the
iteration; these tests check that they equal what MMCV's stateful hooks set at every iteration.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence


def cos_anneal(start: float, end: float, factor: float, weight: float = 1.0) -> float:
    """``annealing_cos``: half a cosine from weight·start + (1 − weight)·end down to end."""
    return end + 0.5 * weight * (start - end) * (math.cos(math.pi * factor) + 1)


def linear_anneal(start: float, end: float, factor: float) -> float:
    """``annealing_linear``."""
    return start + (end - start) * factor


# --- regular values: f(progress, it) for a group with base value ``base`` -------------------------------------

def poly(base: float, max_progress: int, power: float = 1.0, min_lr: float = 0.0) -> Callable:
    """``PolyLrUpdaterHook.get_lr``."""
    return lambda p, it: (base - min_lr) * (1 - p / max_progress) ** power + min_lr


def step(base: float, steps, gamma: float = 0.1, min_lr: Optional[float] = None) -> Callable:
    """``StepLrUpdaterHook.get_lr``: an int decays every ``steps``; a list counts the milestones reached."""
    def f(p, it):
        k = p // steps if isinstance(steps, int) else sum(1 for s in steps if p >= s)
        lr = base * gamma ** k
        return lr if min_lr is None else max(lr, min_lr)
    return f


def exp(base: float, gamma: float) -> Callable:
    """``ExpLrUpdaterHook.get_lr``."""
    return lambda p, it: base * gamma ** p


def inv(base: float, gamma: float, power: float = 1.0) -> Callable:
    """``InvLrUpdaterHook.get_lr``."""
    return lambda p, it: base * (1 + gamma * p) ** (-power)


def cosine(base: float, max_progress: int, target: float) -> Callable:
    """``CosineAnnealingLrUpdaterHook.get_lr`` (``target``: min_lr, or base × min_lr_ratio)."""
    return lambda p, it: cos_anneal(base, target, p / max_progress)


def flat_cosine(base: float, max_progress: int, target: float, start_percent: float) -> Callable:
    """``FlatCosineAnnealingLrUpdaterHook.get_lr``."""
    start = round(max_progress * start_percent)
    return lambda p, it: base if p < start else cos_anneal(base, target, (p - start) / (max_progress - start))


def linear(base: float, max_progress: int, target: float) -> Callable:
    """``LinearAnnealingLrUpdaterHook.get_lr``."""
    return lambda p, it: linear_anneal(base, target, p / max_progress)


def cosine_restart(base: float, periods: Sequence[int], weights: Sequence[float], target: float) -> Callable:
    """``CosineRestartLrUpdaterHook.get_lr`` with ``get_position_from_periods``."""
    def f(p, it):
        ends = [sum(periods[:i + 1]) for i in range(len(periods))]
        i = min(k for k, end in enumerate(ends) if p < end)
        start = ends[i - 1] if i else 0
        return cos_anneal(base, target, min((p - start) / periods[i], 1), weights[i])
    return f


def cyclic(base: float, max_iters: int, r0: float, r1: float, times: int = 1, up_ratio: float = 0.4,
           gamma: float = 1.0, anneal: Callable = cos_anneal) -> Callable:
    """``CyclicLrUpdaterHook.get_lr`` (and ``CyclicMomentumUpdaterHook.get_momentum``): cycle c is scaled by
    s = gamma^c; the phase starting at iteration 0 of the cycle has its end ratio scaled, the other its start."""
    length = max_iters // times
    up = int(up_ratio * length)

    def f(p, it):
        j, s = it % length, gamma ** (it // length)
        if j < up:
            return anneal(base, base * (1 - s + s * r0), j / up)
        if up == 0:  # the down phase then starts at iteration 0 of the cycle: MMCV scales its end
            return anneal(base * r0, base * (1 - s + s * r1), j / length)
        return anneal(base * (1 - s + s * r0), base * r1, (j - up) / (length - up))
    return f


def one_cycle(max_lr: float, total: int, pct: float = 0.3, div: float = 25.0, final_div: float = 1e4,
              three_phase: bool = False, anneal: Callable = cos_anneal, lr_mult: float = 1.0) -> Callable:
    """``OneCycleLrUpdaterHook.before_run``/``get_lr``: the group's base lr is max_lr / div_factor."""
    base = max_lr * lr_mult / div
    if three_phase:
        phases = [(pct * total - 1, 1, div), (2 * pct * total - 2, div, 1), (total - 1, 1, 1 / final_div)]
    else:
        phases = [(pct * total - 1, 1, div), (total - 1, div, 1 / final_div)]

    def f(p, it):
        start = 0
        for end, a, b in phases:
            if it <= end:
                return anneal(base * a, base * b, (it - start) / (end - start))
            start = end
    return f


def one_cycle_momentum(max_iters: int, low: float = 0.85, high: float = 0.95, pct: float = 0.3,
                       three_phase: bool = False, anneal: Callable = cos_anneal) -> Callable:
    """``OneCycleMomentumUpdaterHook.get_momentum``: max → base → max (three_phase: then held at max); the last
    phase takes any later iteration."""
    if three_phase:
        phases = [(pct * max_iters - 1, high, low), (2 * pct * max_iters - 2, low, high), (max_iters - 1, high, high)]
    else:
        phases = [(pct * max_iters - 1, high, low), (max_iters - 1, low, high)]

    def f(p, it):
        start = 0
        for i, (end, a, b) in enumerate(phases):
            if it <= end or i == len(phases) - 1:
                return anneal(a, b, (it - start) / (end - start))
            start = end
    return f


# --- the hooks' call sequence ---------------------------------------------------------------------------------

def lr_warmup(kind: str, value: float, it: int, warmup_iters: int, ratio: float) -> float:
    """``LrUpdaterHook.get_warmup_lr``."""
    if kind == "constant":
        return value * ratio
    if kind == "linear":
        return value * (1 - (1 - it / warmup_iters) * (1 - ratio))
    return value * ratio ** (1 - it / warmup_iters)


def momentum_warmup(kind: str, value: float, it: int, warmup_iters: int, ratio: float) -> float:
    """``MomentumUpdaterHook.get_warmup_momentum`` (the regular momentum divided by the lr's warmup factor)."""
    if kind == "constant":
        return value / ratio
    if kind == "linear":
        return value / (1 - (1 - it / warmup_iters) * (1 - ratio))
    return value / ratio ** (1 - it / warmup_iters)


def hook_values(regular: Callable, max_iters: int, warmup: Optional[str] = None, warmup_iters: int = 0,
                warmup_ratio: float = 0.1, by_epoch: bool = False, epoch_len: Optional[int] = None,
                warmup_by_epoch: bool = False, warm: Callable = lr_warmup, initial: float = float("nan")
                ) -> List[float]:
    """The value the hook has set when iteration ``it`` runs, for it = 0..max_iters−1.

    ``by_epoch``: an EpochBasedRunner calls ``before_train_epoch`` (regular value of the epoch) at every epoch
    start, then ``before_train_iter`` only touches the warmup iterations (``cur_iter > warmup_iters``: nothing;
    ``==``: the regular value; ``<``: warmed up). Otherwise ``before_train_iter`` sets the regular value of the
    iteration, warmed up while ``cur_iter < warmup_iters``.
    """
    w_iters = warmup_iters * epoch_len if warmup_by_epoch else warmup_iters
    values, current, regular_now = [], initial, None
    for it in range(max_iters):
        if by_epoch:
            if it % epoch_len == 0:
                regular_now = regular(it // epoch_len, it)
                current = regular_now
            if warmup is not None and it <= w_iters:
                current = regular_now if it == w_iters else warm(warmup, regular_now, it, w_iters, warmup_ratio)
        else:
            regular_now = regular(it, it)
            use_warmup = warmup is not None and it < w_iters
            current = warm(warmup, regular_now, it, w_iters, warmup_ratio) if use_warmup else regular_now
        values.append(current)
    return values
