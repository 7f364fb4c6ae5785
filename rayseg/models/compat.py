"""Parts written for MMSegmentation on plain ``torch.nn.Module``: what MMSeg's model code does for them that
rayseg's own parts do themselves.

Applied by the registries when they build such a part (``rayseg.registry.Registry.adapt``); rayseg's own
parts pass through unchanged.
"""
from __future__ import annotations

import inspect
from typing import Any


def init_foreign_backbone(backbone: Any) -> Any:
    """Call ``init_weights()`` on a backbone that is not one of rayseg's (``BaseBackbone`` subclasses initialise
    themselves in their constructor).

    MMSeg's guide writes a backbone as an ``nn.Module`` with ``init_weights(self, pretrained=None)``, which
    MMSeg's segmentor calls once the model is built; rayseg's segmentor does not, so the registry does. A
    method that needs arguments without defaults is left alone (it cannot mean "initialise now").
    """
    from rayseg.models.backbones.base import BaseBackbone

    if isinstance(backbone, BaseBackbone):
        return backbone
    init = getattr(backbone, "init_weights", None)
    if not callable(init):
        return backbone
    try:
        params = inspect.signature(init).parameters.values()
    except (TypeError, ValueError):
        return backbone
    if all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
        init()
    return backbone
