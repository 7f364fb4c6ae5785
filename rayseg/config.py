"""Load MMSegmentation-style YAML configs: ``_base_`` inheritance, ``_delete_``, overrides, validation.

``load_config`` is the one entry point the jobs use. It returns a plain dict (only dict, list, str,
int, float, bool and None) so the result can be logged, pickled to Ray workers and dumped back to YAML
unchanged. Every problem a user can make in a config raises ``ConfigError`` naming the file and key.
"""
from __future__ import annotations

import copy
import datetime
import difflib
import json
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Tuple

import yaml

from rayseg import config_vars
from rayseg.credentials import refuse_credentials
from rayseg.errors import ConfigError

BASE_KEY = "_base_"
DELETE_KEY = "_delete_"

# Runtime defaults merged *under* the loaded file, so print_config shows exactly what the engine uses.
DEFAULTS: Dict[str, Any] = {
    "seed": 0,
    "deterministic": False,
    "work_dir": None,
    "load_from": None,
    "resume_from": None,
    "storage_path": None,
    "scaling": {"num_workers": 1, "use_gpu": False, "resources_per_worker": None, "placement_strategy": "PACK"},
    "mlflow": {"tracking_uri": None, "experiment_name": "rayseg", "run_name": None, "tags": {},
               "system_metrics": True, "system_metrics_interval": 10, "register_model": None},
    "log_config": {"interval": 50, "hooks": []},
    "optimizer_config": {},
}

# Validation schema. A string is a type spec ("int|none"); a dict is a fixed-shape section whose keys
# are checked. Sections typed plain "dict" are free-form: the registry validates them when built.
SCHEMA: Dict[str, Any] = {
    "model": "dict",
    "data": {"samples_per_gpu": "int", "workers_per_gpu": "int", "train": "dict", "val": "dict", "test": "dict",
             "first_batch_timeout_s": "number", "on_bad_sample": "str", "max_bad_samples": "int",
             "cache_decoded": "str|bool"},
    "optimizer": "dict",
    "optimizer_config": {"type": "str", "grad_clip": "dict|none", "skip_nonfinite": "bool",
                         "loss_scale": "str|number"},
    # Every key of every lr policy (rayseg.optim.lr_schedules): which ones a policy takes is checked when the
    # schedule is built, naming the key and listing the policy's arguments.
    "lr_config": {
        "policy": "str", "by_epoch": "bool", "warmup": "str|none", "warmup_iters": "int", "warmup_ratio": "number",
        "warmup_by_epoch": "bool", "power": "number", "min_lr": "number|none", "min_lr_ratio": "number|none",
        "step": "int|list", "gamma": "number", "periods": "list", "restart_weights": "list",
        "start_percent": "number", "target_ratio": "number|list", "cyclic_times": "int", "step_ratio_up": "number",
        "anneal_strategy": "str", "max_lr": "number", "total_steps": "int|none", "pct_start": "number",
        "div_factor": "number", "final_div_factor": "number", "three_phase": "bool",
    },
    # Free-form: the momentum policy's arguments are checked when it is built (rayseg.optim.momentum).
    "momentum_config": "dict|none",
    "runner": {"type": "str", "max_iters": "int"},
    # max_keep_ckpts may be null: "keep all" is a natural thing to write in YAML.
    "checkpoint_config": {"by_epoch": "bool", "interval": "int", "max_keep_ckpts": "int|none"},
    "evaluation": {"interval": "int", "metric": "str|list", "pre_eval": "bool", "save_best": "str|none"},
    "log_config": {"interval": "int", "hooks": "list"},
    "work_dir": "str|none",
    "seed": "int|none",
    "deterministic": "bool",
    "scaling": {
        # an int, or [MIN, MAX] for elastic training (rayseg.engine.elastic)
        "num_workers": "int|list", "use_gpu": "bool", "resources_per_worker": "dict|none",
        "placement_strategy": "str", "elastic_resize_monitor_interval_s": "number",
    },
    "mlflow": {"tracking_uri": "str|none", "experiment_name": "str", "run_name": "str|none", "tags": "dict",
               "system_metrics": "bool", "system_metrics_interval": "number", "register_model": "str|none"},
    "load_from": "str|none",
    "resume_from": "str|none",
    "workflow": "list",
    "dist_params": "dict",
    "log_level": "str",
    "cudnn_benchmark": "bool",
    "channels_last": "bool",
    "amp": {"enabled": "bool", "dtype": "str", "loss_scale": "str|number|none"},
    "fp16": {"loss_scale": "str|number|none"},
    "storage_path": "str|none",
    "failure": "dict",
    "tune": "dict",
    # The user's modules to import everywhere (rayseg.custom_imports) and the hooks the workers run
    # (rayseg.engine.hooks); each hook's arguments are checked against its class when the run is resolved.
    "custom_imports": {"imports": "str|list", "allow_failed_imports": "bool"},
    "custom_hooks": "list",
}

_SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")

