"""Backbones (registered in ``rayseg.registry.BACKBONES``)."""
from rayseg.models.backbones.base import BaseBackbone
from rayseg.models.backbones.resnet import ResNet, ResNetV1c, ResNetV1d

__all__ = ["BaseBackbone", "ResNet", "ResNetV1c", "ResNetV1d"]

# Model-zoo backbones: every module here registers its classes on import (one file per family).
from rayseg.utils.imports import import_submodules  # noqa: E402

import_submodules(__name__, __path__)
