"""MobileNetV2 backbone and its InvertedResidual block, as in MMSegmentation 1.x.

Parameter names follow MMSeg so its checkpoints (and mmcls-converted ImageNet weights) load: the stem is
``conv1`` (a ConvModule: ``conv1.conv`` / ``conv1.bn``), the seven stages are ``layer1`` … ``layer7``, and each
block keeps its convs in ``conv`` (``layer2.0.conv.0.conv.weight`` = expand 1×1, ``.conv.1`` = depthwise 3×3,
``.conv.2`` = linear 1×1; blocks with expand ratio 1 have no expand conv, so ``layer1.0.conv.0`` is depthwise).

D8 (output stride 8, MMSeg's ``mobilenet_v2`` configs): ``strides=(1, 2, 2, 1, 1, 1, 1)``,
``dilations=(1, 1, 1, 2, 2, 4, 4)``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp

from rayseg.errors import ConfigError
from rayseg.models.backbones.base import BaseBackbone
from rayseg.models.utils import ConvModule
from rayseg.registry import BACKBONES


def make_divisible(value: float, divisor: int, min_value: Optional[int] = None, min_ratio: float = 0.9) -> int:
    """Round ``value`` to a multiple of ``divisor`` without dropping more than 10% (MMSeg's rule)."""
    if min_value is None:
        min_value = divisor
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < min_ratio * value:
        new_value += divisor
    return new_value


class InvertedResidual(nn.Module):
    """MobileNetV2 block: [1×1 expand] → 3×3 depthwise (strided/dilated) → 1×1 linear, residual when shapes match.

    Shared with FastSCNN (its global feature extractor stacks these blocks).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: float, dilation: int = 1,
                 conv_cfg: Optional[Dict] = None, norm_cfg: Optional[Dict] = dict(type="BN"),
                 act_cfg: Optional[Dict] = dict(type="ReLU6"), with_cp: bool = False):
        super().__init__()
        if stride not in (1, 2):
            raise ConfigError(f"InvertedResidual: stride must be 1 or 2, got {stride}")
        self.with_cp = with_cp
        self.use_res_connect = stride == 1 and in_channels == out_channels
        hidden_dim = int(round(in_channels * expand_ratio))
        layers = []
        if expand_ratio != 1:
            layers.append(ConvModule(in_channels, hidden_dim, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                     act_cfg=act_cfg))
        layers += [
            ConvModule(hidden_dim, hidden_dim, 3, stride=stride, padding=dilation, dilation=dilation,
                       groups=hidden_dim, conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg),
            # No activation on the projection: ReLU would destroy information in the narrow space.
            ConvModule(hidden_dim, out_channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=None)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def inner(x: torch.Tensor) -> torch.Tensor:
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

        if self.with_cp and x.requires_grad:
            return cp.checkpoint(inner, x, use_reentrant=False)
        return inner(x)


@BACKBONES.register()
class MobileNetV2(BaseBackbone):
    """MobileNetV2 (MMSeg arguments). ``forward`` returns a tuple of the ``out_indices`` stage outputs.

    Stages (expand ratio, channels, blocks): (1,16,1) (6,24,2) (6,32,3) (6,64,4) (6,96,3) (6,160,3) (6,320,1),
    channels scaled by ``widen_factor``. Default ``out_indices=(1, 2, 4, 6)`` gives 24/32/96/320 channels at
    strides 4/8/16/32. Unlike MMSeg, a single output is still returned as a 1-tuple (heads index the tuple).
    """

    arch_settings = [[1, 16, 1], [6, 24, 2], [6, 32, 3], [6, 64, 4], [6, 96, 3], [6, 160, 3], [6, 320, 1]]

    def __init__(self, widen_factor: float = 1.0, strides: Sequence[int] = (1, 2, 2, 2, 1, 2, 1),
                 dilations: Sequence[int] = (1, 1, 1, 1, 1, 1, 1), out_indices: Sequence[int] = (1, 2, 4, 6),
                 frozen_stages: int = -1, conv_cfg: Optional[Dict] = None, norm_cfg: Optional[Dict] = dict(type="BN"),
                 act_cfg: Optional[Dict] = dict(type="ReLU6"), norm_eval: bool = False, with_cp: bool = False,
                 pretrained: Optional[str] = None, init_cfg: Optional[Dict[str, Any]] = None):
        super().__init__(norm_eval=norm_eval, pretrained=pretrained, init_cfg=init_cfg)
        strides, dilations, out_indices = tuple(strides), tuple(dilations), tuple(out_indices)
        n = len(self.arch_settings)
        if len(strides) != n or len(dilations) != n:
            raise ConfigError(f"MobileNetV2: strides {strides} and dilations {dilations} need {n} entries")
        if not out_indices or not all(0 <= i < n for i in out_indices):
            raise ConfigError(f"MobileNetV2: out_indices {out_indices} must lie in 0..{n - 1}")
        if not -1 <= frozen_stages < n:
            raise ConfigError(f"MobileNetV2: frozen_stages must be in -1..{n - 1}, got {frozen_stages}")
        self.out_indices, self.frozen_stages = out_indices, frozen_stages

        in_channels = make_divisible(32 * widen_factor, 8)
        self.conv1 = ConvModule(3, in_channels, 3, stride=2, padding=1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                act_cfg=act_cfg)
        self.layers = []
        stage_channels = []
        for i, (expand_ratio, channel, num_blocks) in enumerate(self.arch_settings):
            out_channels = make_divisible(channel * widen_factor, 8)
            blocks = []
            for j in range(num_blocks):
                # Only the first block of a stage strides and takes the stage's dilation (as MMSeg).
                blocks.append(InvertedResidual(in_channels, out_channels, strides[i] if j == 0 else 1,
                                               expand_ratio=expand_ratio, dilation=dilations[i] if j == 0 else 1,
                                               conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg,
                                               with_cp=with_cp))
                in_channels = out_channels
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.layers.append(f"layer{i + 1}")
            stage_channels.append(out_channels)
        self.out_channels = tuple(stage_channels[i] for i in out_indices)
        self.init_weights()
        self._freeze_stages()

    def _freeze_stages(self) -> None:
        # As MMSeg: the stem's parameters are frozen (its BN statistics still update), and frozen
        # stages are put in eval mode as well.
        if self.frozen_stages >= 0:
            for param in self.conv1.parameters():
                param.requires_grad = False
        self._freeze(*(getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return self._forward_stages(self.conv1(x), self.layers)
