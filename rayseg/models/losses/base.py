"""``BaseLoss``: the arguments and checks every registered loss shares (reduction, loss_weight, loss_name)."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from rayseg.errors import ConfigError

REDUCTIONS = ("none", "mean", "sum")


class BaseLoss(nn.Module):
    """Base class of the registered losses.

    Args:
        reduction: 'none', 'mean' or 'sum'.
        loss_weight: factor applied to the result.
        loss_name: key of this term in the loss dict; must start with ``loss_`` to be optimised.

    Every loss is called alike, ``loss(cls_score, label, weight=None, ignore_index=255, avg_factor=None,
    reduction_override=None)``; a subclass implements ``_loss`` (the unweighted term, reduced as asked)
    and ``forward`` applies ``loss_weight``.
    """

    def __init__(self, reduction: str = "mean", loss_weight: float = 1.0, loss_name: str = "loss"):
        super().__init__()
        name = type(self).__name__
        if reduction not in REDUCTIONS:
            raise ConfigError(f"{name}: reduction must be 'none', 'mean' or 'sum', got {reduction!r}")
        if not isinstance(loss_name, str):
            raise ConfigError(f"{name}: loss_name must be a string, got {loss_name!r}")
        self.reduction = reduction
        self.loss_weight = float(loss_weight)
        self._loss_name = loss_name

    def forward(self, cls_score: torch.Tensor, label: torch.Tensor, weight: Optional[torch.Tensor] = None,
                ignore_index: int = 255, avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None) -> torch.Tensor:
        """``loss_weight`` × the loss of logits ``cls_score`` against ``label``; see the subclass's ``_loss``.

        ``weight`` is per pixel (e.g. a pixel sampler's), ``avg_factor`` replaces the mean's denominator
        and ``reduction_override`` the configured reduction for this call.
        """
        if reduction_override not in (None,) + REDUCTIONS:
            raise ValueError(f"reduction_override {reduction_override!r}")
        reduction = reduction_override or self.reduction
        class_weight = self._class_weight_like(cls_score)
        return self.loss_weight * self._loss(cls_score, label, weight, class_weight, ignore_index, avg_factor,
                                             reduction)

    def extra_repr(self) -> str:
        return f"loss_weight={self.loss_weight}, loss_name={self._loss_name!r}"

    def _class_weight_like(self, tensor: torch.Tensor) -> Optional[torch.Tensor]:
        """``self.class_weight`` (a list, or None) as a tensor of ``tensor``'s dtype and device."""
        class_weight = getattr(self, "class_weight", None)
        return None if class_weight is None else tensor.new_tensor(class_weight)

    def _loss(self, cls_score: torch.Tensor, label: torch.Tensor, weight: Optional[torch.Tensor],
              class_weight: Optional[torch.Tensor], ignore_index: int, avg_factor: Optional[float],
              reduction: str) -> torch.Tensor:
        """The loss before ``loss_weight``; ``class_weight`` is the configured one as a tensor (or None)."""
        raise NotImplementedError

    @property
    def loss_name(self) -> str:
        """Name of this term in the loss dict (terms with the same name are summed)."""
        return self._loss_name
