"""MMSegmentation's ``OHEMPixelSampler``: online hard example mining over pixels.

The decode head calls ``sample(seg_logit, seg_label)`` and passes the returned 0/1 map to its losses as the
pixel ``weight``; ignored pixels always get 0. Two modes, as in MMSeg:

- with ``thresh``: p = softmax probability of each valid pixel's ground-truth class. Sort p ascending and
  take ``t_k`` = the value at index ``min(min_kept·N, V−1)`` (V valid pixels, N images). Keep every pixel
  with ``p < max(thresh, t_k)``: all low-confidence pixels, and at least about ``min_kept`` per image.
- without ``thresh``: sum the head's losses per pixel (``reduction_override='none'``) and keep the
  ``min_kept·N`` valid pixels with the largest loss.
"""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from rayseg.errors import ConfigError
from rayseg.registry import PIXEL_SAMPLERS


@PIXEL_SAMPLERS.register()
class OHEMPixelSampler:
    """Online Hard Example Mining sampler for segmentation (MMSeg semantics).

    Not an ``nn.Module`` on purpose: it holds a reference to its head, and registering that as a
    sub-module would make the head its own descendant.

    Args:
        context: the decode head that owns the sampler (``ignore_index`` and ``loss_decode`` are read from it).
        thresh: probability below which a pixel counts as hard; None ranks pixels by loss instead.
        min_kept: minimum number of pixels kept per image (the batch keeps ``min_kept`` × batch size).
    """

    def __init__(self, context: Any, thresh: Optional[float] = None, min_kept: int = 100000):
        if thresh is not None and (isinstance(thresh, bool) or not isinstance(thresh, (int, float))):
            raise ConfigError(f"OHEMPixelSampler: thresh must be a number or None, got {thresh!r}")
        if isinstance(min_kept, bool) or not isinstance(min_kept, int) or min_kept <= 1:
            raise ConfigError(f"OHEMPixelSampler: min_kept must be an int > 1, got {min_kept!r}")
        if not hasattr(context, "ignore_index") or not hasattr(context, "loss_decode"):
            raise ConfigError("OHEMPixelSampler: context must be a decode head (with ignore_index and loss_decode)")
        self.context = context
        self.thresh = None if thresh is None else float(thresh)
        self.min_kept = min_kept

    def __repr__(self) -> str:
        return f"OHEMPixelSampler(thresh={self.thresh}, min_kept={self.min_kept})"

    def sample(self, seg_logit: torch.Tensor, seg_label: torch.Tensor) -> torch.Tensor:
        """Return a (N,H,W) weight: 1 for kept pixels, 0 otherwise.

        Args:
            seg_logit: logits (N,C,H,W), already at the label's size.
            seg_label: labels (N,1,H,W) or (N,H,W).
        """
        with torch.no_grad():
            if seg_label.dim() == 4:
                if seg_label.shape[1] != 1:
                    raise ValueError(f"OHEMPixelSampler: labels must be (N,1,H,W) or (N,H,W), "
                                     f"got {tuple(seg_label.shape)}")
                seg_label = seg_label.squeeze(1)
            if seg_logit.shape[2:] != seg_label.shape[1:]:
                raise ValueError(f"OHEMPixelSampler: logits {tuple(seg_logit.shape)} and labels "
                                 f"{tuple(seg_label.shape)} differ in size")
            seg_label = seg_label.long()
            ignore_index = self.context.ignore_index
            batch_kept = self.min_kept * seg_label.size(0)
            valid_mask = seg_label != ignore_index
            seg_weight = seg_logit.new_zeros(seg_label.shape)
            valid_seg_weight = seg_weight[valid_mask]
            if self.thresh is not None:
                # Ignored pixels point at class 0 for the gather; they are masked out right after.
                safe_label = torch.where(valid_mask, seg_label, torch.zeros_like(seg_label))
                seg_prob = F.softmax(seg_logit, dim=1).gather(1, safe_label.unsqueeze(1)).squeeze(1)
                valid_prob = seg_prob[valid_mask]
                sort_prob, _ = valid_prob.sort()
                min_threshold = sort_prob[min(batch_kept, sort_prob.numel() - 1)].item() if sort_prob.numel() else 0.0
                threshold = max(min_threshold, self.thresh)
                valid_seg_weight[valid_prob < threshold] = 1.0
            else:
                losses = self._pixel_losses(seg_logit, seg_label)
                # A full sort is faster than topk here (pytorch/pytorch#22812, as noted in MMSeg).
                _, sort_indices = losses[valid_mask].sort(descending=True)
                valid_seg_weight[sort_indices[:batch_kept]] = 1.0
            seg_weight[valid_mask] = valid_seg_weight
            return seg_weight

    def _pixel_losses(self, seg_logit: torch.Tensor, seg_label: torch.Tensor) -> torch.Tensor:
        """Sum of the head's losses per pixel, shape (N,H,W)."""
        modules = self.context.loss_decode
        modules = list(modules) if isinstance(modules, nn.ModuleList) else [modules]
        total = seg_logit.new_zeros(seg_label.shape)
        for loss_module in modules:
            value = loss_module(seg_logit, seg_label, weight=None, ignore_index=self.context.ignore_index,
                                reduction_override="none")
            if value.shape == seg_logit.shape:
                # Per-class terms (sigmoid losses): a pixel's loss is the sum over its classes.
                value = value.sum(dim=1)
            if value.shape != seg_label.shape:
                raise ConfigError(f"OHEMPixelSampler without thresh needs per-pixel losses, but "
                                  f"{type(loss_module).__name__} gives shape {tuple(value.shape)}; set thresh")
            total = total + value
        return total
