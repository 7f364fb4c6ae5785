"""PSPHead (MMSeg): pyramid pooling at several grid sizes, concatenated, then a 3×3 bottleneck."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models.heads.decode_head import BaseDecodeHead
from rayseg.models.utils import ConvModule, resize
from rayseg.registry import HEADS, check_kwargs


class PPM(nn.ModuleList):
    """Pooling Pyramid Module: per scale ``Sequential(AdaptiveAvgPool2d, ConvModule 1×1)`` (keys ``i.1.conv``)."""

    def __init__(self, pool_scales: Sequence[int], in_channels: int, channels: int, conv_cfg: Optional[Dict],
                 norm_cfg: Optional[Dict], act_cfg: Optional[Dict], align_corners: bool):
        super().__init__()
        self.align_corners = align_corners
        for scale in pool_scales:
            self.append(nn.Sequential(
                nn.AdaptiveAvgPool2d(scale),
                ConvModule(in_channels, channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)))

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [resize(ppm(x), size=x.shape[2:], mode="bilinear", align_corners=self.align_corners) for ppm in self]


@HEADS.register()
class PSPHead(BaseDecodeHead):
    """Pyramid Scene Parsing head.

    Args:
        pool_scales: output grid sizes of the pyramid poolings.
        **kwargs: BaseDecodeHead arguments (unknown keys are rejected there).
    """

    def __init__(self, pool_scales: Sequence[int] = (1, 2, 3, 6), **kwargs: Any):
        # Check here (not only in BaseDecodeHead) so a typo gets a 'did you mean' hint.
        check_kwargs(BaseDecodeHead.__init__, kwargs, "head 'PSPHead'")
        super().__init__(**kwargs)
        if not isinstance(pool_scales, (list, tuple)) or not pool_scales:
            raise ConfigError(f"PSPHead: pool_scales must be a non-empty list, got {pool_scales!r}")
        self.pool_scales = tuple(pool_scales)
        self.psp_modules = PPM(self.pool_scales, self.in_channels, self.channels, conv_cfg=self.conv_cfg,
                               norm_cfg=self.norm_cfg, act_cfg=self.act_cfg, align_corners=self.align_corners)
        self.bottleneck = ConvModule(self.in_channels + len(self.pool_scales) * self.channels, self.channels, 3,
                                     padding=1, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        self.init_weights()

    def _forward_feature(self, inputs: Any) -> torch.Tensor:
        x = self._transform_inputs(inputs)
        return self.bottleneck(torch.cat([x] + self.psp_modules(x), dim=1))

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.cls_seg(self._forward_feature(inputs))
