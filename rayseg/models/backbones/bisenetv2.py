"""BiSeNetV2 backbone (MMSegmentation 1.x): a detail branch (stride 8), a semantic branch (stem, gather-and-
expand layers, context embedding) and the bilateral guided aggregation (BGA) that fuses them.

Parameter names follow MMSeg (``detail.detail_branch.0.0.conv.weight``, ``semantic.stage1.conv_first``,
``semantic.stage4_CEBlock.gap.1``, ``bga.detail_dwconv.0.depthwise_conv``…). MMSeg builds every sub-module with
its default BN/ReLU whatever the backbone's ``norm_cfg``/``act_cfg``; here both are passed on (the state dict is
the same for any BatchNorm config).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models.backbones.base import BaseBackbone
from rayseg.models.heads._sep_conv import DepthwiseSeparableConvModule
from rayseg.models.utils import ConvModule, build_activation_layer, build_norm_layer, resize
from rayseg.registry import BACKBONES


class DetailBranch(nn.Module):
    """Three stride-2 stages of 3×3 ConvModules (2, 3, 3 convs): wide, shallow, output stride 8."""

    def __init__(self, detail_channels: Sequence[int], in_channels: int, **common: Any):
        super().__init__()
        stages = []
        for i, ch in enumerate(detail_channels):
            first_in = in_channels if i == 0 else detail_channels[i - 1]
            convs = [ConvModule(first_in, ch, 3, stride=2, padding=1, **common)]
            convs += [ConvModule(ch, ch, 3, padding=1, **common) for _ in range(1 if i == 0 else 2)]
            stages.append(nn.Sequential(*convs))
        self.detail_branch = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.detail_branch:
            x = stage(x)
        return x


class StemBlock(nn.Module):
    """Stride 4 stem: a 3×3/2 conv, then a (1×1, 3×3/2) conv path and a max-pool path, concatenated and fused."""

    def __init__(self, in_channels: int, out_channels: int, **common: Any):
        super().__init__()
        self.conv_first = ConvModule(in_channels, out_channels, 3, stride=2, padding=1, **common)
        self.convs = nn.Sequential(ConvModule(out_channels, out_channels // 2, 1, **common),
                                   ConvModule(out_channels // 2, out_channels, 3, stride=2, padding=1, **common))
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=False)
        self.fuse_last = ConvModule(out_channels * 2, out_channels, 3, padding=1, **common)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_first(x)
        return self.fuse_last(torch.cat([self.convs(x), self.pool(x)], dim=1))


class GELayer(nn.Module):
    """Gather-and-expand layer: 3×3 conv, depthwise expansion (two when strided), 1×1 projection, residual
    (a depthwise-separable shortcut when strided), activation."""

    def __init__(self, in_channels: int, out_channels: int, exp_ratio: int, stride: int, norm_cfg: Optional[Dict],
                 act_cfg: Dict):
        super().__init__()
        mid = in_channels * exp_ratio
        common = dict(norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.conv1 = ConvModule(in_channels, in_channels, 3, padding=1, **common)
        if stride == 1:
            self.dwconv = nn.Sequential(ConvModule(in_channels, mid, 3, padding=1, groups=in_channels, **common))
            self.shortcut = None
        else:
            self.dwconv = nn.Sequential(
                ConvModule(in_channels, mid, 3, stride=stride, padding=1, groups=in_channels, bias=False,
                           norm_cfg=norm_cfg, act_cfg=None),
                ConvModule(mid, mid, 3, padding=1, groups=mid, **common))
            self.shortcut = nn.Sequential(DepthwiseSeparableConvModule(
                in_channels, out_channels, 3, stride=stride, padding=1, dw_norm_cfg=norm_cfg, dw_act_cfg=None,
                pw_norm_cfg=norm_cfg, pw_act_cfg=None))
        self.conv2 = nn.Sequential(ConvModule(mid, out_channels, 1, bias=False, norm_cfg=norm_cfg, act_cfg=None))
        self.act = build_activation_layer(act_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2(self.dwconv(self.conv1(x)))
        return self.act(out + (self.shortcut(x) if self.shortcut is not None else x))


class CEBlock(nn.Module):
    """Context embedding: global average (then BN) → 1×1 conv, added to the input, then a 3×3 conv."""

    def __init__(self, in_channels: int, out_channels: int, norm_cfg: Optional[Dict], act_cfg: Dict):
        super().__init__()
        self.gap = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), build_norm_layer(norm_cfg, in_channels)[1])
        self.conv_gap = ConvModule(in_channels, out_channels, 1, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.conv_last = ConvModule(out_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg, act_cfg=act_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_last(x + self.conv_gap(self.gap(x)))


class SemanticBranch(nn.Module):
    """Stem (stride 4), then stages of GE layers (2 per stage, 4 in the last), each halving the resolution,
    and the CE block; ``forward`` returns every stage's output and the CE block's."""

    def __init__(self, semantic_channels: Sequence[int], in_channels: int, exp_ratio: int,
                 norm_cfg: Optional[Dict], act_cfg: Dict):
        super().__init__()
        common = dict(norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.semantic_stages = []
        last = len(semantic_channels) - 1
        for i, ch in enumerate(semantic_channels):
            name = f"stage{i + 1}"
            if i == 0:
                stage = StemBlock(in_channels, ch, **common)
            else:
                layers = [GELayer(semantic_channels[i - 1], ch, exp_ratio, 2, **common)]
                layers += [GELayer(ch, ch, exp_ratio, 1, **common) for _ in range(3 if i == last else 1)]
                stage = nn.Sequential(*layers)
            self.add_module(name, stage)
            self.semantic_stages.append(name)
        name = f"stage{len(semantic_channels)}_CEBlock"
        self.add_module(name, CEBlock(semantic_channels[-1], semantic_channels[-1], **common))
        self.semantic_stages.append(name)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        outs = []
        for name in self.semantic_stages:
            x = getattr(self, name)(x)
            outs.append(x)
        return tuple(outs)


class BGALayer(nn.Module):
    """Bilateral guided aggregation: each branch gated by a sigmoid of the other at its own resolution,
    the two summed at the detail resolution and fused by a 3×3 conv."""

    def __init__(self, out_channels: int, align_corners: bool, norm_cfg: Optional[Dict], act_cfg: Dict):
        super().__init__()
        self.align_corners = align_corners
        c = out_channels

        def dw_separable() -> nn.Sequential:
            return nn.Sequential(DepthwiseSeparableConvModule(c, c, 3, padding=1, dw_norm_cfg=norm_cfg,
                                                              dw_act_cfg=None, pw_norm_cfg=None, pw_act_cfg=None))

        self.detail_dwconv = dw_separable()
        self.detail_down = nn.Sequential(
            ConvModule(c, c, 3, stride=2, padding=1, bias=False, norm_cfg=norm_cfg, act_cfg=None),
            nn.AvgPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=False))
        self.semantic_conv = nn.Sequential(ConvModule(c, c, 3, padding=1, bias=False, norm_cfg=norm_cfg,
                                                      act_cfg=None))
        self.semantic_dwconv = dw_separable()
        self.conv = ConvModule(c, c, 3, padding=1, norm_cfg=norm_cfg, act_cfg=act_cfg)

    def forward(self, x_d: torch.Tensor, x_s: torch.Tensor) -> torch.Tensor:
        detail_dwconv = self.detail_dwconv(x_d)
        detail_down = self.detail_down(x_d)
        semantic_conv = resize(self.semantic_conv(x_s), size=detail_dwconv.shape[2:], mode="bilinear",
                               align_corners=self.align_corners)
        fuse_1 = detail_dwconv * torch.sigmoid(semantic_conv)
        fuse_2 = detail_down * torch.sigmoid(self.semantic_dwconv(x_s))
        fuse_2 = resize(fuse_2, size=fuse_1.shape[2:], mode="bilinear", align_corners=self.align_corners)
        return self.conv(fuse_1 + fuse_2)


@BACKBONES.register()
class BiSeNetV2(BaseBackbone):
    """BiSeNetV2 (MMSeg arguments). Outputs, before ``out_indices`` selection: the BGA output (stride 8,
    ``bga_channels``) then the semantic stages (strides 4, 8, 16, 32, ``semantic_channels``).

    ``bga_channels`` must equal the last detail and semantic widths (the BGA adds and gates them).
    """

    def __init__(self, in_channels: int = 3, detail_channels: Sequence[int] = (64, 64, 128),
                 semantic_channels: Sequence[int] = (16, 32, 64, 128), semantic_expansion_ratio: int = 6,
                 bga_channels: int = 128, out_indices: Sequence[int] = (0, 1, 2, 3, 4), align_corners: bool = False,
                 conv_cfg: Optional[Dict] = None, norm_cfg: Optional[Dict] = dict(type="BN"),
                 act_cfg: Dict = dict(type="ReLU"), norm_eval: bool = False, pretrained: Optional[str] = None,
                 init_cfg: Optional[Dict[str, Any]] = None):
        super().__init__(norm_eval=norm_eval, pretrained=pretrained, init_cfg=init_cfg)
        if conv_cfg is not None:
            raise ConfigError(f"BiSeNetV2: only conv_cfg null is supported, got {conv_cfg!r}")
        if len(detail_channels) != 3 or not (detail_channels[-1] == semantic_channels[-1] == bga_channels):
            raise ConfigError(f"BiSeNetV2: need 3 detail_channels and detail_channels[-1] == semantic_channels[-1] "
                              f"== bga_channels, got {list(detail_channels)}, {list(semantic_channels)}, "
                              f"{bga_channels}")
        widths = [bga_channels] + list(semantic_channels)
        bad = [i for i in out_indices if not (isinstance(i, int) and 0 <= i < len(widths))]
        if bad or not out_indices:
            raise ConfigError(f"BiSeNetV2: out_indices must be in range(0, {len(widths)}), got {list(out_indices)}")
        self.out_indices = tuple(out_indices)
        self.out_channels = [widths[i] for i in self.out_indices]
        common = dict(norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.detail = DetailBranch(detail_channels, in_channels, **common)
        self.semantic = SemanticBranch(semantic_channels, in_channels, semantic_expansion_ratio, **common)
        self.bga = BGALayer(bga_channels, align_corners, **common)
        self.init_weights()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        semantic = self.semantic(x)
        outs = (self.bga(self.detail(x), semantic[-1]),) + semantic[:-1]
        return tuple(outs[i] for i in self.out_indices)
