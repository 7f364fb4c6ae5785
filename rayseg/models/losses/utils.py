"""MMSeg's loss helpers (``mmseg.models.losses.utils``) and the adapter that lets losses written as in MMSeg's
guide run under rayseg's decode heads.

- ``reduce_loss``, ``weight_reduce_loss`` and the ``weighted_loss`` decorator have MMSeg's semantics: an
  element-wise loss function becomes ``fn(pred, target, weight=None, reduction='mean', avg_factor=None,
  **kwargs)``; the weight multiplies element-wise, ``avg_factor`` replaces the element count of the mean.
- ``adapt_loss`` (applied by the ``LOSSES`` registry to every loss it builds): a loss whose ``forward`` takes
  ``ignore_index`` is used as it is; one that does not (MMSeg's guide example ``MyLoss(pred, target, weight,
  avg_factor, reduction_override)``) is wrapped in ``ElementwiseLossAdapter``.
"""
from __future__ import annotations

import functools
import inspect
import re
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

# MMSeg 1.x: a mean over an avg_factor of 0 (every pixel ignored) gives 0, not NaN.
_EPS = torch.finfo(torch.float32).eps


def reduce_loss(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """``'none'``: the tensor as it is; ``'mean'``: its mean; ``'sum'``: its sum."""
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"reduction must be 'none', 'mean' or 'sum', got {reduction!r}")


def weight_reduce_loss(loss: torch.Tensor, weight: Optional[torch.Tensor] = None, reduction: str = "mean",
                       avg_factor: Optional[float] = None) -> torch.Tensor:
    """Multiply ``loss`` by ``weight`` element-wise, then reduce (MMSeg's ``weight_reduce_loss``).

    ``weight`` has ``loss``'s number of dimensions; its second dimension is 1 (broadcast over channels) or
    ``loss``'s. With ``avg_factor`` the mean is ``sum / avg_factor``; ``avg_factor`` with ``'sum'`` is an error.
    """
    if weight is not None:
        if weight.dim() != loss.dim():
            raise ValueError(f"weight has {weight.dim()} dimensions, the loss {loss.dim()}")
        if weight.dim() > 1 and weight.size(1) not in (1, loss.size(1)):
            raise ValueError(f"weight's dimension 1 is {weight.size(1)}: it must be 1 or the loss's "
                             f"({loss.size(1)})")
        loss = loss * weight
    if avg_factor is None:
        return reduce_loss(loss, reduction)
    if reduction == "mean":
        return loss.sum() / (avg_factor + _EPS)
    if reduction == "none":
        return loss
    raise ValueError('avg_factor can not be used with reduction="sum"')


def weighted_loss(loss_func: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Decorator: an element-wise ``loss_func(pred, target, **kwargs)`` becomes
    ``loss_func(pred, target, weight=None, reduction='mean', avg_factor=None, **kwargs)`` (MMSeg's
    ``weighted_loss``), weighting and reducing its output with ``weight_reduce_loss``."""

    @functools.wraps(loss_func)
    def wrapper(pred: torch.Tensor, target: torch.Tensor, weight: Optional[torch.Tensor] = None,
                reduction: str = "mean", avg_factor: Optional[float] = None, **kwargs: Any) -> torch.Tensor:
        loss = loss_func(pred, target, **kwargs)
        return weight_reduce_loss(loss, weight, reduction, avg_factor)

    return wrapper


def _accepts(fn: Callable, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return True
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def default_loss_name(loss: nn.Module) -> str:
    """``loss_<name>`` for a loss without ``loss_name``: the class name without ``Loss``, in snake case
    (``MyLoss`` → ``loss_my``, ``BoundaryIoULoss`` → ``loss_boundary_io_u``), as MMSeg names its own
    (``loss_ce``, ``loss_dice``, ``loss_focal``). Only terms whose name starts with ``loss_`` are optimised."""
    stem = re.sub(r"Loss$", "", type(loss).__name__) or type(loss).__name__
    return "loss_" + re.sub(r"(?<!^)(?=[A-Z])", "_", stem).lower()


class ElementwiseLossAdapter(nn.Module):
    """Runs a loss written as in MMSeg's guide under rayseg's decode heads.

    The heads call every loss as ``loss(seg_logits, seg_label, weight=None, ignore_index=255, ...)`` and read
    ``loss.loss_name``. A loss whose ``forward`` has no ``ignore_index`` compares ``pred`` with a ``target``
    of the same shape (the guide's ``my_loss`` asserts it), so it is called with:

    - ``pred``: the logits (N, C, H, W), as the head produced them;
    - ``target``: the labels one-hot encoded to (N, C, H, W) in the logits' dtype (0 at ignored pixels);
    - ``weight``: 1 at valid pixels and 0 at ``ignore_index`` ones (times the head's pixel weight, e.g. an
      OHEM sampler's), broadcast to (N, C, H, W): ignored pixels add nothing;
    - ``avg_factor`` and ``reduction_override`` as the head gave them, when ``forward`` takes them.

    With ``reduction_override='none'`` (what a pixel sampler asks for) the (N, C, H, W) result is summed over
    the classes, giving the per-pixel (N, H, W) loss the samplers expect. ``loss_name`` is the loss's own when
    it has one, else ``default_loss_name``. The wrapped module is ``.loss`` (no parameters are added).
    """

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.loss = loss
        forward = loss.forward
        self._takes = {k: _accepts(forward, k) for k in ("weight", "avg_factor", "reduction_override")}
        self._name = getattr(loss, "loss_name", None) or default_loss_name(loss)

    @property
    def loss_name(self) -> str:
        """Name of this term in the loss dict."""
        return self._name

    def forward(self, seg_logits: torch.Tensor, seg_label: torch.Tensor, weight: Optional[torch.Tensor] = None,
                ignore_index: int = 255, avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None) -> torch.Tensor:
        """The wrapped loss on one-hot targets with ignored pixels weighted 0; see the class docstring."""
        num_classes = seg_logits.shape[1]
        valid = seg_label != ignore_index
        target = F.one_hot(torch.where(valid, seg_label, torch.zeros_like(seg_label)).long(), num_classes)
        target = target.permute(0, 3, 1, 2).to(seg_logits.dtype) * valid.unsqueeze(1).to(seg_logits.dtype)
        pixel_weight = valid.to(seg_logits.dtype)
        if weight is not None:
            pixel_weight = pixel_weight * weight.to(seg_logits.dtype)
        kwargs: dict = {}
        if self._takes["weight"]:
            kwargs["weight"] = pixel_weight.unsqueeze(1).expand_as(seg_logits)
        if self._takes["avg_factor"] and avg_factor is not None:
            kwargs["avg_factor"] = avg_factor
        if self._takes["reduction_override"] and reduction_override is not None:
            kwargs["reduction_override"] = reduction_override
        out = self.loss(seg_logits, target, **kwargs)
        if reduction_override == "none" and out.dim() == 4:
            out = out.sum(dim=1)  # per pixel, as the samplers rank pixels
        return out


def adapt_loss(loss: Any) -> Any:
    """The loss a decode head can call: ``loss`` itself when its ``forward`` takes ``ignore_index`` (every
    rayseg loss; a ``loss_name`` is added if it has none), else ``ElementwiseLossAdapter(loss)``."""
    if not isinstance(loss, nn.Module):
        return loss
    if _accepts(loss.forward, "ignore_index"):
        if not hasattr(loss, "loss_name"):
            loss.loss_name = default_loss_name(loss)
        return loss
    return ElementwiseLossAdapter(loss)
