"""ResNeXt (MMSeg's ``ResNeXt``): ResNet whose Bottleneck 3×3 conv is grouped, ``groups × base_width`` wide.

Parameter names and the block width rule are MMSeg's (``floor(planes × base_width / base_channels) × groups``;
``groups: 1`` is a plain Bottleneck), so MMSeg ResNeXt checkpoints load as they are.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models.backbones.resnet import ResNet, _ResBlock
from rayseg.models.utils import build_conv_layer
from rayseg.registry import BACKBONES


class ResNeXtBottleneck(_ResBlock):
    """1×1 → grouped 3×3 → 1×1; ``style`` strides the 3×3 (pytorch) or the first 1×1 (caffe), as Bottleneck."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: Optional[nn.Module] = None, style: str = "pytorch",
                 conv_cfg: Optional[Dict] = None, norm_cfg: Dict = dict(type="BN"), groups: int = 1,
                 base_width: int = 4, base_channels: int = 64):
        width = planes if groups == 1 else math.floor(planes * (base_width / base_channels)) * groups
        if width < 1 or width % groups:
            raise ConfigError(f"ResNeXt: groups {groups} and base_width {base_width} give a 3×3 width of {width} "
                              f"for {planes} planes, which {groups} groups cannot split")
        conv1_stride, conv2_stride = (1, stride) if style == "pytorch" else (stride, 1)
        convs = [build_conv_layer(conv_cfg, inplanes, width, 1, stride=conv1_stride, bias=False),
                 build_conv_layer(conv_cfg, width, width, 3, stride=conv2_stride, padding=dilation,
                                  dilation=dilation, groups=groups, bias=False),
                 build_conv_layer(conv_cfg, width, planes * self.expansion, 1, bias=False)]
        super().__init__(convs, (width, width, planes * self.expansion), norm_cfg, downsample)


@BACKBONES.register()
class ResNeXt(ResNet):
    """ResNeXt-50/101/152 (MMSeg arguments: ResNet's plus ``groups`` and ``base_width``), e.g.
    ``{type: ResNeXt, depth: 101, groups: 32, base_width: 4}`` for ResNeXt-101 32×4d."""

    arch_settings = {
        50: (ResNeXtBottleneck, (3, 4, 6, 3)),
        101: (ResNeXtBottleneck, (3, 4, 23, 3)),
        152: (ResNeXtBottleneck, (3, 8, 36, 3)),
    }

    def __init__(self, groups: int = 1, base_width: int = 4, **kwargs: Any):
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ConfigError(f"ResNeXt: groups must be an int >= 1, got {groups!r}")
        self.groups, self.base_width = groups, base_width
        super().__init__(**kwargs)

    def _block_kwargs(self, base_channels: int) -> Dict[str, Any]:
        return {"groups": self.groups, "base_width": self.base_width, "base_channels": base_channels}
