"""DepthwiseSeparableASPPHead (MMSeg, DeepLabV3+): separable ASPP plus a decoder fed by a low-level feature."""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models.heads._sep_conv import DepthwiseSeparableConvModule
from rayseg.models.heads.aspp_head import ASPPHead, ASPPModule
from rayseg.models.utils import ConvModule, resize
from rayseg.registry import HEADS

__all__ = ["DepthwiseSeparableASPPHead", "DepthwiseSeparableASPPModule", "DepthwiseSeparableConvModule"]


class DepthwiseSeparableASPPModule(ASPPModule):
    """ASPP whose dilated branches are depthwise-separable 3×3 convs; dilation 1 stays a plain 1×1 ConvModule.

    Keys: ``i.conv.weight`` for the 1×1 branch, ``i.depthwise_conv.conv.weight`` /
    ``i.pointwise_conv.conv.weight`` for the others (as MMSeg). MMSeg does not pass ``conv_cfg`` to the
    separable branches; neither do we.
    """

    def _make_branch(self, dilation: int) -> nn.Module:
        if dilation == 1:
            return super()._make_branch(dilation)
        return DepthwiseSeparableConvModule(self.in_channels, self.channels, 3, dilation=dilation, padding=dilation,
                                            norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)


@HEADS.register()
class DepthwiseSeparableASPPHead(ASPPHead):
    """Encoder-Decoder with Atrous Separable Convolution (DeepLabV3+) head.

    The ASPP output (from ``in_index``, stride 8 or 16) is upsampled to the low-level feature
    ``inputs[0]`` (stride 4 on ResNet), concatenated with its 1×1 projection (``c1_bottleneck``) and
    refined by two depthwise-separable 3×3 convs (``sep_bottleneck``). As in MMSeg the low-level
    feature is always the backbone's first output, whatever ``in_index`` says.

    Args:
        c1_in_channels: channels of ``inputs[0]``; 0 disables the decoder (logits stay at the ASPP's stride).
        c1_channels: channels of the projected low-level feature (48 in MMSeg's configs).
        **kwargs: ASPPHead arguments (``dilations``) and BaseDecodeHead arguments.
    """

    def __init__(self, c1_in_channels: int, c1_channels: int, **kwargs: Any):
        for key, value in (("c1_in_channels", c1_in_channels), ("c1_channels", c1_channels)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"DepthwiseSeparableASPPHead: {key} must be an int >= 0, got {value!r}")
        if c1_in_channels > 0 and c1_channels == 0:
            raise ConfigError("DepthwiseSeparableASPPHead: c1_channels must be > 0 when c1_in_channels > 0")
        # Set before ASPPHead.__init__, which calls the _make_* hooks below.
        self.c1_in_channels, self.c1_channels = c1_in_channels, c1_channels
        super().__init__(**kwargs)

    def _make_aspp_modules(self) -> nn.ModuleList:
        return DepthwiseSeparableASPPModule(self.dilations, self.in_channels, self.channels, conv_cfg=self.conv_cfg,
                                            norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)

    def _make_decoder_layers(self) -> None:
        # ASPP's 'bottleneck' stays a dense 3×3 ConvModule: MMSeg 1.x checkpoints store it that way.
        if self.c1_in_channels > 0:
            self.c1_bottleneck = ConvModule(self.c1_in_channels, self.c1_channels, 1, conv_cfg=self.conv_cfg,
                                            norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        else:
            self.c1_bottleneck = None
        # MMSeg sizes this channels + c1_channels even without the decoder (then it fails at run time unless
        # c1_channels is 0); size it by what forward actually concatenates. Same weights whenever MMSeg's works.
        sep_in = self.channels + (self.c1_channels if self.c1_in_channels > 0 else 0)
        self.sep_bottleneck = nn.Sequential(
            DepthwiseSeparableConvModule(sep_in, self.channels, 3, padding=1, norm_cfg=self.norm_cfg,
                                         act_cfg=self.act_cfg),
            DepthwiseSeparableConvModule(self.channels, self.channels, 3, padding=1, norm_cfg=self.norm_cfg,
                                         act_cfg=self.act_cfg))

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        output = self._aspp_forward(inputs)
        if self.c1_bottleneck is not None:
            c1_output = self.c1_bottleneck(inputs[0])
            output = resize(output, size=c1_output.shape[2:], mode="bilinear", align_corners=self.align_corners)
            output = torch.cat([output, c1_output], dim=1)
        return self.cls_seg(self.sep_bottleneck(output))
