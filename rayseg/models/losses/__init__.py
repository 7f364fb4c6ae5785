"""Losses (registered in ``rayseg.registry.LOSSES``)."""
from rayseg.models.losses.cross_entropy_loss import CrossEntropyLoss, cross_entropy, binary_cross_entropy

__all__ = ["CrossEntropyLoss", "cross_entropy", "binary_cross_entropy"]

# Further losses: each module registers its class on import.
from rayseg.models.losses import dice_loss, focal_loss, lovasz_loss  # noqa: E402,F401
