"""SegformerHead (MMSeg): the all-MLP decoder of SegFormer — 1×1 per level, upsample, concatenate, fuse."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models.heads.decode_head import BaseDecodeHead
from rayseg.models.utils import ConvModule, resize
from rayseg.registry import HEADS, check_kwargs

_MODES = ("nearest", "bilinear", "bicubic", "area", "nearest-exact")


@HEADS.register()
class SegformerHead(BaseDecodeHead):
    """The all-MLP head of SegFormer (a 1×1 conv is a per-pixel linear layer).

    Always uses ``input_transform='multiple_select'``: each selected input gets a 1×1 ``convs``
    entry, is resized to the first input's size and the concatenation is fused by a 1×1
    ``fusion_conv``. Logits come out at the first input's resolution (stride 4 on MiT).

    Args:
        interpolate_mode: ``F.interpolate`` mode for the upsampling (``align_corners`` applies to
            bilinear/bicubic only).
        **kwargs: BaseDecodeHead arguments (unknown keys are rejected there). ``input_transform``
            may be omitted or given as ``'multiple_select'``.
    """

    def __init__(self, interpolate_mode: str = "bilinear", **kwargs: Any):
        # Check here (not only in BaseDecodeHead) so a typo gets a 'did you mean' hint.
        check_kwargs(BaseDecodeHead.__init__, kwargs, "head 'SegformerHead'")
        transform = kwargs.pop("input_transform", "multiple_select")
        if transform != "multiple_select":
            raise ConfigError(f"SegformerHead: input_transform is always 'multiple_select', got {transform!r}")
        if interpolate_mode not in _MODES:
            raise ConfigError(f"SegformerHead: interpolate_mode must be one of {_MODES}, got {interpolate_mode!r}")
        self.interpolate_mode = interpolate_mode
        super().__init__(input_transform="multiple_select", **kwargs)
        self.convs = nn.ModuleList([
            ConvModule(c, self.channels, 1, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
            for c in self.in_channels])
        # As MMSeg: the fusion conv takes norm_cfg but keeps ConvModule's default ReLU, whatever act_cfg says.
        self.fusion_conv = ConvModule(self.channels * len(self.in_channels), self.channels, 1,
                                      conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg)
        self.init_weights()

    def _forward_feature(self, inputs: Any) -> torch.Tensor:
        inputs = self._transform_inputs(inputs)
        size = inputs[0].shape[2:]
        outs = [resize(conv(x), size=size, mode=self.interpolate_mode, align_corners=self.align_corners)
                for conv, x in zip(self.convs, inputs)]
        return self.fusion_conv(torch.cat(outs, dim=1))

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.cls_seg(self._forward_feature(inputs))
