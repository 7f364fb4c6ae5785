"""OpenMMLab registry scopes in an MMSeg config, for either version: ``type='mmpretrain.ConvNeXt'`` (1.x) or
``type='mmcls.ConvNeXt'`` (0.x) is rayseg's ``ConvNeXt``, and the ``custom_imports`` MMSeg needs to reach
those packages (``imports='mmpretrain.models'``) are not needed: rayseg registers the parts itself."""
from __future__ import annotations

import copy
from typing import Any, Dict

from rayseg.mmseg_config.report import Report

OPENMMLAB_SCOPES = ("mmseg", "mmpretrain", "mmcls", "mmdet", "mmcv", "mmengine")


def resolve_scopes(cfg: Dict[str, Any], report: Report) -> Dict[str, Any]:
    """``cfg`` with scoped ``type`` names in ``model`` unscoped and OpenMMLab modules left out of
    ``custom_imports`` (dropped when nothing else is left); each change is in ``report``."""
    out = dict(cfg)
    if "model" in out:
        out["model"] = _strip(out["model"], "model", report)
    custom = out.get("custom_imports")
    if isinstance(custom, dict):
        names = custom.get("imports")
        names = [names] if isinstance(names, str) else list(names or [])
        scoped = [n for n in names if isinstance(n, str) and n.split(".")[0] in OPENMMLAB_SCOPES]
        if scoped:
            report.ignore("custom_imports.imports", f"{', '.join(scoped)}: rayseg registers those parts itself")
            kept = [n for n in names if n not in scoped]
            if kept:
                out["custom_imports"] = dict(copy.deepcopy(custom), imports=kept)
            else:
                del out["custom_imports"]
    return out


def _strip(node: Any, path: str, report: Report) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "type" and isinstance(value, str) and "." in value and value.split(".")[0] in OPENMMLAB_SCOPES:
                out[key] = value.split(".", 1)[1]
                report.note(f"{path}.type", f"{value} is rayseg's {out[key]}")
            else:
                out[key] = _strip(value, f"{path}.{key}", report)
        return out
    if isinstance(node, list):
        return [_strip(v, f"{path}[{i}]", report) for i, v in enumerate(node)]
    return node
