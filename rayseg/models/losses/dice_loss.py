"""MMSegmentation 1.x ``DiceLoss`` (the MMDet-derived form with ``use_sigmoid``, ``naive_dice`` and ``eps``).

Per sample n, with p the activated prediction and t the one-hot target, both flattened over
(class, pixel):

- V-Net form (default): ``1 - 2·Σ p·t / ((Σ p² + eps) + (Σ t² + eps))``
- naive form:           ``1 - (2·Σ p·t + eps) / (Σ p + Σ t + eps)``

then ``reduction`` over the batch. Points kept on purpose so results match MMSeg:

- ``use_sigmoid=True`` is the default even for multi-class logits (each channel gets its own sigmoid);
  configs that want softmax must say ``use_sigmoid=False``.
- Labels outside ``[0, num_classes)`` (the ignore value 255 included) become an all-zero target row, so such a
  pixel adds nothing to Σ p·t or Σ t but its prediction still adds to Σ p² (Σ p in the naive form).
- ``ignore_index`` removes the *channel* with that index (MMSeg's behaviour); with 255 and fewer classes this
  removes nothing.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from rayseg.errors import ConfigError
from rayseg.models.losses.cross_entropy_loss import weight_reduce_loss
from rayseg.models.losses.base import BaseLoss
from rayseg.registry import LOSSES

def expand_onehot_labels_dice(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(N,H,W) labels → (N,C,H,W) one-hot; a label outside [0, C) gives an all-zero row (MMSeg)."""
    num_classes = pred.shape[1]
    # One extra class absorbs every out-of-range label (ignore value included) and is then dropped.
    one_hot = F.one_hot(torch.clamp(target.long(), min=0, max=num_classes), num_classes + 1)
    return one_hot[..., :num_classes].movedim(-1, 1)


def dice_loss(pred: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
              eps: float = 1e-3, reduction: str = "mean", naive_dice: bool = False,
              avg_factor: Optional[float] = None, ignore_index: Optional[int] = 255) -> torch.Tensor:
    """Per-sample dice loss of activated ``pred`` against a same-shape one-hot ``target``, then reduced.

    ``weight`` is either per sample, shape (N,) (MMSeg), or per pixel, shape (N,H,W) (e.g. from a pixel
    sampler; MMSeg would refuse it). A pixel weight scales that pixel's share of every sum, so a weight of 0
    removes the pixel entirely.
    """
    if ignore_index is not None:
        keep = torch.arange(pred.shape[1], device=pred.device) != ignore_index
        pred, target = pred[:, keep], target[:, keep]
        if pred.shape[1] == 0:
            raise ValueError(f"DiceLoss: ignore_index {ignore_index} is the only class")
    target = target.to(pred.dtype)
    if weight is not None and weight.dim() > 1:
        if weight.shape != (pred.shape[0], *pred.shape[2:]):
            raise ValueError(f"DiceLoss: pixel weight shape {tuple(weight.shape)} does not match "
                             f"prediction {tuple(pred.shape)}")
        pixel_weight = weight.to(pred.dtype).unsqueeze(1)
        weight = None
    else:
        pixel_weight = None
    inp, tgt = pred.flatten(1), target.flatten(1)
    pw = pixel_weight.expand_as(pred).flatten(1) if pixel_weight is not None else 1.0
    a = torch.sum(inp * tgt * pw, 1)
    if naive_dice:
        b = torch.sum(inp * pw, 1)
        c = torch.sum(tgt * pw, 1)
        d = (2 * a + eps) / (b + c + eps)
    else:
        b = torch.sum(inp * inp * pw, 1) + eps
        c = torch.sum(tgt * tgt * pw, 1) + eps
        d = (2 * a) / (b + c)
    loss = 1 - d
    if weight is not None:
        if weight.shape != loss.shape:
            raise ValueError(f"DiceLoss: sample weight shape {tuple(weight.shape)} must be ({loss.shape[0]},)")
        weight = weight.to(loss.dtype)
    return weight_reduce_loss(loss, weight, reduction, avg_factor)


@LOSSES.register()
class DiceLoss(BaseLoss):
    """Dice loss (`V-Net <https://arxiv.org/abs/1606.04797>`_), as MMSegmentation 1.x defines it.

    Args:
        use_sigmoid: activate with a per-channel sigmoid (True, MMSeg's default) or a softmax over classes.
        activate: apply the activation; False when ``pred`` already holds probabilities.
        reduction: 'none' (one value per sample), 'mean' or 'sum' over the batch.
        naive_dice: first powers in the denominator instead of squares.
        loss_weight: factor applied to the result.
        ignore_index: index of a *class channel* left out of the sums (see the module docstring); pixels
            whose label is outside [0, num_classes) always have an all-zero target.
        eps: smoothing term that keeps the ratio finite.
        loss_name: key of this term in the loss dict; must start with ``loss_`` to be optimised.
    """

    def __init__(self, use_sigmoid: bool = True, activate: bool = True, reduction: str = "mean",
                 naive_dice: bool = False, loss_weight: float = 1.0, ignore_index: Optional[int] = 255,
                 eps: float = 1e-3, loss_name: str = "loss_dice"):
        super().__init__(reduction=reduction, loss_weight=loss_weight, loss_name=loss_name)
        if not isinstance(eps, (int, float)) or eps < 0:
            raise ConfigError(f"DiceLoss: eps must be a number >= 0, got {eps!r}")
        self.use_sigmoid, self.activate, self.naive_dice = bool(use_sigmoid), bool(activate), bool(naive_dice)
        self.ignore_index = ignore_index
        self.eps = float(eps)

    def extra_repr(self) -> str:
        return f"use_sigmoid={self.use_sigmoid}, naive_dice={self.naive_dice}, eps={self.eps}, {super().extra_repr()}"

    def _loss(self, cls_score: torch.Tensor, label: torch.Tensor, weight: Optional[torch.Tensor],
              class_weight: Optional[torch.Tensor], ignore_index: int, avg_factor: Optional[float],
              reduction: str) -> torch.Tensor:
        """Loss of logits ``cls_score`` (N,C,H,W) against ``label`` (N,H,W) or a one-hot (N,C,H,W).

        ``ignore_index`` is accepted so every loss can be called alike; as in MMSeg the constructor's
        ``ignore_index`` is the one used (out-of-range labels never count as targets anyway).
        """
        target = label if cls_score.shape == label.shape else expand_onehot_labels_dice(cls_score, label)
        pred = cls_score
        if self.activate:
            if self.use_sigmoid:
                pred = pred.sigmoid()
            elif pred.shape[1] != 1:
                # A softmax over a single channel is constant 1, so MMSeg leaves one channel as is.
                pred = pred.softmax(dim=1)
        return dice_loss(pred, target, weight, eps=self.eps, reduction=reduction, naive_dice=self.naive_dice,
                         avg_factor=avg_factor, ignore_index=self.ignore_index)
