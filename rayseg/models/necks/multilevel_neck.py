"""MultiLevelNeck (MMSeg): turns a plain ViT's same-stride maps into a pyramid (UPerNet-ViT)."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models.utils import ConvModule, resize
from rayseg.registry import NECKS


@NECKS.register()
class MultiLevelNeck(nn.Module):
    """A 1×1 ``lateral_convs`` entry per input, then per scale: bilinear resize by ``scales[i]`` and a 3×3
    ``convs`` entry. One input feeds every scale. Convs are Xavier-uniform initialised, as MMSeg.

    Args:
        in_channels: channels of each input (a list).
        out_channels: channels of every output.
        scales: resize factor of each output (MMSeg's default ``[0.5, 1, 2, 4]``; UPerNet-ViT ``[4, 2, 1, 0.5]``).
        norm_cfg, act_cfg: for the ConvModules (MMSeg's default: neither).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, scales: Sequence[float] = (0.5, 1, 2, 4),
                 norm_cfg: Optional[Dict[str, Any]] = None, act_cfg: Optional[Dict[str, Any]] = None):
        super().__init__()
        if not isinstance(in_channels, (list, tuple)) or not in_channels:
            raise ConfigError(f"MultiLevelNeck: in_channels must be a non-empty list, got {in_channels!r}")
        if len(in_channels) not in (1, len(scales)):
            raise ConfigError(f"MultiLevelNeck: {len(in_channels)} inputs for {len(scales)} scales "
                              f"(give one input or one per scale)")
        self.in_channels, self.out_channels = list(in_channels), out_channels
        self.scales = [float(s) for s in scales]
        self.num_outs = len(scales)
        self.lateral_convs = nn.ModuleList([ConvModule(c, out_channels, 1, norm_cfg=norm_cfg, act_cfg=act_cfg)
                                            for c in in_channels])
        self.convs = nn.ModuleList([ConvModule(out_channels, out_channels, 3, padding=1, stride=1,
                                               norm_cfg=norm_cfg, act_cfg=act_cfg) for _ in range(self.num_outs)])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"MultiLevelNeck: got {len(inputs)} inputs, built for {len(self.in_channels)}")
        feats = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        if len(feats) == 1:
            feats = feats * self.num_outs
        # By scale factor, not size: bilinear sampling then matches MMSeg's exactly (also for odd sizes).
        return tuple(conv(resize(feats[i], scale_factor=self.scales[i], mode="bilinear"))
                     for i, conv in enumerate(self.convs))
