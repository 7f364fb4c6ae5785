"""Backbones (registered in ``rayseg.registry.BACKBONES``)."""
from rayseg.models.backbones.resnet import ResNet, ResNetV1c, ResNetV1d

__all__ = ["ResNet", "ResNetV1c", "ResNetV1d"]
