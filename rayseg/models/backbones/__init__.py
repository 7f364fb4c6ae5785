"""Backbones (registered in ``rayseg.registry.BACKBONES``)."""
from rayseg.models.backbones.base import BaseBackbone
from rayseg.models.backbones.resnet import ResNet, ResNetV1c, ResNetV1d

__all__ = ["BaseBackbone", "ResNet", "ResNetV1c", "ResNetV1d"]

# Model-zoo backbones: each module registers its classes on import.
from rayseg.models.backbones import mit, unet, mobilenet_v2, fast_scnn  # noqa: E402,F401
