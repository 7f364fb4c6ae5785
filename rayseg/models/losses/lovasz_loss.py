"""MMSegmentation's ``LovaszLoss``: Lovász hinge (binary) and Lovász-Softmax (multi-class).

From Berman et al., `The Lovász-Softmax loss <https://arxiv.org/abs/1705.08790>`_, as MMSeg ports it:

- multi-class: softmax, drop ignored pixels, then for each class c (all, those present in the labels, or a
  given list) sort the errors |[y = c] − p_c| in decreasing order and dot them with the gradient of the
  Lovász extension of the Jaccard loss; multiply by ``class_weight[c]``; average over the classes used
  (a plain mean: weights do not enter the denominator).
- binary: logits of shape (N,H,W) or (N,1,H,W), labels 0/1; hinge errors 1 − logit·(2y − 1) sorted in
  decreasing order, ReLU, dotted with the same gradient.
- ``per_image=False`` computes one value over the whole batch (``reduction`` cannot apply to a single value);
  ``per_image=True`` computes one value per image, then ``reduction``.

Pixel weights (e.g. from a pixel sampler) are not used: the Lovász extension is defined on sets of pixels, and
MMSeg's LovaszLoss likewise accepts and ignores ``weight``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from rayseg.errors import ConfigError
from rayseg.models.losses.cross_entropy_loss import get_class_weight, weight_reduce_loss
from rayseg.models.losses.base import BaseLoss
from rayseg.registry import LOSSES

Classes = Union[str, Sequence[int]]


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. errors sorted in decreasing order."""
    gt_sorted = gt_sorted if gt_sorted.is_floating_point() else gt_sorted.float()
    p = len(gt_sorted)
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.cumsum(0)
    union = gts + (1 - gt_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union
    if p > 1:  # one pixel: the jaccard value itself is the gradient
        jaccard[1:p] = jaccard[1:p] - jaccard[0:-1]
    return jaccard


def flatten_binary_logits(logits: torch.Tensor, labels: torch.Tensor, ignore_index: Optional[int] = None):
    """Flatten the batch to (P,) logits and labels, dropping pixels labelled ``ignore_index``."""
    logits, labels = logits.reshape(-1), labels.reshape(-1)
    if ignore_index is None:
        return logits, labels
    valid = labels != ignore_index
    return logits[valid], labels[valid]


def flatten_probs(probs: torch.Tensor, labels: torch.Tensor, ignore_index: Optional[int] = None):
    """Flatten (N,C,H,W) probabilities to (P,C) and labels to (P,), dropping ignored pixels."""
    if probs.dim() == 3:
        # A single sigmoid map (N,H,W).
        probs = probs.unsqueeze(1)
    num_classes = probs.size(1)
    probs = probs.movedim(1, -1).reshape(-1, num_classes)
    labels = labels.reshape(-1)
    if ignore_index is None:
        return probs, labels
    # Boolean indexing keeps the (P, C) shape even when a single pixel is valid.
    valid = labels != ignore_index
    return probs[valid], labels[valid]


def lovasz_hinge_flat(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary Lovász hinge of (P,) logits against (P,) 0/1 labels."""
    if len(labels) == 0:
        # Only ignored pixels: a zero that still depends on the logits, so backward gives zero gradients.
        return logits.sum() * 0.0
    # Labels in the logits' dtype so the dot product below works in float64/float16 too.
    labels = labels.to(logits.dtype)
    signs = 2.0 * labels - 1.0
    errors = 1.0 - logits * signs
    errors_sorted, perm = torch.sort(errors, dim=0, descending=True)
    grad = lovasz_grad(labels[perm])
    return torch.dot(F.relu(errors_sorted), grad)


def lovasz_hinge(logits: torch.Tensor, labels: torch.Tensor, classes: Classes = "present", per_image: bool = False,
                 class_weight: Optional[torch.Tensor] = None, reduction: str = "mean",
                 avg_factor: Optional[float] = None, ignore_index: Optional[int] = 255) -> torch.Tensor:
    """Binary Lovász hinge; ``classes`` and ``class_weight`` are accepted for a uniform call and unused."""
    if per_image:
        losses = [lovasz_hinge_flat(*flatten_binary_logits(logit, label, ignore_index))
                  for logit, label in zip(logits, labels)]
        return weight_reduce_loss(torch.stack(losses), None, reduction, avg_factor)
    return lovasz_hinge_flat(*flatten_binary_logits(logits, labels, ignore_index))


def lovasz_softmax_flat(probs: torch.Tensor, labels: torch.Tensor, classes: Classes = "present",
                        class_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Multi-class Lovász-Softmax of (P,C) probabilities against (P,) labels."""
    if probs.numel() == 0:
        # Only ignored pixels: zero loss and zero gradients.
        return probs.sum() * 0.0
    num_classes = probs.size(1)
    class_to_sum = list(range(num_classes)) if classes in ("all", "present") else list(classes)
    losses = []
    for c in class_to_sum:
        fg = (labels == c).to(probs.dtype)  # foreground for class c
        if classes == "present" and fg.sum() == 0:
            continue
        class_pred = probs[:, 0] if num_classes == 1 else probs[:, c]
        errors = (fg - class_pred).abs()
        errors_sorted, perm = torch.sort(errors, 0, descending=True)
        loss = torch.dot(errors_sorted, lovasz_grad(fg[perm]))
        if class_weight is not None:
            loss = loss * class_weight[c]
        losses.append(loss)
    return torch.stack(losses).mean()


def lovasz_softmax(probs: torch.Tensor, labels: torch.Tensor, classes: Classes = "present", per_image: bool = False,
                   class_weight: Optional[torch.Tensor] = None, reduction: str = "mean",
                   avg_factor: Optional[float] = None, ignore_index: Optional[int] = 255) -> torch.Tensor:
    """Multi-class Lovász-Softmax of (N,C,H,W) probabilities against (N,H,W) labels."""
    if per_image:
        losses = [lovasz_softmax_flat(*flatten_probs(prob.unsqueeze(0), label.unsqueeze(0), ignore_index),
                                      classes=classes, class_weight=class_weight)
                  for prob, label in zip(probs, labels)]
        return weight_reduce_loss(torch.stack(losses), None, reduction, avg_factor)
    return lovasz_softmax_flat(*flatten_probs(probs, labels, ignore_index), classes=classes,
                               class_weight=class_weight)


@LOSSES.register()
class LovaszLoss(BaseLoss):
    """Lovász loss, a surrogate of the IoU (Jaccard) loss, with MMSeg's arguments.

    Args:
        loss_type: 'multi_class' (Lovász-Softmax on softmax probabilities) or 'binary' (Lovász hinge on
            logits of shape (N,H,W) or (N,1,H,W) with 0/1 labels).
        classes: 'all', 'present' (classes present in the labels) or a list of class indices to average.
        per_image: one value per image then ``reduction``, instead of one value over the batch.
        reduction: 'none', 'mean' or 'sum' over images; only meaningful with ``per_image`` (MMSeg insists on
            'none' without it; since a single batch value cannot be reduced further, any value is accepted).
        class_weight: per-class weights (multi-class only), or a path to a .npy/.txt/.json file holding them.
        loss_weight: factor applied to the result.
        loss_name: key of this term in the loss dict; must start with ``loss_`` to be optimised.
    """

    def __init__(self, loss_type: str = "multi_class", classes: Classes = "present", per_image: bool = False,
                 reduction: str = "mean", class_weight: Union[None, str, Sequence[float]] = None,
                 loss_weight: float = 1.0, loss_name: str = "loss_lovasz"):
        super().__init__(reduction=reduction, loss_weight=loss_weight, loss_name=loss_name)
        if loss_type not in ("binary", "multi_class"):
            raise ConfigError(f"LovaszLoss: loss_type must be 'binary' or 'multi_class', got {loss_type!r}")
        self.loss_type = loss_type
        self.cls_criterion = lovasz_hinge if loss_type == "binary" else lovasz_softmax
        self.classes = self._check_classes(classes)
        self.per_image = bool(per_image)
        self.class_weight = get_class_weight(class_weight)

    @staticmethod
    def _check_classes(classes: Classes) -> Union[str, List[int]]:
        if classes in ("all", "present"):
            return classes
        if isinstance(classes, (list, tuple)) and classes and \
                all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes):
            return list(classes)
        raise ConfigError(f"LovaszLoss: classes must be 'all', 'present' or a non-empty list of class indices, "
                          f"got {classes!r}")

    def extra_repr(self) -> str:
        return f"loss_type={self.loss_type!r}, classes={self.classes!r}, per_image={self.per_image}, " \
               f"{super().extra_repr()}"

    def _loss(self, cls_score: torch.Tensor, label: torch.Tensor, weight: Optional[torch.Tensor],
              class_weight: Optional[torch.Tensor], ignore_index: int, avg_factor: Optional[float],
              reduction: str) -> torch.Tensor:
        """Loss of logits ``cls_score`` against ``label`` (N,H,W); ``weight`` is not used (module docstring)."""
        if self.loss_type == "multi_class":
            if cls_score.dim() != 4 or label.shape != (cls_score.shape[0], *cls_score.shape[2:]):
                raise ValueError(f"LovaszLoss: logits {tuple(cls_score.shape)} and labels {tuple(label.shape)} "
                                 f"must be (N,C,H,W) and (N,H,W)")
            if isinstance(self.classes, list) and max(self.classes) >= cls_score.shape[1]:
                raise ValueError(f"LovaszLoss: classes {self.classes} out of range for {cls_score.shape[1]} classes")
            cls_score = F.softmax(cls_score, dim=1)
        else:
            if cls_score.dim() == 4 and cls_score.shape[1] == 1:
                cls_score = cls_score.squeeze(1)
            if cls_score.shape != label.shape:
                raise ValueError(f"LovaszLoss(binary): logits {tuple(cls_score.shape)} must be (N,H,W) or (N,1,H,W) "
                                 f"matching labels {tuple(label.shape)}")
        return self.cls_criterion(
            cls_score, label, self.classes, self.per_image, class_weight=class_weight, reduction=reduction,
            avg_factor=avg_factor, ignore_index=ignore_index)
