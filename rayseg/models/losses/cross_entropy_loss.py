"""MMSegmentation's CrossEntropyLoss, including its averaging rules.

The rules differ from ``torch.nn.CrossEntropyLoss`` on purpose (results must match MMSeg):
- ``reduction='mean'`` without ``avg_non_ignore`` divides by ALL pixels; ignored ones add 0.
- with ``avg_non_ignore`` it divides by the number of non-ignored pixels.
- ``class_weight`` scales each pixel's term. What it does to the denominator is ``class_weight_norm``:
  ``"weighted"`` (default, MMSeg 1.x and torch's weighted mean) divides by the sum of
  ``class_weight[label]`` over the valid pixels, with or without ``avg_non_ignore``; ``"pixels"`` (MMSeg
  0.x) keeps the pixel count of the two rules above. MMSeg 1.2.2 raises IndexError when a weighted batch
  holds ignored pixels; we apply its rule over the valid pixels. See docs/models.md.
"""
from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from rayseg.errors import ConfigError
from rayseg.models.losses.base import BaseLoss
from rayseg.registry import LOSSES

_EPS = torch.finfo(torch.float32).eps


def get_class_weight(class_weight: Union[None, str, Sequence[float]]) -> Optional[List[float]]:
    """Return ``class_weight`` as a list; a string is a path to a .npy, .txt or .json file."""
    if class_weight is None:
        return None
    if isinstance(class_weight, str):
        if not os.path.isfile(class_weight):
            raise ConfigError(f"class_weight file {class_weight!r} does not exist")
        if class_weight.endswith(".npy"):
            values = np.load(class_weight)
        elif class_weight.endswith(".txt"):
            values = np.loadtxt(class_weight, ndmin=1)
        elif class_weight.endswith(".json"):
            with open(class_weight) as f:
                values = json.load(f)
        else:
            raise ConfigError(f"class_weight file {class_weight!r}: use .npy, .txt or .json")
        class_weight = values
    return [float(v) for v in np.asarray(class_weight, dtype=np.float64).reshape(-1)]


def weight_reduce_loss(loss: torch.Tensor, weight: Optional[torch.Tensor] = None, reduction: str = "mean",
                       avg_factor: Optional[float] = None) -> torch.Tensor:
    """Apply element weights, then reduce; ``avg_factor`` replaces the element count for 'mean'."""
    if weight is not None:
        loss = loss * weight
    if avg_factor is None:
        if reduction == "mean":
            return loss.mean()
        return loss.sum() if reduction == "sum" else loss
    if reduction == "mean":
        # eps keeps a batch whose pixels are all ignored at loss 0 rather than NaN.
        return loss.sum() / (avg_factor + _EPS)
    if reduction != "none":
        raise ValueError('avg_factor can not be used with reduction="sum"')
    return loss


CLASS_WEIGHT_NORMS = ("weighted", "pixels")


def cross_entropy(pred: torch.Tensor, label: torch.Tensor, weight: Optional[torch.Tensor] = None,
                  class_weight: Optional[torch.Tensor] = None, reduction: str = "mean",
                  avg_factor: Optional[float] = None, ignore_index: int = -100,
                  avg_non_ignore: bool = False, class_weight_norm: str = "weighted") -> torch.Tensor:
    """Softmax CE with MMSeg's reduction (see module docstring)."""
    # reduction='none' gives per-pixel terms already scaled by class_weight[label], 0 where ignored.
    loss = F.cross_entropy(pred, label, weight=class_weight, reduction="none", ignore_index=ignore_index)
    if avg_factor is None and reduction == "mean":
        valid = label != ignore_index
        if class_weight is not None and class_weight_norm == "weighted":
            # MMSeg 1.x: sum of class_weight[label]; the per-pixel ``weight`` (a sampler's) does not enter it.
            avg_factor = class_weight[label[valid]].sum()  # a tensor: no device sync
        elif avg_non_ignore:
            avg_factor = valid.sum().item()
    if weight is not None:
        weight = weight.float()
    return weight_reduce_loss(loss, weight=weight, reduction=reduction, avg_factor=avg_factor)


def _expand_onehot_labels(labels: torch.Tensor, label_weights: Optional[torch.Tensor], target_shape: torch.Size,
                          ignore_index: int):
    """(N,H,W) labels → one-hot (N,C,H,W) targets plus a weight that zeroes ignored pixels."""
    if target_shape[1] == 1:
        # Binary segmentation: a single logit channel, labels are 0/1.
        bin_labels = labels.unsqueeze(1)
        valid_mask = ((bin_labels >= 0) & (bin_labels != ignore_index)).float()
        bin_weights = valid_mask if label_weights is None else label_weights.unsqueeze(1).float() * valid_mask
        return bin_labels, bin_weights, valid_mask
    bin_labels = labels.new_zeros(target_shape)
    valid = (labels >= 0) & (labels != ignore_index)
    inds = torch.nonzero(valid, as_tuple=True)
    if inds[0].numel() > 0:
        if labels.dim() == 3:
            bin_labels[inds[0], labels[valid], inds[1], inds[2]] = 1
        else:
            bin_labels[inds[0], labels[valid]] = 1
    valid_mask = valid.unsqueeze(1).expand(target_shape).float()
    if label_weights is None:
        bin_weights = valid_mask
    else:
        bin_weights = label_weights.unsqueeze(1).expand(target_shape).float() * valid_mask
    return bin_labels, bin_weights, valid_mask