_TYPE_NAMES = {"int": "an int", "number": "a number", "str": "a string", "bool": "a bool",
               "dict": "a mapping", "list": "a list", "none": "null"}


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys: PyYAML would silently keep the last one."""


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _plain(value: Any, where: str) -> Any:
    """Return ``value`` with only plain types; YAML dates become ISO strings, other types are errors."""
    if isinstance(value, dict):
        return {k: _plain(v, f"{where}.{k}" if where else str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}.{i}") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (datetime.date, datetime.datetime)):
        # An unquoted date in YAML is almost always meant as text (a run name, a tag).
        return value.isoformat()
    raise ConfigError(f"key {where!r}: unsupported value type {type(value).__name__} ({value!r})")


def _read_yaml(path: str) -> dict:
    """Parse one YAML file into a mapping (empty file → {}), with errors naming file and line."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}{line}: YAML syntax error: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    try:
        return _plain(data, "")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def _strip_delete(value: Any) -> Any:
    """Remove leftover ``_delete_`` markers (those that had nothing to replace)."""
    if isinstance(value, dict):
        return {k: _strip_delete(v) for k, v in value.items() if k != DELETE_KEY}
    if isinstance(value, list):
        return [_strip_delete(v) for v in value]
    return value


def merge(base: Dict[str, Any], override: Dict[str, Any]) -> Dict[str, Any]:
    """Return ``base`` updated by ``override``: dicts merge recursively, everything else replaces.

    A mapping in ``override`` holding ``_delete_: true`` replaces the inherited mapping instead of
    merging into it. Inputs are not modified.
    """
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict):
            if value.get(DELETE_KEY) is True or not isinstance(out.get(key), dict):
                out[key] = _strip_delete(value)
            else:
                out[key] = merge(out[key], {k: v for k, v in value.items() if k != DELETE_KEY})
        else:
            out[key] = copy.deepcopy(value)
    return out


