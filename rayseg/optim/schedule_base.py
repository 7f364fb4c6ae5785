"""What the lr and momentum schedules share: MMCV's annealing functions, its policy spelling, epochs of the
training set, warmup validation, and the key check that names a wrong ``lr_config``/``momentum_config`` key.

Every schedule is a pure function of the iteration: the value for iteration ``it`` depends only on ``it`` and
the config, never on what happened before, so a run resumed at iteration k gets exactly the value an
uninterrupted run had there.
"""
from __future__ import annotations

import difflib
import inspect
import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from rayseg.errors import ConfigError
from rayseg.registry import Registry

WARMUPS = ("constant", "linear", "exp")
ANNEAL_STRATEGIES = ("cos", "linear")


def annealing_cos(start: float, end: float, factor: float, weight: float = 1.0) -> float:
    """MMCV's ``annealing_cos``: cosine from ``weight·start + (1 − weight)·end`` to ``end`` as ``factor`` goes
    from 0 to 1."""
    return end + 0.5 * weight * (start - end) * (math.cos(math.pi * factor) + 1)


def annealing_linear(start: float, end: float, factor: float) -> float:
    """MMCV's ``annealing_linear``: a straight line from ``start`` to ``end`` as ``factor`` goes from 0 to 1."""
    return start + (end - start) * factor


def anneal_function(strategy: Any, where: str) -> Callable[..., float]:
    """``cos`` → :func:`annealing_cos`, ``linear`` → :func:`annealing_linear`."""
    if strategy not in ANNEAL_STRATEGIES:
        raise ConfigError(f"{where}.anneal_strategy: expected cos or linear, got {strategy!r}")
    return annealing_cos if strategy == "cos" else annealing_linear


def policy_name(policy: Any, where: str) -> str:
    """The registry key of a policy, by MMCV's rule: an all-lower-case name is title-cased (``poly`` → ``Poly``,
    ``cyclic`` → ``Cyclic``); any other spelling is used as written (``CosineAnnealing``, ``OneCycle``)."""
    if not isinstance(policy, str) or not policy:
        raise ConfigError(f"{where}.policy: expected a policy name, got {policy!r}")
    return policy.title() if policy == policy.lower() else policy


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_unit_range(value: Any, where: str, low_open: bool, high_open: bool, low: float = 0.0,
                     high: float = 1.0) -> float:
    """``value`` as a float inside [low, high] (an open end excludes it); otherwise a ConfigError naming ``where``."""
    ok = is_number(value) and (value > low if low_open else value >= low) and (value < high if high_open
                                                                                 else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise ConfigError(f"{where}: expected a number in {interval}, got {value!r}")
    return float(value)


class EpochClock:
    """Where iteration ``it`` stands in the schedule's units: iterations, or epochs of the training set.

    ``by_epoch``: progress is ``it // iters_per_epoch`` and the run lasts ``ceil(max_iters / iters_per_epoch)``
    epochs (a last partial epoch counts, as the epoch it is in has started). ``iters_per_epoch`` comes from the
    run spec (``rayseg.spec.policy.iters_per_epoch``).
    """

    def __init__(self, max_iters: int, by_epoch: bool, iters_per_epoch: Optional[int], where: str):
        if not is_int(max_iters) or max_iters < 1:
            raise ConfigError(f"runner.max_iters: a positive number of iterations is required, got {max_iters!r}")
        if by_epoch and not (is_int(iters_per_epoch) and iters_per_epoch >= 1):
            raise ConfigError(f"{where}.by_epoch: counting epochs needs the number of iterations per epoch of the "
                              f"training set, got {iters_per_epoch!r}")
        self.max_iters = int(max_iters)
        self.by_epoch = bool(by_epoch)
        self.iters_per_epoch = int(iters_per_epoch) if iters_per_epoch else None
        self.max_progress = math.ceil(max_iters / iters_per_epoch) if by_epoch else self.max_iters

    def progress(self, it: int) -> int:
        """The epoch (``by_epoch``) or the iteration that iteration ``it`` (0-based) belongs to."""
        return it // self.iters_per_epoch if self.by_epoch else it


def check_warmup(warmup: Any, warmup_iters: Any, warmup_ratio: Any, where: str) -> None:
    """MMCV's warmup rules: a known type, ``warmup_iters > 0`` and ``0 < warmup_ratio <= 1`` when warming up."""
    if warmup not in (None,) + WARMUPS:
        raise ConfigError(f"{where}.warmup: expected linear, constant, exp or null, got {warmup!r}")
    if warmup is None:
        return
    if not is_int(warmup_iters) or warmup_iters <= 0:
        raise ConfigError(f"{where}.warmup_iters: warmup {warmup!r} needs a positive integer, got {warmup_iters!r}")
    check_unit_range(warmup_ratio, f"{where}.warmup_ratio", low_open=True, high_open=False)


def _arguments(cls: type, internal: Sequence[str]) -> Tuple[List[str], List[str]]:
    """The YAML keys a schedule class takes (its own keyword arguments, then those of its bases that it passes on
    through ``**common``) and the ones without a default; ``internal`` arguments are filled in by the builder."""
    names: List[str] = []
    required: List[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        for p in params:
            if p.name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name in internal:
                continue
            if p.name not in names:
                names.append(p.name)
                if p.default is p.empty:
                    required.append(p.name)
        if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
            break  # this class does not pass further arguments to its base
    return names, required


def build_schedule(cfg: Dict[str, Any], registry: Registry, where: str, internal: Dict[str, Any]) -> Any:
    """Build ``cfg['policy']`` from ``registry`` with the other keys as arguments, plus the ``internal`` ones
    (base lr, max_iters, iters_per_epoch), which are not config keys. Errors name ``<where>.<key>``."""
    cfg = dict(cfg)
    policy = cfg.pop("policy", None)
    key = policy_name(policy, where)
    if key not in registry:
        close = difflib.get_close_matches(key, list(registry.keys()), n=3, cutoff=0.5)
        hint = f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""
        raise ConfigError(f"{where}.policy: unknown policy {policy!r}{hint}. Allowed: {', '.join(registry.keys())} "
                          "(MMCV's spelling: an all-lower-case name is title-cased, so 'poly' is 'Poly')")
    cls = registry.get(key)
    accepted, required = _arguments(cls, list(internal))
    for name in cfg:
        if name not in accepted:
            close = difflib.get_close_matches(str(name), accepted, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}.{name}: not an argument of policy {policy!r}{hint}. It takes: "
                              f"{', '.join(accepted)}")
    missing = [name for name in required if name not in cfg]
    if missing:
        raise ConfigError(f"{where}.{missing[0]}: required by policy {policy!r}")
    return cls(**internal, **cfg)
