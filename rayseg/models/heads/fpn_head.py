"""FPNHead (MMSeg, Semantic FPN): one conv tower per pyramid level, upsampled to the finest level and summed."""
from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models.heads.decode_head import BaseDecodeHead
from rayseg.models.upsample import Upsample
from rayseg.models.utils import ConvModule, resize
from rayseg.registry import HEADS, check_kwargs


@HEADS.register()
class FPNHead(BaseDecodeHead):
    """Panoptic Feature Pyramid Networks' semantic head.

    Always uses ``input_transform='multiple_select'``. Level i gets ``max(1, log2(stride_i / stride_0))``
    3×3 ConvModules, each followed by a 2× bilinear upsample on the coarser levels (``scale_heads.i``; the
    upsamples occupy odd indices, as in MMSeg's checkpoints); the levels are summed at the finest one.

    Args:
        feature_strides: stride of each input, finest first (``[4, 8, 16, 32]``).
        **kwargs: BaseDecodeHead arguments; ``input_transform`` may be omitted or ``'multiple_select'``.
    """

    def __init__(self, feature_strides: Sequence[int], **kwargs: Any):
        check_kwargs(BaseDecodeHead.__init__, kwargs, "head 'FPNHead'")
        transform = kwargs.pop("input_transform", "multiple_select")
        if transform != "multiple_select":
            raise ConfigError(f"FPNHead: input_transform is always 'multiple_select', got {transform!r}")
        super().__init__(input_transform="multiple_select", **kwargs)
        strides = list(feature_strides) if isinstance(feature_strides, (list, tuple)) else None
        if not strides or len(strides) != len(self.in_channels) or min(strides) != strides[0]:
            raise ConfigError(f"FPNHead: feature_strides must list one stride per input ({len(self.in_channels)}), "
                              f"finest first; got {feature_strides!r}")
        self.feature_strides = strides
        common = dict(conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        self.scale_heads = nn.ModuleList()
        for i, stride in enumerate(strides):
            length = max(1, int(math.log2(stride) - math.log2(strides[0])))
            layers = []
            for k in range(length):
                layers.append(ConvModule(self.in_channels[i] if k == 0 else self.channels, self.channels, 3,
                                         padding=1, **common))
                if stride != strides[0]:
                    layers.append(Upsample(scale_factor=2, mode="bilinear", align_corners=self.align_corners))
            self.scale_heads.append(nn.Sequential(*layers))
        self.init_weights()

    def forward(self, inputs: Any) -> torch.Tensor:
        x = self._transform_inputs(inputs)
        output = self.scale_heads[0](x[0])
        for i in range(1, len(self.feature_strides)):
            output = output + resize(self.scale_heads[i](x[i]), size=output.shape[2:], mode="bilinear",
                                     align_corners=self.align_corners)
        return self.cls_seg(output)