def _resolve(path: str, chain: Tuple[str, ...]) -> dict:
    """Load ``path`` with its ``_base_`` files merged under it; ``chain`` detects cycles."""
    path = os.path.abspath(path)
    if path in chain:
        cycle = " -> ".join(list(chain[chain.index(path):]) + [path])
        raise ConfigError(f"_base_ inheritance cycle: {cycle}")
    if path.endswith(".py"):  # an MMSeg config (0.x or 1.x), read and translated without running it
        from rayseg.mmseg_config import read_mmseg_config

        return read_mmseg_config(path, chain)
    own = _read_yaml(path)
    bases = own.pop(BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: _base_ must be a path or a list of paths, got {bases!r}")
    merged: Dict[str, Any] = {}
    for base in bases:
        base_path = os.path.normpath(os.path.join(os.path.dirname(path), os.path.expanduser(base)))
        if not os.path.isfile(base_path):
            raise ConfigError(f"{path}: _base_ file {base!r} not found (looked for {base_path})")
        # Later bases win over earlier ones; each base is fully resolved on its own first.
        merged = merge(merged, _resolve(base_path, chain + (path,)))
    return _strip_delete(merge(merged, own))


def _type_of(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):  # before int: bool is a subclass of int
        return "bool"
    return {int: "int", float: "float", str: "str", list: "list", dict: "dict"}.get(type(value), "other")


def _a(type_name: str) -> str:
    return f"an {type_name}" if type_name[0] in "aeiou" else f"a {type_name}"


def _schema_spec(parts: List[str]) -> Optional[str]:
    """The schema's type spec for a key path (e.g. "str|list"), or None for free-form keys."""
    spec: Any = SCHEMA
    for part in parts:
        if not isinstance(spec, dict) or part not in spec:
            return None
        spec = spec[part]
    return spec if isinstance(spec, str) and spec != "dict" else None


def _set_override(cfg: Dict[str, Any], option: str) -> None:
    """Apply one ``a.b.0.c=VALUE`` override to ``cfg`` in place."""
    if not isinstance(option, str) or "=" not in option:
        raise ConfigError(f"--cfg-options {option!r}: expected KEY=VALUE")
    key, raw = option.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(p == "" for p in parts):
        raise ConfigError(f"--cfg-options {option!r}: empty key or key part")
    try:
        value = _plain(yaml.safe_load(raw), key)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--cfg-options {option!r}: cannot parse value: {exc}") from exc
    if isinstance(value, str) and _SCIENTIFIC.match(value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as text; on a command line it means a number
    node: Any = cfg
    for depth, part in enumerate(parts):
        here = ".".join(parts[:depth + 1])
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.lstrip("-").isdigit():
                raise ConfigError(f"--cfg-options {option!r}: {here!r} indexes a list, needs an integer")
            idx = int(part)
            if not 0 <= idx < len(node):
                raise ConfigError(
                    f"--cfg-options {option!r}: index {idx} out of range at {here!r} (list has {len(node)} items)")
            slot: Any = idx
        elif isinstance(node, dict):
            # YAML may have int keys (e.g. label_map: {11: 255}); prefer them when the text is a number.
            slot = int(part) if part.isdigit() and int(part) in node and part not in node else part
            if not last and slot not in node:
                node[slot] = {}  # new free-form nesting; validation rejects it in fixed-shape sections
        else:
            parent = ".".join(parts[:depth]) or "<root>"
            raise ConfigError(
                f"--cfg-options {option!r}: cannot index into {parent!r}, which is {_a(_type_of(node))} ({node!r})")
        if last:
            exists = slot in node if isinstance(node, dict) else True
            if exists:
                old, new = _type_of(node[slot]), _type_of(value)
                allowed = _schema_spec(parts)
                # A number may replace a number (0.5 for an int CPU count in a free-form mapping), unless
                # the schema says int: there a float is a mistake the user should hear about.
                numbers = {old, new} == {"float", "int"} and not (allowed and not _type_ok(value, allowed))
                if (old != new and "none" not in (old, new) and not numbers
                        and not (allowed and _type_ok(value, allowed))):
                    raise ConfigError(f"--cfg-options {option!r}: key {key!r} holds {_a(old)}, "
                                      f"the override gives {_a(new)}")
            node[slot] = value
        else:
            node = node[slot]


def _type_ok(value: Any, spec: str) -> bool:
    kinds = spec.split("|")
    t = _type_of(value)
    return t in kinds or ("number" in kinds and t in ("int", "float"))


def _describe(spec: str) -> str:
    return " or ".join(_TYPE_NAMES[s] for s in spec.split("|"))


def _validate(cfg: Dict[str, Any], schema: Dict[str, Any], prefix: str, source: str) -> None:
    """Raise ConfigError for unknown keys (with suggestions) and wrongly typed values."""
    for key, value in cfg.items():
        path = f"{prefix}{key}"
        if key not in schema:
            names = [str(k) for k in schema]
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{source}: unknown key {path!r}{hint} Known keys"
                              f"{' under ' + repr(prefix[:-1]) if prefix else ''}: {', '.join(names)}")
        spec = schema[key]
        if isinstance(spec, dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: key {path!r} must be a mapping, got {_type_of(value)} ({value!r})")
            _validate(value, spec, f"{path}.", source)
        elif not _type_ok(value, spec):
            raise ConfigError(
                f"{source}: key {path!r} must be {_describe(spec)}, got {_type_of(value)} ({value!r})")


def load_config(path: str, cfg_options: Iterable[str] = ()) -> Dict[str, Any]:
    """Load ``path`` into a plain, validated dict.

    ``path`` is a YAML config or an MMSegmentation ``.py`` config (0.x or 1.x, read without running it and
    translated: ``rayseg.mmseg_config``); ``$name`` helper variables are resolved (``rayseg.config_vars``).
    Order of precedence (lowest first): ``DEFAULTS``, the ``_base_`` files in order, the file's
    own keys, then ``cfg_options`` (``"a.b.0.c=VALUE"`` strings, VALUE parsed as YAML).
    """
    path = os.fspath(path)
    cfg = merge(DEFAULTS, _resolve(path, ()))
    source = os.path.abspath(path)
    options: List[str] = [cfg_options] if isinstance(cfg_options, str) else list(cfg_options or ())
    # Helper variables (rayseg.config_vars): an override of one applies before its $name references resolve.
    var_options, other_options = config_vars.split_options(cfg, SCHEMA, options)
    for option in var_options:
        _set_override(cfg, option)
    cfg = config_vars.resolve_variables(cfg, SCHEMA, source)
    # Validate before and after the overrides so an error blames the file or the override correctly.
    _validate(cfg, SCHEMA, "", source)
    for option in other_options:
        _set_override(cfg, option)
    if options:
        _validate(cfg, SCHEMA, "", f"{source} after --cfg-options {' '.join(options)}")
    refuse_credentials(cfg, source)  # a config is logged and printed: no passwords in it
    return cfg


def dump_config(cfg: Dict[str, Any]) -> str:
    """Return ``cfg`` as YAML text in insertion order; ``yaml.safe_load`` gives the same dict back."""
    return yaml.safe_dump(cfg, sort_keys=False, default_flow_style=False, allow_unicode=True)


def flatten_config(cfg: Dict[str, Any], sep: str = ".", max_len: int = 6000) -> Dict[str, str]:
    """Flatten ``cfg`` into ``{"a.b.c": "value"}`` strings for MLflow params.

    Lists of dicts (pipelines, hooks) recurse with the index as a key part; other lists become a
    one-line JSON string. Values are cut to ``max_len`` characters, MLflow's param value limit.
    """
    out: Dict[str, str] = {}

    def visit(value: Any, key: str) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                visit(v, f"{key}{sep}{k}" if key else str(k))
        elif isinstance(value, list) and any(isinstance(v, dict) for v in value):
            for i, v in enumerate(value):
                visit(v, f"{key}{sep}{i}")
        else:
            if isinstance(value, (list, dict)):
                text = json.dumps(value, default=str)
            else:
                text = str(value)  # same spelling mlflow.log_params would use
            out[key] = text[:max_len]

    visit(cfg, "")
    return out
