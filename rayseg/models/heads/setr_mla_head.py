"""SETRMLAHead (MMSeg): SETR's multi-level aggregation head, on the outputs of ``MLANeck``."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models.heads.decode_head import BaseDecodeHead
from rayseg.models.upsample import Upsample
from rayseg.models.utils import ConvModule
from rayseg.registry import HEADS, check_kwargs


@HEADS.register()
class SETRMLAHead(BaseDecodeHead):
    """Per input: two 3×3 ConvModules to ``mla_channels`` and bilinear ×``up_scale`` (``up_convs.{i}.0/1/2``);
    the results are concatenated (``channels == inputs × mla_channels``) and classified.

    Always ``input_transform='multiple_select'`` (may be omitted or given so). The inputs must share a size.
    """

    def __init__(self, mla_channels: int = 128, up_scale: int = 4, **kwargs: Any):
        check_kwargs(BaseDecodeHead.__init__, kwargs, "head 'SETRMLAHead'")
        transform = kwargs.pop("input_transform", "multiple_select")
        if transform != "multiple_select":
            raise ConfigError(f"SETRMLAHead: input_transform must be 'multiple_select', got {transform!r}")
        super().__init__(input_transform="multiple_select", **kwargs)
        self.mla_channels = mla_channels
        if self.channels != len(self.in_channels) * mla_channels:
            raise ConfigError(f"SETRMLAHead: channels ({self.channels}) must be len(in_channels) "
                              f"({len(self.in_channels)}) × mla_channels ({mla_channels})")
        self.up_convs = nn.ModuleList([
            nn.Sequential(
                ConvModule(in_ch, mla_channels, 3, padding=1, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg),
                ConvModule(mla_channels, mla_channels, 3, padding=1, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg),
                Upsample(scale_factor=up_scale, mode="bilinear", align_corners=self.align_corners))
            for in_ch in self.in_channels])
        self.init_weights()

    def forward(self, inputs: Any) -> torch.Tensor:
        selected = self._transform_inputs(inputs)
        return self.cls_seg(torch.cat([up_conv(x) for x, up_conv in zip(selected, self.up_convs)], dim=1))
