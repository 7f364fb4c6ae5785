"""``Upsample``: MMSeg's parameter-free resize module (``mmseg.models.utils.Upsample``), used inside
HRNet's fuse layers and FPNHead's scale heads, where it occupies an index of an ``nn.Sequential`` — so
it must exist as a module for the following layers to keep MMSeg's checkpoint key numbers."""
from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn

from rayseg.models.utils import resize


class Upsample(nn.Module):
    """Resize to ``size``, or by ``scale_factor`` (the output size is ``int(dim * scale_factor)``, as MMSeg)."""

    def __init__(self, size: Any = None, scale_factor: Optional[float] = None, mode: str = "nearest",
                 align_corners: Optional[bool] = None):
        super().__init__()
        if size is None and scale_factor is None:
            raise ValueError("Upsample needs size or scale_factor")
        self.size = size
        self.scale_factor = float(scale_factor) if scale_factor else None
        self.mode, self.align_corners = mode, align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.size or [int(t * self.scale_factor) for t in x.shape[-2:]]
        return resize(x, size=size, mode=self.mode, align_corners=self.align_corners)

    def extra_repr(self) -> str:
        return f"size={self.size}, scale_factor={self.scale_factor}, mode={self.mode!r}"
