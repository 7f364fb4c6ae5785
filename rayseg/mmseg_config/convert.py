"""Write an MMSeg ``.py`` config as the equivalent rayseg YAML (``jobs/convert_config.py``).

The YAML holds the translated keys only (no defaults filled in); its header lists, as comments, what was
ignored, what is worth knowing and which helper variables the sections absorbed. It is checked to load with
``load_config`` before it replaces ``out_path``, so a converted file always loads (without ``partial``, to the
same dict as the ``.py`` config itself).
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict

import yaml

from rayseg.errors import ConfigError
from rayseg.mmseg_config import load_mmseg_config
from rayseg.mmseg_config.report import Report


class _Dumper(yaml.SafeDumper):
    """Short lists of numbers and strings on one line (``[512, 1024]``), as rayseg's own configs write them."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> Any:
    flow = all(isinstance(v, (int, float, str, bool)) or v is None for v in data) and len(data) <= 12
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def to_yaml(cfg: Dict[str, Any]) -> str:
    """``cfg`` as YAML in insertion order; ``yaml.safe_load`` gives the same dict back."""
    return yaml.dump(cfg, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120)


def convert(config_path: str, out_path: str, partial: bool = False) -> Report:
    """Translate ``config_path`` into the YAML file ``out_path`` and return the report.

    Untranslatable keys raise ConfigError listing them, unless ``partial``: then the rest is written, the keys
    left out are listed in the file's header, and the file is not required to load (a section may be missing).
    """
    from rayseg.config import load_config

    if not config_path.endswith(".py"):
        raise ConfigError(f"{config_path}: expected an MMSeg .py config")
    cfg, report = load_mmseg_config(config_path)
    if report.untranslatable and not partial:
        raise ConfigError(report.error_message())
    text = "\n".join(report.comment_lines()) + "\n" + to_yaml(cfg)
    out_dir = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    # Written next to the target (same file system) and checked there, so relative _base_ paths would resolve.
    fd, tmp = tempfile.mkstemp(prefix=".convert-", suffix=".yaml", dir=out_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        if not report.untranslatable:
            try:
                load_config(tmp)
            except ConfigError as exc:
                raise ConfigError(f"the converted config does not load: {exc}") from exc
        os.replace(tmp, out_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return report
