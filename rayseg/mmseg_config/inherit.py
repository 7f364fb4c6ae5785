"""``_base_`` chains of MMSeg ``.py`` configs: each base read (``.py`` by ``ast_reader``, YAML by rayseg's own
loader), merged in order with rayseg's ``merge`` (mappings merge key by key, ``_delete_=True`` replaces, anything
else is replaced; a later base wins over an earlier one), then the file's own names on top.

The result keeps every top-level name, helper variables included (``crop_size``, ``train_pipeline``): a child's
``{{_base_.train_pipeline}}`` and bare names read them. Which names are config keys and which are helpers is
decided once, on the whole chain, by ``rayseg.mmseg_config.keys``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Set, Tuple

from rayseg.errors import ConfigError
from rayseg.mmseg_config.ast_reader import FileResult, read_file

YAML_SUFFIXES = (".yaml", ".yml")


@dataclass
class Tree:
    """A ``.py`` config with its bases merged: the raw dict and what each file defined and read."""

    path: str
    cfg: Dict[str, Any]
    files: List[FileResult] = field(default_factory=list)  # every .py file read, bases first (merge order)
    origins: Dict[str, str] = field(default_factory=dict)  # top-level name → "file:line" of its last definition

    @property
    def referenced(self) -> Set[str]:
        """The top-level names some file of the chain reads (by name or by ``{{_base_.x}}``)."""
        return set().union(*(f.referenced for f in self.files)) if self.files else set()


def _yaml_base(path: str, chain: Tuple[str, ...]) -> Dict[str, Any]:
    """A YAML base of a ``.py`` config, as rayseg loads it (its own bases merged, ``${var}`` resolved)."""
    from rayseg import config as rayseg_config
    from rayseg.config_vars import resolve_variables

    return resolve_variables(rayseg_config._resolve(path, chain), rayseg_config.SCHEMA, path)


def load_tree(path: str, chain: Tuple[str, ...] = ()) -> Tree:
    """Read ``path`` and its ``_base_`` chain into one raw (untranslated) dict; ``chain`` detects cycles."""
    from rayseg.config import _strip_delete, merge

    path = os.path.abspath(path)
    if path in chain:
        cycle = " -> ".join(list(chain[chain.index(path):]) + [path])
        raise ConfigError(f"_base_ inheritance cycle: {cycle}")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    tree = Tree(path=path, cfg={})
    merged: Dict[str, Any] = {}

    def load_bases(bases: List[str]) -> Dict[str, Any]:
        nonlocal merged
        for base in bases:
            base_path = os.path.normpath(os.path.join(os.path.dirname(path), os.path.expanduser(base)))
            if not os.path.isfile(base_path):
                raise ConfigError(f"{path}: _base_ file {base!r} not found (looked for {base_path})")
            if base_path.endswith(".py"):
                sub = load_tree(base_path, chain + (path,))
                tree.files.extend(sub.files)
                tree.origins.update(sub.origins)
                cfg = sub.cfg
            elif base_path.endswith(YAML_SUFFIXES):
                cfg = _yaml_base(base_path, chain + (path,))
                tree.origins.update({k: base_path for k in cfg})
            else:
                raise ConfigError(f"{path}: _base_ file {base!r} is neither a .py nor a .yaml config")
            merged = merge(merged, cfg)
        return merged

    own = read_file(path, load_bases)
    tree.files.append(own)
    tree.origins.update({k: f"{path}:{own.lines.get(k, '?')}" for k in own.values})
    tree.cfg = _strip_delete(merge(merged, own.values))
    return tree
