"""MMSegmentation's sigmoid ``FocalLoss`` (`Lin et al. <https://arxiv.org/abs/1708.02002>`_), pure PyTorch.

MMSeg uses an mmcv CUDA kernel on GPU and ``py_sigmoid_focal_loss`` elsewhere; both compute the same
numbers, so we keep only the PyTorch path. Per pixel i and class c, with t the one-hot label and
p = sigmoid(logit):

    loss[i, c] = BCE(logit, t) · (alpha·t + (1 − alpha)·(1 − t)) · |t − p|^gamma
                 · class_weight[c] · weight[i] · valid[i]

``reduction='mean'`` averages over all N·C·H·W terms, ignored pixels included (they add 0), exactly as
MMSeg does; ``'none'`` returns the (N,C,H,W) map. The target is index labels (N,H,W) or, as in MMSeg, a
float (N,C,H,W) target (one-hot or soft), used as t directly.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from rayseg.errors import ConfigError
from rayseg.models.losses.cross_entropy_loss import get_class_weight, weight_reduce_loss
from rayseg.models.losses.base import BaseLoss
from rayseg.registry import LOSSES

def py_sigmoid_focal_loss(pred: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                          gamma: float = 2.0, alpha: Union[float, torch.Tensor] = 0.5,
                          class_weight: Optional[torch.Tensor] = None, valid_mask: Optional[torch.Tensor] = None,
                          reduction: str = "mean", avg_factor: Optional[float] = None) -> torch.Tensor:
    """Focal loss of ``pred`` (P,C) logits against a one-hot ``target`` (P,C), weighted and reduced.

    ``weight`` and ``valid_mask`` are per row (P,) or (P,1); ``alpha`` a float or a (C,) tensor.
    """
    pred_sigmoid = pred.sigmoid()
    target = target.type_as(pred)
    one_minus_pt = (1 - pred_sigmoid) * target + pred_sigmoid * (1 - target)
    focal_weight = (alpha * target + (1 - alpha) * (1 - target)) * one_minus_pt.pow(gamma)
    loss = F.binary_cross_entropy_with_logits(pred, target, reduction="none") * focal_weight
    final_weight = loss.new_ones(1, pred.size(1))
    if weight is not None:
        final_weight = final_weight * weight.reshape(-1, 1).type_as(loss)
    if class_weight is not None:
        final_weight = final_weight * class_weight.reshape(1, -1)
    if valid_mask is not None:
        final_weight = final_weight * valid_mask.reshape(-1, 1).type_as(loss)
    # Broadcast to the loss shape so weight_reduce_loss multiplies elementwise.
    return weight_reduce_loss(loss, final_weight.expand_as(loss), reduction, avg_factor)


@LOSSES.register()
class FocalLoss(BaseLoss):
    """Sigmoid focal loss with MMSeg's arguments and averaging.

    Args:
        use_sigmoid: must be True (MMSeg supports only the sigmoid form).
        gamma: focusing exponent on |t − p|.
        alpha: weight of the positive (foreground) term, ``1 - alpha`` of the negative one; a float or one
            value per class. Not a class weight: use ``class_weight`` for that.
        reduction: 'none', 'mean' or 'sum'.
        class_weight: per-class weights, or a path to a .npy/.txt/.json file holding them.
        loss_weight: factor applied to the result.
        loss_name: key of this term in the loss dict; must start with ``loss_`` to be optimised.
    """

    def __init__(self, use_sigmoid: bool = True, gamma: float = 2.0, alpha: Union[float, Sequence[float]] = 0.5,
                 reduction: str = "mean", class_weight: Union[None, str, Sequence[float]] = None,
                 loss_weight: float = 1.0, loss_name: str = "loss_focal"):
        super().__init__(reduction=reduction, loss_weight=loss_weight, loss_name=loss_name)
        if use_sigmoid is not True:
            raise ConfigError("FocalLoss: only the sigmoid focal loss is supported (use_sigmoid must be True)")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float)):
            raise ConfigError(f"FocalLoss: gamma must be a number, got {gamma!r}")
        self.use_sigmoid = True
        self.gamma = float(gamma)
        self.alpha: Union[float, List[float]] = self._check_alpha(alpha)
        self.class_weight = get_class_weight(class_weight)

    @staticmethod
    def _check_alpha(alpha: Union[float, Sequence[float]]) -> Union[float, List[float]]:
        if isinstance(alpha, (bool, str)):
            raise ConfigError(f"FocalLoss: alpha must be a float or a list of floats, got {alpha!r}")
        values = [alpha] if isinstance(alpha, (int, float)) else alpha
        try:
            values = [float(v) for v in values]
        except (TypeError, ValueError):
            raise ConfigError(f"FocalLoss: alpha must be a float or a list of floats, got {alpha!r}") from None
        if not all(0.0 <= v <= 1.0 for v in values):
            raise ConfigError(f"FocalLoss: alpha values must lie in [0, 1], got {alpha!r}")
        return values[0] if isinstance(alpha, (int, float)) else values

    def extra_repr(self) -> str:
        return f"gamma={self.gamma}, alpha={self.alpha}, {super().extra_repr()}"

    def _loss(self, cls_score: torch.Tensor, label: torch.Tensor, weight: Optional[torch.Tensor],
              class_weight: Optional[torch.Tensor], ignore_index: int, avg_factor: Optional[float],
              reduction: str) -> torch.Tensor:
        """Loss of logits ``cls_score`` (N,C,*) against index labels ``label`` (N,*) or, as MMSeg accepts,
        a float target of the logits' own shape (N,C,*): one-hot, or soft (used as given).

        Index labels equal to ``ignore_index`` weigh 0; a (N,C,*) target has no ignored pixels (as in
        MMSeg, where its argmax is never the ignore index). ``weight`` is per pixel, shape (N,*) (e.g. from
        a pixel sampler) or (N·∏*,).
        """
        dense = label.shape == cls_score.shape
        if not (dense or (cls_score.dim() >= 2 and cls_score.size(0) == label.size(0)
                          and cls_score.shape[2:] == label.shape[1:])):
            raise ValueError(f"FocalLoss: logits {tuple(cls_score.shape)} match neither index labels (N, *) nor "
                             f"a target of their own shape; got {tuple(label.shape)}")
        original_shape = cls_score.shape
        num_classes = cls_score.size(1)
        # (N, C, *) -> (P, C) with pixels in (n, *) order, matching label.reshape(-1).
        pred = cls_score.movedim(1, -1).reshape(-1, num_classes)
        if dense:
            target, valid_mask = label.movedim(1, -1).reshape(-1, num_classes), None
        else:
            target, valid_mask = self._one_hot(label.reshape(-1).long(), num_classes, ignore_index)
        if weight is not None and weight.numel() != pred.size(0):
            raise ValueError(f"FocalLoss: weight shape {tuple(weight.shape)} does not match the "
                             f"{pred.size(0)} pixels of logits {tuple(original_shape)}")
        alpha = pred.new_tensor(self.alpha) if isinstance(self.alpha, list) else self.alpha
        loss = py_sigmoid_focal_loss(
            pred, target, weight, gamma=self.gamma, alpha=alpha, class_weight=class_weight,
            valid_mask=valid_mask, reduction=reduction, avg_factor=avg_factor)
        if reduction == "none":
            # (P, C) -> (N, *, C) -> (N, C, *)
            loss = loss.reshape(original_shape[0], *original_shape[2:], num_classes).movedim(-1, 1).contiguous()
        return loss

    @staticmethod
    def _one_hot(target: torch.Tensor, num_classes: int, ignore_index: int):
        """Index labels (P,) → one-hot (P, C) and the valid-pixel mask (P,)."""
        valid_mask = target != ignore_index
        # Ignored pixels get a placeholder class so one_hot works; valid_mask zeroes their terms.
        target = torch.where(valid_mask, target, torch.zeros_like(target))
        if target.numel() and (target.min() < 0 or target.max() >= num_classes):
            raise ValueError(f"FocalLoss: labels must lie in [0, {num_classes}) or equal ignore_index {ignore_index}")
        return F.one_hot(target, num_classes=num_classes), valid_mask
