"""The search space of a sweep: YAML domains → Ray Tune domains, and sampled values → a training config.

A ``search_space`` maps dotted config keys (list indices allowed, as in ``--cfg-options``) to one domain each,
written as a one-key mapping::

    optimizer.lr: {loguniform: [1.0e-4, 1.0e-1]}
    lr_config.power: {uniform: [0.5, 1.5]}
    lr_config.warmup_iters: {randint: [0, 100]}          # upper bound excluded, as in Ray Tune
    data.train.pipeline.3.crop_size: {choice: [[48, 48], [64, 64]]}
    lr_config: {choice: [{policy: poly, power: 0.9}, {policy: CosineAnnealing, min_lr: 0.0}]}
    model.decode_head.loss_decode.1.loss_weight: {grid_search: [0.5, 1.0, 2.0]}

A ``choice`` or ``grid_search`` over lists or mappings is sampled as an index (search algorithms such as
Optuna only take plain values) and turned back into the value in the trial.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

from rayseg.errors import ConfigError

# domain name → (what its arguments are, how many)
DOMAINS: Dict[str, str] = {
    "uniform": "[lower, upper]",
    "loguniform": "[lower, upper] with 0 < lower",
    "quniform": "[lower, upper, q]",
    "randint": "[lower, upper] (upper excluded)",
    "choice": "[value, value, ...] (values may be lists or mappings)",
    "grid_search": "[value, value, ...] (every value is tried, with every sample of the other keys)",
}
# Index-encoded values travel under this suffix, so the trial knows to turn them back into values.
INDEX_SUFFIX = "#index"


@dataclass(frozen=True)
class Domain:
    """One key's domain as written in the sweep file: ``kind`` (a ``DOMAINS`` name) and its ``args``."""

    key: str
    kind: str
    args: Tuple[Any, ...]

    @property
    def categorical(self) -> bool:
        return self.kind in ("choice", "grid_search")

    @property
    def by_index(self) -> bool:
        """Categorical over lists or mappings: sampled as an index into ``args``."""
        return self.categorical and any(isinstance(v, (list, dict)) for v in self.args)

    @property
    def param_name(self) -> str:
        """The name Ray Tune samples under (the key, or ``key#index``)."""
        return self.key + INDEX_SUFFIX if self.by_index else self.key

    def probe_values(self) -> List[Any]:
        """Values to check the base config with before any trial starts: the bounds, or every option."""
        if self.categorical:
            return list(self.args)
        low, high = self.args[0], self.args[1]
        if self.kind == "randint":
            return [int(low), int(high) - 1]
        return [low, high]

    def to_tune(self):
        """The Ray Tune domain (``tune.uniform(...)`` etc.)."""
        from ray import tune

        if self.by_index:
            options = list(range(len(self.args)))
            return tune.grid_search(options) if self.kind == "grid_search" else tune.choice(options)
        if self.kind == "grid_search":
            return tune.grid_search(list(self.args))
        if self.kind == "choice":
            return tune.choice(list(self.args))
        if self.kind == "uniform":
            return tune.uniform(*self.args)
        if self.kind == "loguniform":
            return tune.loguniform(*self.args)
        if self.kind == "quniform":
            return tune.quniform(*self.args)
        return tune.randint(*self.args)

    def decode(self, sampled: Any) -> Any:
        """The config value for what Tune sampled (an index for ``by_index`` domains)."""
        if self.by_index:
            return copy.deepcopy(self.args[int(sampled)])
        if self.kind == "randint":
            return int(sampled)
        return sampled


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_domain(key: str, spec: Any) -> Domain:
    """``{loguniform: [1e-4, 1e-1]}`` → ``Domain``; a ``ConfigError`` naming the key for anything malformed."""
    where = f"search_space.{key}"
    known = ", ".join(f"{name}: {args}" for name, args in DOMAINS.items())
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(f"{where}: expected a one-key mapping such as {{uniform: [0.001, 0.1]}}, got {spec!r}; "
                          f"domains: {known}")
    kind, args = next(iter(spec.items()))
    if kind not in DOMAINS:
        raise ConfigError(f"{where}: unknown domain {kind!r}; domains: {known}")
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}: {kind} takes a list {DOMAINS[kind]}, got {args!r}")
    if kind in ("choice", "grid_search"):
        return Domain(key, kind, tuple(args))
    wanted = 3 if kind == "quniform" else 2
    if len(args) != wanted or not all(_number(a) for a in args):
        raise ConfigError(f"{where}: {kind} takes {DOMAINS[kind]} (numbers), got {args!r}")
    low, high = args[0], args[1]
    if not low < high:
        raise ConfigError(f"{where}: {kind} needs lower < upper, got {args!r}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"{where}: loguniform needs 0 < lower, got {args!r}")
    if kind == "quniform" and not args[2] > 0:
        raise ConfigError(f"{where}: quniform needs q > 0, got {args!r}")
    if kind == "randint" and not all(float(a).is_integer() for a in args):
        raise ConfigError(f"{where}: randint takes integer bounds, got {args!r}")
    return Domain(key, kind, tuple(args))


def parse_search_space(raw: Any) -> Dict[str, Domain]:
    """The sweep file's ``search_space`` mapping, parsed key by key."""
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"search_space: expected a mapping of config keys to domains, got {raw!r}")
    return {str(key): parse_domain(str(key), spec) for key, spec in raw.items()}


def _walk(cfg: Dict[str, Any], key: str) -> Tuple[Any, Any]:
    """(container, slot) of a dotted key in ``cfg``; the key must already exist."""
    parts = key.split(".")
    node: Any = cfg
    for depth, part in enumerate(parts):
        here = ".".join(parts[:depth + 1])
        if isinstance(node, list):
            if not part.lstrip("-").isdigit() or not 0 <= int(part) < len(node):
                raise ConfigError(f"search_space.{key}: {here!r} indexes a list of {len(node)} items; "
                                  "use an index from 0 to len-1")
            slot: Any = int(part)
        elif isinstance(node, dict):
            slot = int(part) if part.isdigit() and int(part) in node and part not in node else part
            if slot not in node:
                parent = ".".join(parts[:depth]) or "the top level"
                names = ", ".join(str(k) for k in node) or "(nothing)"
                raise ConfigError(f"search_space.{key}: the base config has no key {here!r}; "
                                  f"keys under {parent}: {names}")
        else:
            raise ConfigError(f"search_space.{key}: {'.'.join(parts[:depth])!r} is {node!r}, not a mapping or list")
        if depth == len(parts) - 1:
            return node, slot
        node = node[slot]
    raise AssertionError("unreachable")


def check_key(cfg: Dict[str, Any], key: str) -> None:
    """Raise ``ConfigError`` unless ``key`` names an existing value of ``cfg``."""
    _walk(cfg, key)


def apply_values(cfg: Dict[str, Any], values: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of ``cfg`` with each dotted key set to its value (keys applied in order)."""
    out = copy.deepcopy(cfg)
    for key, value in values.items():
        node, slot = _walk(out, key)
        node[slot] = copy.deepcopy(value)
    return out


def decode_sample(space: Dict[str, Domain], sampled: Dict[str, Any]) -> Dict[str, Any]:
    """Tune's sampled trial config → ``{dotted key: config value}``."""
    return {key: domain.decode(sampled[domain.param_name]) for key, domain in space.items()}


def describe_value(value: Any) -> str:
    """A short text for a sampled value, for run names, tags and the trial table."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {describe_value(v)}" for k, v in value.items()) + "}"
    return str(value)
