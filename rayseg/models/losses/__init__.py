"""Losses (registered in ``rayseg.registry.LOSSES``)."""
from rayseg.models.losses.cross_entropy_loss import CrossEntropyLoss, cross_entropy, binary_cross_entropy

__all__ = ["CrossEntropyLoss", "cross_entropy", "binary_cross_entropy"]
