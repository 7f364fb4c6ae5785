"""ASPPHead (MMSeg, DeepLabV3): image pooling plus parallel atrous convs, concatenated, then a 3×3 bottleneck."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models.heads.decode_head import BaseDecodeHead
from rayseg.models.utils import ConvModule, resize
from rayseg.registry import HEADS, check_kwargs


def check_dilations(dilations: Any, where: str) -> Tuple[int, ...]:
    """Return ``dilations`` as a tuple of positive ints, or raise ConfigError naming ``where``."""
    if not isinstance(dilations, (list, tuple)) or not dilations \
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dilations):
        raise ConfigError(f"{where}: dilations must be a non-empty list of positive ints, got {dilations!r}")
    return tuple(dilations)


class ASPPModule(nn.ModuleList):
    """Atrous Spatial Pyramid Pooling branches: one ``ConvModule`` per dilation (keys ``i.conv``/``i.bn``).

    Dilation 1 is a 1×1 conv (a dilated 1×1 is the same thing, and MMSeg stores a 1×1 kernel);
    any other dilation is a 3×3 conv with padding = dilation so the size is kept.
    """

    def __init__(self, dilations: Sequence[int], in_channels: int, channels: int, conv_cfg: Optional[Dict],
                 norm_cfg: Optional[Dict], act_cfg: Optional[Dict]):
        super().__init__()
        self.dilations = tuple(dilations)
        self.in_channels, self.channels = in_channels, channels
        self.conv_cfg, self.norm_cfg, self.act_cfg = conv_cfg, norm_cfg, act_cfg
        for dilation in self.dilations:
            self.append(self._make_branch(dilation))

    def _make_branch(self, dilation: int) -> nn.Module:
        if dilation == 1:
            return ConvModule(self.in_channels, self.channels, 1, conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg,
                              act_cfg=self.act_cfg)
        return ConvModule(self.in_channels, self.channels, 3, dilation=dilation, padding=dilation,
                          conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return [branch(x) for branch in self]


@HEADS.register()
class ASPPHead(BaseDecodeHead):
    """Rethinking Atrous Convolution (DeepLabV3) head.

    Output keeps the input's resolution (stride 8 on a D8 ResNet).

    Args:
        dilations: one ASPP branch per dilation (MMSeg's default (1, 6, 12, 18); its DeepLabV3
            configs use (1, 12, 24, 36)).
        **kwargs: BaseDecodeHead arguments (unknown keys are rejected there).
    """

    def __init__(self, dilations: Sequence[int] = (1, 6, 12, 18), **kwargs: Any):
        name = type(self).__name__
        # Check here (not only in BaseDecodeHead) so a typo gets a 'did you mean' hint.
        check_kwargs(BaseDecodeHead.__init__, kwargs, f"head {name!r}")
        self.dilations = check_dilations(dilations, name)
        super().__init__(**kwargs)
        if isinstance(self.in_channels, list):
            raise ConfigError(f"{name}: input_transform 'multiple_select' gives several maps; ASPP needs one "
                              "(use None or 'resize_concat')")
        common = dict(conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        # Global context branch: pool to 1×1, project, later broadcast back (keys image_pool.1.*).
        self.image_pool = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                        ConvModule(self.in_channels, self.channels, 1, **common))
        self.aspp_modules = self._make_aspp_modules()
        self.bottleneck = ConvModule((len(self.dilations) + 1) * self.channels, self.channels, 3, padding=1,
                                     **common)
        self._make_decoder_layers()
        # Last, so a Pretrained init_cfg sees every layer (subclasses add theirs in the hooks above).
        self.init_weights()

    def _make_aspp_modules(self) -> nn.ModuleList:
        """Hook: the ASPP branches (DeepLabV3+ swaps in depthwise-separable ones)."""
        return ASPPModule(self.dilations, self.in_channels, self.channels, conv_cfg=self.conv_cfg,
                          norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)

    def _make_decoder_layers(self) -> None:
        """Hook: layers after the ASPP bottleneck (none for DeepLabV3)."""

    def _aspp_forward(self, inputs: Any) -> torch.Tensor:
        """Image pool + ASPP branches, concatenated and fused by the bottleneck."""
        x = self._transform_inputs(inputs)
        pooled = resize(self.image_pool(x), size=x.shape[2:], mode="bilinear", align_corners=self.align_corners)
        return self.bottleneck(torch.cat([pooled] + self.aspp_modules(x), dim=1))

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.cls_seg(self._aspp_forward(inputs))
