"""Helper variables in YAML configs: declare a top-level name once, use it anywhere as ``$name``.

.. code-block:: yaml

    crop_size: [512, 512]                              # declared in a _base_ file ...
    data_root: data/my_dataset
    data:
      train:
        data_root: $data_root
        img_dir: ${data_root}/img_dir/train            # ... inside a text: ${name}
        pipeline:
          - {type: RandomCrop, crop_size: $crop_size, cat_max_ratio: 0.75}
          - {type: Pad, size: $crop_size}

A child config that sets ``crop_size: [256, 256]`` changes both steps: references are resolved after every
``_base_`` file is merged (and after ``--cfg-options`` that name a variable, e.g. ``crop_size=[256,256]``), so
the last definition wins everywhere. The rules:

- A value that is exactly ``$name`` (or ``${name}``) becomes the variable's value, whatever its type (list,
  mapping, number). ``$name.a.0`` reads a key or list item inside it. ``$name`` needs no quotes, also inside a
  flow mapping ``{...}``, where ``${name}`` would have to be quoted.
- Inside a longer text, ``${name}`` is replaced by the value's text (numbers, strings and bools only).
  ``$$`` writes one ``$``; any other ``$`` is kept as it is.
- Any top-level key can be referenced (``$seed`` too). A top-level key that is not a config section and is
  referenced somewhere is a variable: it is dropped from the loaded config. One that nothing references is
  still an unknown key, so a misspelt section (``optimzer:``) stays an error with a suggestion.
- A variable's value may reference other variables; a cycle, or a name that is not a top-level key, is a
  ``ConfigError`` naming the key path and the reference.
"""
from __future__ import annotations

import copy
import difflib
import re
from typing import Any, Dict, Iterable, List, Mapping, Set, Tuple

from rayseg.errors import ConfigError

_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_-]+)*"
# A whole value that is a reference: $name.a.0 or ${name.a.0}.
_WHOLE = re.compile(r"\$(?:(" + _DOTTED + r")|\{\s*(" + _DOTTED + r")\s*\})")
# Inside a text: $$ (one $) or ${...} (the part between the braces is checked when it is resolved).
_TOKEN = re.compile(r"\$\$|\$\{([^}]*)\}")


def _strings(value: Any) -> Iterable[str]:
    if isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def referenced_names(cfg: Mapping[str, Any]) -> Set[str]:
    """The top-level names that some ``${name...}`` in ``cfg`` refers to."""
    names: Set[str] = set()
    for text in _strings(dict(cfg)):
        whole = _WHOLE.fullmatch(text)
        if whole:
            names.add((whole.group(1) or whole.group(2)).split(".")[0])
            continue
        for m in _TOKEN.finditer(text):
            if m.group(1) is not None:
                names.add(m.group(1).split(".")[0].strip())
    return names


def variable_names(cfg: Mapping[str, Any], sections: Iterable[str]) -> Set[str]:
    """The declared variables: referenced top-level keys that are not config sections."""
    sections = set(sections)
    return {n for n in referenced_names(cfg) if n in cfg and n not in sections}


class _Resolver:
    def __init__(self, cfg: Mapping[str, Any], source: str):
        self.cfg = cfg
        self.source = source
        self.done: Dict[str, Any] = {}
        self.stack: List[str] = []

    def top(self, name: str, key: str, ref: str) -> Any:
        if name in self.done:
            return self.done[name]
        if name not in self.cfg:
            close = difflib.get_close_matches(name, [str(k) for k in self.cfg], n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"{self.source}: key {key!r}: {ref} names no top-level key of the config{hint}")
        if name in self.stack:
            cycle = " -> ".join(self.stack[self.stack.index(name):] + [name])
            raise ConfigError(f"{self.source}: variables refer to each other in a cycle: {cycle}")
        self.stack.append(name)
        self.done[name] = self.value(self.cfg[name], name)
        self.stack.pop()
        return self.done[name]

    def lookup(self, dotted: str, key: str, ref: str) -> Any:
        if not re.fullmatch(_DOTTED, dotted):
            raise ConfigError(f"{self.source}: key {key!r}: {ref} is not a reference: write $name, ${{name}} or "
                              "$name.key.0 (and $$ for a literal $)")
        head, *rest = dotted.split(".")
        value = self.top(head, key, ref)
        for part in rest:
            if isinstance(value, dict):
                slot = int(part) if part not in value and part.isdigit() and int(part) in value else part
                ok = slot in value
            elif isinstance(value, list):
                slot = int(part) if part.isdigit() else -1
                ok = 0 <= slot < len(value)
            else:
                ok = False
            if not ok:
                raise ConfigError(f"{self.source}: key {key!r}: {ref}: {head!r} has no {part!r} inside")
            value = value[slot]
        return copy.deepcopy(value)

    def text(self, text: str, key: str) -> Any:
        whole = _WHOLE.fullmatch(text)
        if whole:
            return self.lookup(whole.group(1) or whole.group(2), key, text)

        def repl(m: re.Match) -> str:
            if m.group(1) is None:
                return "$"  # $$
            value = self.lookup(m.group(1).strip(), key, m.group(0))
            if isinstance(value, (dict, list)) or value is None:
                raise ConfigError(f"{self.source}: key {key!r}: {m.group(0)} inside the text {text!r} holds "
                                  f"{type(value).__name__}; only numbers, strings and bools can be part of a text "
                                  f"(use {m.group(0)} as the whole value)")
            return str(value).lower() if isinstance(value, bool) else str(value)

        return _TOKEN.sub(repl, text)

    def value(self, value: Any, key: str) -> Any:
        if isinstance(value, dict):
            return {k: self.value(v, f"{key}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self.value(v, f"{key}.{i}") for i, v in enumerate(value)]
        if isinstance(value, str) and "$" in value:
            return self.text(value, key)
        return value


def resolve_variables(cfg: Dict[str, Any], sections: Iterable[str], source: str) -> Dict[str, Any]:
    """``cfg`` with every ``$name``/``${name}`` replaced, ``$$`` turned into ``$``, and the variables (referenced
    non-section keys) dropped. ``cfg`` is not modified; without any ``$`` in it, it is returned as it is.
    """
    if not any("$" in s for s in _strings(cfg)):
        return cfg
    drop = variable_names(cfg, sections)
    resolver = _Resolver(cfg, source)
    return {k: resolver.top(k, k, k) for k in cfg if k not in drop}


def split_options(cfg: Mapping[str, Any], sections: Iterable[str], options: List[str]) -> Tuple[List[str], List[str]]:
    """``--cfg-options`` split into those that set a variable (``crop_size=[256,256]``, applied before the
    references are resolved) and the others."""
    variables = variable_names(cfg, sections)
    to_vars = [o for o in options if isinstance(o, str) and o.split("=", 1)[0].strip().split(".")[0] in variables]
    return to_vars, [o for o in options if o not in to_vars]
