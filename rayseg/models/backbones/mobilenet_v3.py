"""MobileNetV3 backbone (MMSegmentation 1.x), the LR-ASPP paper's segmentation version (output stride 8).

Parameter names follow MMSeg: ``layer0`` (stem ConvModule), ``layer1`` … ``layerN`` (inverted residual blocks with
``expand_conv`` / ``depthwise_conv`` / ``se.conv1`` / ``se.conv2`` / ``linear_conv``) and a last 1×1 ConvModule
(``layer12`` small, ``layer16`` large: 576 / 960 channels). As MMSeg, the blocks after output stride 8 lose their
stride and get dilation 2, then 4 (``layer4``/``layer9`` small, ``layer7``/``layer13`` large).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp

from rayseg.errors import ConfigError
from rayseg.models.backbones._realtime_layers import Conv2dAdaptivePadding, SELayer, conv_act
from rayseg.models.backbones.base import BaseBackbone
from rayseg.registry import BACKBONES


class InvertedResidualV3(nn.Module):
    """MobileNetV3 block: [1×1 expand] → k×k depthwise (adaptive "same" padding when strided) → [SE] → 1×1
    linear; residual when the block was built with stride 1 and equal in/out channels (as MMSeg)."""

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int, kernel_size: int = 3,
                 stride: int = 1, se_cfg: Optional[Dict[str, Any]] = None, with_expand_conv: bool = True,
                 norm_cfg: Optional[Dict] = dict(type="BN"), act_cfg: Dict = dict(type="ReLU"),
                 with_cp: bool = False):
        super().__init__()
        if stride not in (1, 2):
            raise ConfigError(f"MobileNetV3 block: stride must be 1 or 2, got {stride}")
        if not with_expand_conv and mid_channels != in_channels:
            raise ConfigError(f"MobileNetV3 block: without an expand conv mid_channels ({mid_channels}) must equal "
                              f"in_channels ({in_channels})")
        self.with_res_shortcut = stride == 1 and in_channels == out_channels
        self.with_cp, self.with_se, self.with_expand_conv = with_cp, se_cfg is not None, with_expand_conv
        common = dict(norm_cfg=norm_cfg, act_cfg=act_cfg)
        if with_expand_conv:
            self.expand_conv = conv_act(in_channels, mid_channels, 1, **common)
        self.depthwise_conv = conv_act(mid_channels, mid_channels, kernel_size, stride=stride,
                                       padding=kernel_size // 2, groups=mid_channels, adaptive_padding=stride == 2,
                                       **common)
        if self.with_se:
            self.se = SELayer(**se_cfg)
        self.linear_conv = conv_act(mid_channels, out_channels, 1, norm_cfg=norm_cfg, act_cfg=None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def inner(x: torch.Tensor) -> torch.Tensor:
            out = self.expand_conv(x) if self.with_expand_conv else x
            out = self.depthwise_conv(out)
            if self.with_se:
                out = self.se(out)
            out = self.linear_conv(out)
            return x + out if self.with_res_shortcut else out

        if self.with_cp and x.requires_grad:
            return cp.checkpoint(inner, x, use_reentrant=False)
        return inner(x)


@BACKBONES.register()
class MobileNetV3(BaseBackbone):
    """MobileNetV3 (MMSeg arguments); ``forward`` returns the ``out_indices`` layer outputs (0 = stem).

    Args:
        arch: ``'small'`` or ``'large'``.
        out_indices: layers to return (MMSeg's LR-ASPP: small ``(0, 1, 12)``, large ``(1, 3, 16)``).
        layer_settings: optional replacement of the arch's block table, rows
            ``[kernel, mid channels, out channels, with_se, act, stride]``, same number of rows as the arch
            (the dilation layout depends on it). Not an MMSeg argument: the tiny reference fixtures use it
            (MMSeg's own class with its table swapped), full-size configs leave it unset.
        reduction_factor: divide the channels of the last blocks (small: from block 8, large: 12), as MMSeg.
        frozen_stages: freeze ``layer0`` … ``layer{frozen_stages}`` (-1: none).
        norm_cfg, norm_eval, with_cp, pretrained, init_cfg: as the other backbones.
    """

    arch_settings = {
        "small": [[3, 16, 16, True, "ReLU", 2], [3, 72, 24, False, "ReLU", 2], [3, 88, 24, False, "ReLU", 1],
                  [5, 96, 40, True, "HSwish", 2], [5, 240, 40, True, "HSwish", 1], [5, 240, 40, True, "HSwish", 1],
                  [5, 120, 48, True, "HSwish", 1], [5, 144, 48, True, "HSwish", 1], [5, 288, 96, True, "HSwish", 2],
                  [5, 576, 96, True, "HSwish", 1], [5, 576, 96, True, "HSwish", 1]],
        "large": [[3, 16, 16, False, "ReLU", 1], [3, 64, 24, False, "ReLU", 2], [3, 72, 24, False, "ReLU", 1],
                  [5, 72, 40, True, "ReLU", 2], [5, 120, 40, True, "ReLU", 1], [5, 120, 40, True, "ReLU", 1],
                  [3, 240, 80, False, "HSwish", 2], [3, 200, 80, False, "HSwish", 1],
                  [3, 184, 80, False, "HSwish", 1], [3, 184, 80, False, "HSwish", 1],
                  [3, 480, 112, True, "HSwish", 1], [3, 672, 112, True, "HSwish", 1],
                  [5, 672, 160, True, "HSwish", 2], [5, 960, 160, True, "HSwish", 1],
                  [5, 960, 160, True, "HSwish", 1]],
    }
    # (first layer index that loses its stride and gets dilation 2, first with dilation 4, reduce-from block)
    _dilate = {"small": (4, 9, 8), "large": (7, 13, 12)}

    def __init__(self, arch: str = "small", out_indices: Sequence[int] = (0, 1, 12),
                 layer_settings: Optional[Sequence[Sequence[Any]]] = None, reduction_factor: int = 1,
                 frozen_stages: int = -1, conv_cfg: Optional[Dict] = None,
                 norm_cfg: Optional[Dict] = dict(type="BN"), norm_eval: bool = False, with_cp: bool = False,
                 pretrained: Optional[str] = None, init_cfg: Optional[Dict[str, Any]] = None):
        super().__init__(norm_eval=norm_eval, pretrained=pretrained, init_cfg=init_cfg)
        if arch not in self.arch_settings:
            raise ConfigError(f"MobileNetV3: arch must be one of {sorted(self.arch_settings)}, got {arch!r}")
        if conv_cfg is not None:
            raise ConfigError(f"MobileNetV3: only conv_cfg null is supported, got {conv_cfg!r}")
        settings = [list(row) for row in (layer_settings or self.arch_settings[arch])]
        if len(settings) != len(self.arch_settings[arch]) or any(len(row) != 6 for row in settings):
            raise ConfigError(f"MobileNetV3: layer_settings must have {len(self.arch_settings[arch])} rows of "
                              f"[kernel, mid, out, with_se, act, stride] for arch {arch!r}")
        if not (isinstance(reduction_factor, int) and reduction_factor > 0):
            raise ConfigError(f"MobileNetV3: reduction_factor must be a positive int, got {reduction_factor!r}")
        num_layers = len(settings) + 2
        bad = [i for i in out_indices if not (isinstance(i, int) and 0 <= i < num_layers)]
        if bad or not out_indices:
            raise ConfigError(f"MobileNetV3: out_indices must be in range(0, {num_layers}), got {list(out_indices)}")
        if frozen_stages not in range(-1, num_layers):
            raise ConfigError(f"MobileNetV3: frozen_stages must be in range(-1, {num_layers}), got {frozen_stages}")
        self.arch, self.out_indices, self.frozen_stages = arch, tuple(out_indices), frozen_stages
        self.layers = self._make_layers(settings, norm_cfg, reduction_factor, with_cp)
        widths = [16] + [row[2] // (reduction_factor if i >= self._dilate[arch][2] else 1)
                         for i, row in enumerate(settings)] + [576 if arch == "small" else 960]
        self.out_channels = [widths[i] for i in self.out_indices]
        self.init_weights()
        self._freeze_stages()

    def _make_layers(self, settings: List[List[Any]], norm_cfg: Optional[Dict], reduction_factor: int,
                     with_cp: bool) -> List[str]:
        self.layer0 = conv_act(3, 16, 3, stride=2, padding=1, adaptive_padding=True, norm_cfg=norm_cfg,
                               act_cfg=dict(type="HSwish"))
        names = ["layer0"]
        in_channels = 16
        first_d2, first_d4, reduce_from = self._dilate[self.arch]
        for i, (kernel, mid, out, with_se, act, stride) in enumerate(settings):
            if i >= reduce_from:
                mid, out = mid // reduction_factor, out // reduction_factor
            se_cfg = dict(channels=mid, ratio=4, act_cfg=(dict(type="ReLU"),
                                                          dict(type="HSigmoid", bias=3.0, divisor=6.0)))
            block = InvertedResidualV3(in_channels, out, mid, kernel, stride, se_cfg if with_se else None,
                                       with_expand_conv=in_channels != mid, norm_cfg=norm_cfg,
                                       act_cfg=dict(type=act), with_cp=with_cp)
            in_channels = out
            names.append(f"layer{i + 1}")
            self.add_module(names[-1], block)
        names.append(f"layer{len(settings) + 1}")
        self.add_module(names[-1], conv_act(in_channels, 576 if self.arch == "small" else 960, 1, dilation=4,
                                            norm_cfg=norm_cfg, act_cfg=dict(type="HSwish")))
        # Segmentation version (MMSeg): output stride 8, later layers dilated 2 then 4 instead of strided.
        getattr(self, f"layer{first_d2}").depthwise_conv.conv.stride = (1, 1)
        getattr(self, f"layer{first_d4}").depthwise_conv.conv.stride = (1, 1)
        for i in range(first_d2, len(names)):
            layer = getattr(self, names[i])
            conv = layer.depthwise_conv.conv if isinstance(layer, InvertedResidualV3) else layer.conv
            dilation = 2 if i < first_d4 else 4
            conv.dilation = (dilation, dilation)
            if not isinstance(conv, Conv2dAdaptivePadding):
                pad = dilation * ((conv.kernel_size[0] - 1) // 2)
                conv.padding = (pad, pad)
        return names

    def _freeze_stages(self) -> None:
        for i in range(self.frozen_stages + 1):
            self._freeze(getattr(self, f"layer{i}"))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return self._forward_stages(x, self.layers)
