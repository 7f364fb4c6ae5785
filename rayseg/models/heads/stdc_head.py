"""STDCHead (MMSeg): an FCNHead trained on boundaries (the STDC "detail aggregation" loss)."""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn as nn
import torch.nn.functional as F

from rayseg.models.heads.fcn_head import FCNHead
from rayseg.registry import HEADS


@HEADS.register()
class STDCHead(FCNHead):
    """FCNHead whose losses compare its logits with boundary targets computed from the labels: a Laplacian of
    the label map at strides 1, 2 and 4 (thresholded, upsampled nearest), fused with weights 0.6/0.3/0.1 and
    thresholded again to 0/1 (MMSeg's ``loss_by_feat``; MMSeg configs use 2 classes, sigmoid CE + Dice).

    ``laplacian_kernel`` (buffer) and ``fusion_kernel`` (frozen parameter) are in the state dict, as MMSeg's.

    Args:
        boundary_threshold: threshold of every boundary map.
        **kwargs: FCNHead arguments.
    """

    def __init__(self, boundary_threshold: float = 0.1, **kwargs: Any):
        super().__init__(**kwargs)
        self.boundary_threshold = boundary_threshold
        self.register_buffer("laplacian_kernel", torch.tensor([-1, -1, -1, -1, 8, -1, -1, -1, -1],
                                                              dtype=torch.float32).reshape(1, 1, 3, 3))
        self.fusion_kernel = nn.Parameter(torch.tensor([[6. / 10], [3. / 10], [1. / 10]],
                                                       dtype=torch.float32).reshape(1, 3, 1, 1), requires_grad=False)

    def _binary(self, x: torch.Tensor) -> torch.Tensor:
        return (x > self.boundary_threshold).to(x.dtype)

    def boundary_targets(self, seg_label: torch.Tensor) -> torch.Tensor:
        """(N, 1, H, W) 0/1 boundary labels (long) from (N, 1, H, W) class labels, the ignore value included
        (as MMSeg, which convolves the raw label map)."""
        label = seg_label.to(self.laplacian_kernel.dtype)
        full = self._binary(F.conv2d(label, self.laplacian_kernel, padding=1).clamp(min=0))
        pyramid = [full]
        for stride in (2, 4):
            down = F.conv2d(label, self.laplacian_kernel, stride=stride, padding=1).clamp(min=0)
            pyramid.append(self._binary(F.interpolate(down, full.shape[2:], mode="nearest")))
        fused = F.conv2d(torch.cat(pyramid, dim=1), self.fusion_kernel)
        return self._binary(fused).long()

    def losses(self, seg_logits: torch.Tensor, seg_label: torch.Tensor) -> Dict[str, torch.Tensor]:
        if seg_label.dim() == 3:
            seg_label = seg_label.unsqueeze(1)
        with torch.no_grad():
            targets = self.boundary_targets(seg_label)
        return super().losses(seg_logits, targets)