def binary_cross_entropy(pred: torch.Tensor, label: torch.Tensor, weight: Optional[torch.Tensor] = None,
                         class_weight: Optional[torch.Tensor] = None, reduction: str = "mean",
                         avg_factor: Optional[float] = None, ignore_index: int = -100,
                         avg_non_ignore: bool = False) -> torch.Tensor:
    """Per-class sigmoid BCE (MMSeg ``use_sigmoid``): labels become one-hot, ignored pixels weigh 0.

    Without ``avg_non_ignore`` the mean runs over all N·C·H·W terms; with it over the valid ones.
    """
    if pred.dim() != label.dim():
        if not ((pred.dim() == 2 and label.dim() == 1) or (pred.dim() == 4 and label.dim() == 3)):
            raise ValueError("use_sigmoid supports pred [N, C] with label [N], or pred [N, C, H, W] with label [N, H, W]")
        label, weight, valid_mask = _expand_onehot_labels(label, weight, pred.shape, ignore_index)
    else:
        valid_mask = ((label >= 0) & (label != ignore_index)).float()
        weight = valid_mask if weight is None else weight * valid_mask
    if reduction == "mean" and avg_factor is None and avg_non_ignore:
        avg_factor = valid_mask.sum().item()
    if class_weight is not None and pred.dim() == 4:
        # pos_weight broadcasts over the last dim; reshape so it applies per class channel.
        class_weight = class_weight.view(-1, 1, 1)
    loss = F.binary_cross_entropy_with_logits(pred, label.float(), pos_weight=class_weight, reduction="none")
    return weight_reduce_loss(loss, weight, reduction=reduction, avg_factor=avg_factor)


@LOSSES.register()
class CrossEntropyLoss(BaseLoss):
    """Cross-entropy loss with MMSeg's arguments and averaging rules.

    Args:
        use_sigmoid: per-class sigmoid BCE instead of softmax CE.
        use_mask: MMDet's mask CE; not meaningful for semantic segmentation, so refused.
        reduction: 'none', 'mean' or 'sum'.
        class_weight: per-class weights, or a path to a .npy/.txt/.json file holding them.
        loss_weight: factor applied to the result.
        loss_name: key of this term in the loss dict; must start with ``loss_`` to be optimised.
        avg_non_ignore: average over non-ignored pixels instead of all pixels.
        class_weight_norm: with ``class_weight`` and softmax CE, the denominator of the mean:
            ``"weighted"`` (default; MMSeg 1.x, torch) the sum of ``class_weight[label]`` over the valid
            pixels, ``"pixels"`` (MMSeg 0.x) the pixel count (all pixels, or the valid ones with
            ``avg_non_ignore``). No effect without class weights or with ``use_sigmoid``.
    """

    def __init__(self, use_sigmoid: bool = False, use_mask: bool = False, reduction: str = "mean",
                 class_weight: Union[None, str, Sequence[float]] = None, loss_weight: float = 1.0,
                 loss_name: str = "loss_ce", avg_non_ignore: bool = False, class_weight_norm: str = "weighted"):
        super().__init__(reduction=reduction, loss_weight=loss_weight, loss_name=loss_name)
        if use_mask:
            raise ConfigError("CrossEntropyLoss: use_mask (MMDet mask CE) is not supported in semantic segmentation")
        if class_weight_norm not in CLASS_WEIGHT_NORMS:
            raise ConfigError(f"CrossEntropyLoss: class_weight_norm must be one of {CLASS_WEIGHT_NORMS}, "
                              f"got {class_weight_norm!r}")
        self.use_sigmoid, self.use_mask = bool(use_sigmoid), bool(use_mask)
        self.class_weight = get_class_weight(class_weight)
        self.avg_non_ignore = bool(avg_non_ignore)
        self.class_weight_norm = class_weight_norm
        self.cls_criterion = binary_cross_entropy if self.use_sigmoid else cross_entropy

    def extra_repr(self) -> str:
        own = f"use_sigmoid={self.use_sigmoid}, avg_non_ignore={self.avg_non_ignore}"
        return f"{own}, class_weight_norm={self.class_weight_norm!r}, {super().extra_repr()}"

    def _loss(self, cls_score: torch.Tensor, label: torch.Tensor, weight: Optional[torch.Tensor],
              class_weight: Optional[torch.Tensor], ignore_index: int, avg_factor: Optional[float],
              reduction: str) -> torch.Tensor:
        """Loss of logits ``cls_score`` (N,C,H,W) against ``label`` (N,H,W) long."""
        extra = {} if self.use_sigmoid else {"class_weight_norm": self.class_weight_norm}
        return self.cls_criterion(
            cls_score, label, weight, class_weight=class_weight, reduction=reduction, avg_factor=avg_factor,
            ignore_index=ignore_index, avg_non_ignore=self.avg_non_ignore, **extra)
