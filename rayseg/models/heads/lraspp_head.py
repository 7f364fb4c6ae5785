"""LRASPPHead (MMSeg): Lite R-ASPP from "Searching for MobileNetV3"."""
from __future__ import annotations

import warnings
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from rayseg.errors import ConfigError
from rayseg.models.heads.decode_head import BaseDecodeHead
from rayseg.models.utils import ConvModule, resize
from rayseg.registry import HEADS

_POOL_KERNEL, _POOL_STRIDE = 49, (16, 20)


class _LRASPPPool(nn.Module):
    """MMSeg's ``AvgPool2d(kernel_size=49, stride=(16, 20))``; on a map smaller than 49 pixels along a side
    (where MMSeg raises) the window shrinks to that side, i.e. the pool becomes global there.

    Where both sides are ≤ 49 this is a global mean, which ONNX keeps dynamic; a graph traced at such a size
    gives a global mean at every size (a warning says so)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2:]
        if h <= _POOL_KERNEL and w <= _POOL_KERNEL:
            if torch.jit.is_tracing():
                warnings.warn("LRASPPHead: traced with a feature map <= 49 pixels a side; the exported image pool "
                              "is a global mean (MMSeg's 49x49 windows differ on maps over 49 pixels)")
            return x.mean(dim=(2, 3), keepdim=True)
        return F.avg_pool2d(x, (min(_POOL_KERNEL, int(h)), min(_POOL_KERNEL, int(w))), _POOL_STRIDE)


@HEADS.register()
class LRASPPHead(BaseDecodeHead):
    """Lite R-ASPP: the last input gated by a sigmoid image-pool branch, then upsampled and fused with 1×1
    projections of the earlier inputs (last to first).

    Args:
        branch_channels: channels of each earlier input's projection (one fewer than the inputs).
        **kwargs: BaseDecodeHead arguments; ``input_transform`` must be ``'multiple_select'``.
    """

    def __init__(self, branch_channels: Sequence[int] = (32, 64), **kwargs: Any):
        super().__init__(**kwargs)
        if self.input_transform != "multiple_select":
            raise ConfigError(f"LRASPPHead: input_transform must be 'multiple_select', got {self.input_transform!r}")
        branch_channels = list(branch_channels)
        if len(branch_channels) != len(self.in_channels) - 1 or not all(isinstance(c, int) for c in branch_channels):
            raise ConfigError(f"LRASPPHead: branch_channels must be {len(self.in_channels) - 1} ints (one per input "
                              f"but the last), got {branch_channels!r}")
        self.branch_channels = branch_channels
        self.convs = nn.Sequential()
        self.conv_ups = nn.Sequential()
        for i, ch in enumerate(branch_channels):
            self.convs.add_module(f"conv{i}", nn.Conv2d(self.in_channels[i], ch, 1, bias=False))
            self.conv_ups.add_module(f"conv_up{i}", ConvModule(self.channels + ch, self.channels, 1,
                                                               norm_cfg=self.norm_cfg, act_cfg=self.act_cfg,
                                                               bias=False))
        self.conv_up_input = nn.Conv2d(self.channels, self.channels, 1)
        self.aspp_conv = ConvModule(self.in_channels[-1], self.channels, 1, norm_cfg=self.norm_cfg,
                                    act_cfg=self.act_cfg, bias=False)
        # MMSeg reads in_channels[2] here (the last input in its configs); kept so its checkpoints load.
        self.image_pool = nn.Sequential(_LRASPPPool(), ConvModule(self.in_channels[2], self.channels, 1,
                                                                 act_cfg=dict(type="Sigmoid"), bias=False))
        self.init_weights()

    def forward(self, inputs: Any) -> torch.Tensor:
        inputs = self._transform_inputs(inputs)
        x = inputs[-1]
        x = self.aspp_conv(x) * resize(self.image_pool(x), size=x.shape[2:], mode="bilinear",
                                       align_corners=self.align_corners)
        x = self.conv_up_input(x)
        for i in range(len(self.branch_channels) - 1, -1, -1):
            x = resize(x, size=inputs[i].shape[2:], mode="bilinear", align_corners=self.align_corners)
            x = self.conv_ups[i](torch.cat([x, self.convs[i](inputs[i])], 1))
        return self.cls_seg(x)
