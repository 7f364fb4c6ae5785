"""``DepthwiseSeparableConvModule`` as in mmcv, so MMSeg checkpoints keep their key names.

MMSeg stores e.g. ``decode_head.sep_bottleneck.0.depthwise_conv.conv.weight`` and
``...pointwise_conv.bn.weight``: a depthwise ``ConvModule`` followed by a 1×1 pointwise ``ConvModule``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from rayseg.models.utils import ConvModule

_DEFAULT = "default"


class DepthwiseSeparableConvModule(nn.Module):
    """Depthwise conv block then pointwise (1×1) conv block, each conv → norm → activation.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation: as ``nn.Conv2d``; stride,
            padding and dilation apply to the depthwise conv only.
        norm_cfg, act_cfg: defaults for both blocks (mmcv's defaults: no norm, ReLU).
        dw_norm_cfg, dw_act_cfg, pw_norm_cfg, pw_act_cfg: per-block overrides; ``'default'`` takes
            ``norm_cfg``/``act_cfg`` (so ``None`` can still switch a block's norm or activation off).
        conv_cfg, bias, inplace: passed to both ``ConvModule``s.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1, padding: Any = 0,
                 dilation: Any = 1, norm_cfg: Optional[Dict[str, Any]] = None,
                 act_cfg: Optional[Dict[str, Any]] = dict(type="ReLU"), dw_norm_cfg: Any = _DEFAULT,
                 dw_act_cfg: Any = _DEFAULT, pw_norm_cfg: Any = _DEFAULT, pw_act_cfg: Any = _DEFAULT,
                 conv_cfg: Optional[Dict[str, Any]] = None, bias: Any = "auto", inplace: bool = True):
        super().__init__()
        dw_norm_cfg = norm_cfg if dw_norm_cfg == _DEFAULT else dw_norm_cfg
        dw_act_cfg = act_cfg if dw_act_cfg == _DEFAULT else dw_act_cfg
        pw_norm_cfg = norm_cfg if pw_norm_cfg == _DEFAULT else pw_norm_cfg
        pw_act_cfg = act_cfg if pw_act_cfg == _DEFAULT else pw_act_cfg
        common = dict(conv_cfg=conv_cfg, bias=bias, inplace=inplace)
        # groups=in_channels: one filter per input channel (the "depthwise" part).
        self.depthwise_conv = ConvModule(in_channels, in_channels, kernel_size, stride=stride, padding=padding,
                                         dilation=dilation, groups=in_channels, norm_cfg=dw_norm_cfg,
                                         act_cfg=dw_act_cfg, **common)
        self.pointwise_conv = ConvModule(in_channels, out_channels, 1, norm_cfg=pw_norm_cfg, act_cfg=pw_act_cfg,
                                         **common)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))
