"""FCNHead (MMSeg): a stack of convs, optionally concatenated with the input, then the classifier."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models.heads.decode_head import BaseDecodeHead
from rayseg.models.utils import ConvModule
from rayseg.registry import HEADS, check_kwargs


@HEADS.register()
class FCNHead(BaseDecodeHead):
    """Fully Convolutional Networks head; also MMSeg's usual auxiliary head.

    Args:
        num_convs: number of convs before the classifier (0 needs ``in_channels == channels``).
        kernel_size: kernel size of those convs.
        concat_input: concatenate the input with the conv output and fuse with one more conv.
        dilation: dilation of the stacked convs.
        **kwargs: BaseDecodeHead arguments (unknown keys are rejected there).
    """

    def __init__(self, num_convs: int = 2, kernel_size: int = 3, concat_input: bool = True, dilation: int = 1,
                 **kwargs: Any):
        if not (isinstance(num_convs, int) and num_convs >= 0 and isinstance(dilation, int) and dilation > 0):
            raise ConfigError(f"FCNHead: need num_convs >= 0 and an int dilation > 0, got {num_convs!r}, {dilation!r}")
        self.num_convs, self.concat_input, self.kernel_size = num_convs, concat_input, kernel_size
        # Check here (not only in BaseDecodeHead) so a typo gets a 'did you mean' hint.
        check_kwargs(BaseDecodeHead.__init__, kwargs, "head 'FCNHead'")
        super().__init__(**kwargs)
        if num_convs == 0 and self.in_channels != self.channels:
            raise ConfigError(f"FCNHead: num_convs=0 needs in_channels == channels ({self.in_channels} != {self.channels})")
        padding = (kernel_size // 2) * dilation
        common = dict(conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        convs = [ConvModule(self.in_channels if i == 0 else self.channels, self.channels, kernel_size,
                            padding=padding, dilation=dilation, **common) for i in range(num_convs)]
        self.convs = nn.Sequential(*convs) if convs else nn.Identity()
        if concat_input:
            self.conv_cat = ConvModule(self.in_channels + self.channels, self.channels, kernel_size,
                                       padding=kernel_size // 2, **common)
        self.init_weights()

    def _forward_feature(self, inputs: Any) -> torch.Tensor:
        x = self._transform_inputs(inputs)
        feats = self.convs(x)
        if self.concat_input:
            feats = self.conv_cat(torch.cat([x, feats], dim=1))
        return feats

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.cls_seg(self._forward_feature(inputs))
