"""Models: backbones, heads, losses and segmentors, built from configs through the registries.

Importing this package registers every part, so ``build_segmentor(cfg)`` can find them by name.
"""
from typing import Any, Dict

from rayseg.registry import BACKBONES, HEADS, LOSSES, MODELS, NECKS, build

from rayseg.models import backbones, heads, losses, necks, samplers, segmentors  # noqa: F401  (registration)
from rayseg.models.segmentors import EncoderDecoder, uses_sync_bn


def build_segmentor(cfg: Dict[str, Any]) -> Any:
    """Build a segmentor (e.g. ``EncoderDecoder``) from the ``model`` config dict."""
    return build(cfg, MODELS)


def build_backbone(cfg: Dict[str, Any]) -> Any:
    """Build a backbone from its config dict."""
    return build(cfg, BACKBONES)


def build_neck(cfg: Dict[str, Any]) -> Any:
    """Build a neck from its config dict."""
    return build(cfg, NECKS)


def build_head(cfg: Dict[str, Any]) -> Any:
    """Build a decode/auxiliary head from its config dict."""
    return build(cfg, HEADS)


def build_loss(cfg: Dict[str, Any]) -> Any:
    """Build a loss from its config dict."""
    return build(cfg, LOSSES)


__all__ = ["EncoderDecoder", "build_segmentor", "build_backbone", "build_neck", "build_head", "build_loss",
           "uses_sync_bn"]
