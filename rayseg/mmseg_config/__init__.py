"""MMSegmentation ``.py`` configs (0.x and 1.x) read without importing or running them, translated into rayseg's
config dict (MMSeg 0.x vocabulary).

``rayseg.config.load_config`` calls ``read_mmseg_config`` for a ``.py`` path; ``jobs/convert_config.py`` calls
``load_mmseg_config`` and writes the result as YAML. The modules, one job each:

- ``ast_reader``: one file's syntax tree, evaluated safely (literals, ``dict()``, names, arithmetic, ``{{_base_.x}}``);
- ``inherit``: ``_base_`` chains across ``.py`` and YAML files, merged with rayseg's ``merge``/``_delete_``;
- ``keys``: which top-level names are config keys and which are helper variables; the version;
- ``translate_1x`` (with ``dataset_1x``, ``pipeline_1x``, ``schedule_1x``): MMEngine's keys → 0.x's;
- ``report``: what could not be translated (by key path, with the reason), what was ignored, notes.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

from rayseg.mmseg_config.inherit import load_tree
from rayseg.mmseg_config.keys import ZERO_X_ONLY, detect_version, drop_helpers, take_0x
from rayseg.mmseg_config.report import Report

__all__ = ["load_mmseg_config", "read_mmseg_config", "Report"]


def _escape_dollars(value: Any) -> Any:
    """``$`` in a string → ``$$``: text from a ``.py`` config is never a rayseg YAML variable reference."""
    if isinstance(value, dict):
        return {k: _escape_dollars(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escape_dollars(v) for v in value]
    if isinstance(value, str):
        return value.replace("$", "$$")
    return value


def load_mmseg_config(path: str, chain: Tuple[str, ...] = ()) -> Tuple[Dict[str, Any], Report]:
    """Read the MMSeg config ``path`` with its ``_base_`` chain and translate it; nothing is raised for keys that
    cannot be translated: they are in the returned report (ConfigError only for unreadable files)."""
    from rayseg import config as rayseg_config
    from rayseg.mmseg_config import translate_1x
    from rayseg.mmseg_config.scopes import resolve_scopes

    tree = load_tree(path, chain)
    report = Report(source=tree.path, version=detect_version(tree.cfg))
    schema = rayseg_config.SCHEMA
    if report.version == "1.x":
        out, consumed = translate_1x.translate(tree.cfg, report)
        shared = {k: v for k, v in tree.cfg.items() if k in schema and k not in ZERO_X_ONLY and k != "model"}
        out.update(shared)
        consumed = consumed | set(shared)
    else:
        out, consumed = take_0x(tree.cfg, schema, report)
    drop_helpers(tree.cfg, consumed, tree, report.version, schema, report)
    out = resolve_scopes(out, report)  # mmpretrain.ConvNeXt → ConvNeXt; no custom_imports of mmpretrain
    try:
        out = rayseg_config._plain(out, "")  # tuples → lists; anything else a config cannot hold is an error
    except Exception as exc:
        raise type(exc)(f"{tree.path}: {exc}") from exc
    return _escape_dollars(out), report


def read_mmseg_config(path: str, chain: Tuple[str, ...] = ()) -> Dict[str, Any]:
    """``load_mmseg_config`` for ``load_config``: ConfigError listing every untranslatable key; the ignored keys
    are logged in one line (logger ``rayseg.mmseg_config``)."""
    cfg, report = load_mmseg_config(path, chain)
    report.raise_if_untranslatable()
    report.log_ignored()
    return cfg
