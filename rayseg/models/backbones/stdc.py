"""STDC backbones (MMSegmentation 1.x): ``STDCNet`` (short-term dense concatenation network) and
``STDCContextPathNet`` (STDCNet + BiSeNet-style context path with attention refinement and feature fusion).

Parameter names follow MMSeg: ``stages.0`` / ``stages.1`` (stride-2 ConvModules), ``stages.2..4`` (Sequentials of
``STDCModule``: ``layers.0`` … ``layers.{num_convs-1}``, ``downsample``, ``skip``), and in the context path
``backbone.`` (the STDCNet), ``arms.i``, ``convs.i``, ``conv_avg`` and ``ffm`` (``conv0``, ``attention.1/2``).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from rayseg.errors import ConfigError
from rayseg.models.backbones.base import BaseBackbone
from rayseg.models.utils import ConvModule, constant_init, kaiming_init, resize
from rayseg.registry import BACKBONES, build


class AttentionRefinementModule(nn.Module):
    """BiSeNet's ARM: a 3×3 ConvModule, rescaled by a sigmoid channel attention from its global average."""

    def __init__(self, in_channels: int, out_channels: int, norm_cfg: Optional[Dict] = dict(type="BN"),
                 act_cfg: Optional[Dict] = dict(type="ReLU")):
        super().__init__()
        self.conv_layer = ConvModule(in_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.atten_conv_layer = nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)),
            ConvModule(out_channels, out_channels, 1, bias=False, norm_cfg=norm_cfg, act_cfg=None), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_layer(x)
        return x * self.atten_conv_layer(x)


class STDCModule(nn.Module):
    """One STDC block: a 1×1 conv then ``num_convs - 1`` 3×3 convs of halving widths, all outputs concatenated
    (``'cat'``; strided blocks average-pool the first output) or concatenated and added to a skip (``'add'``)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm_cfg: Optional[Dict],
                 act_cfg: Optional[Dict], num_convs: int = 4, fusion_type: str = "add"):
        super().__init__()
        if num_convs <= 1 or fusion_type not in ("add", "cat"):
            raise ConfigError(f"STDCModule: need num_convs > 1 and fusion_type 'add' or 'cat', got {num_convs!r}, "
                              f"{fusion_type!r}")
        self.with_downsample = stride == 2
        self.fusion_type = fusion_type
        self.layers = nn.ModuleList()
        half = out_channels // 2
        conv_0 = ConvModule(in_channels, half, 1, norm_cfg=norm_cfg)  # ReLU whatever act_cfg (as MMSeg)
        if self.with_downsample:
            self.downsample = ConvModule(half, half, 3, stride=2, padding=1, groups=half, norm_cfg=norm_cfg,
                                         act_cfg=None)
            if fusion_type == "add":
                # MMSeg registers the downsample conv twice (here and as ``downsample``); so do we, same keys.
                self.layers.append(nn.Sequential(conv_0, self.downsample))
                self.skip = nn.Sequential(
                    ConvModule(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels,
                               norm_cfg=norm_cfg, act_cfg=None),
                    ConvModule(in_channels, out_channels, 1, norm_cfg=norm_cfg, act_cfg=None))
            else:
                self.layers.append(conv_0)
                self.skip = nn.AvgPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.layers.append(conv_0)
        for i in range(1, num_convs):
            out_factor = 2 ** (i + 1) if i != num_convs - 1 else 2 ** i
            self.layers.append(ConvModule(out_channels // 2 ** i, out_channels // out_factor, 3, padding=1,
                                          norm_cfg=norm_cfg, act_cfg=act_cfg))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.fusion_type == "add":
            outs, x = [], inputs
            for layer in self.layers:
                x = layer(x)
                outs.append(x)
            return torch.cat(outs, dim=1) + (self.skip(inputs) if self.with_downsample else inputs)
        x0 = self.layers[0](inputs)
        outs = [x0]
        x = self.downsample(x0) if self.with_downsample else x0
        for layer in self.layers[1:]:
            x = layer(x)
            outs.append(x)
        if self.with_downsample:
            outs[0] = self.skip(x0)
        return torch.cat(outs, dim=1)


class FeatureFusionModule(nn.Module):
    """STDC's FFM: 1×1 ConvModule on the concatenated inputs, plus itself rescaled by a two-conv channel attention."""

    def __init__(self, in_channels: int, out_channels: int, scale_factor: int = 4,
                 norm_cfg: Optional[Dict] = dict(type="BN"), act_cfg: Optional[Dict] = dict(type="ReLU")):
        super().__init__()
        channels = out_channels // scale_factor
        self.conv0 = ConvModule(in_channels, out_channels, 1, norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.attention = nn.Sequential(
            nn.AdaptiveAvgPool2d((1, 1)),
            ConvModule(out_channels, channels, 1, norm_cfg=None, bias=False, act_cfg=act_cfg),
            ConvModule(channels, out_channels, 1, norm_cfg=None, bias=False, act_cfg=None), nn.Sigmoid())

    def forward(self, spatial_inputs: torch.Tensor, context_inputs: torch.Tensor) -> torch.Tensor:
        x = self.conv0(torch.cat([spatial_inputs, context_inputs], dim=1))
        return x * self.attention(x) + x


def init_layers_except(module: nn.Module, inner: nn.Module) -> None:
    """``BaseBackbone``'s default init (Kaiming convs, unit norms) on every layer of ``module`` outside ``inner``.

    A backbone wrapping another (STDC's context path, BiSeNetV1) must not re-initialise the inner one: it
    initialised itself when built and may have loaded pretrained weights through its own ``init_cfg``, which
    MMSeg honours (mmengine initialises each child by its own ``init_cfg``)."""
    skip = {id(m) for m in inner.modules()}
    for m in module.modules():
        if id(m) in skip:
            continue
        if isinstance(m, nn.Conv2d):
            kaiming_init(m)
        elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
            constant_init(m, 1)


@BACKBONES.register()
class STDCNet(BaseBackbone):
    """STDCNet1 / STDCNet2 (MMSeg arguments). Outputs the last three stages (strides 8, 16, 32, channels
    ``channels[2:]``); ``with_final_conv`` adds a 1×1 conv to the last (``max(1024, channels[-1])`` channels)."""

    arch_settings = {"STDCNet1": [(2, 1), (2, 1), (2, 1)], "STDCNet2": [(2, 1, 1, 1), (2, 1, 1, 1, 1), (2, 1, 1)]}

    def __init__(self, stdc_type: str = "STDCNet1", in_channels: int = 3,
                 channels: Sequence[int] = (32, 64, 256, 512, 1024), bottleneck_type: str = "cat",
                 norm_cfg: Optional[Dict] = dict(type="BN"), act_cfg: Optional[Dict] = dict(type="ReLU"),
                 num_convs: int = 4, with_final_conv: bool = False, norm_eval: bool = False,
                 pretrained: Optional[str] = None, init_cfg: Optional[Dict[str, Any]] = None):
        super().__init__(norm_eval=norm_eval, pretrained=pretrained, init_cfg=init_cfg)
        if stdc_type not in self.arch_settings:
            raise ConfigError(f"STDCNet: stdc_type must be one of {sorted(self.arch_settings)}, got {stdc_type!r}")
        if bottleneck_type not in ("add", "cat") or len(channels) != 5:
            raise ConfigError(f"STDCNet: need bottleneck_type 'add' or 'cat' and 5 channels, got "
                              f"{bottleneck_type!r}, {list(channels)}")
        self.with_final_conv = with_final_conv
        common = dict(norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.stages = nn.ModuleList([ConvModule(in_channels, channels[0], 3, stride=2, padding=1, **common),
                                     ConvModule(channels[0], channels[1], 3, stride=2, padding=1, **common)])
        self.num_shallow_features = len(self.stages)
        for strides in self.arch_settings[stdc_type]:
            idx = len(self.stages) - 1
            self.stages.append(nn.Sequential(*[
                STDCModule(channels[idx] if i == 0 else channels[idx + 1], channels[idx + 1], stride,
                           num_convs=num_convs, fusion_type=bottleneck_type, **common)
                for i, stride in enumerate(strides)]))
        if with_final_conv:
            self.final_conv = ConvModule(channels[-1], max(1024, channels[-1]), 1, **common)
        self.out_channels = list(channels[2:-1]) + [max(1024, channels[-1]) if with_final_conv else channels[-1]]
        self.init_weights()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        if self.with_final_conv:
            outs[-1] = self.final_conv(outs[-1])
        return tuple(outs[self.num_shallow_features:])


@BACKBONES.register()
class STDCContextPathNet(BaseBackbone):
    """STDCNet + context path (MMSeg arguments). Outputs (strides 8, 16, 8, 8): the stride-8 STDC stage (for
    STDCHead's detail loss), the two refined context maps (``out_channels``) and the fused map (the decode
    head's input, ``ffm_cfg.out_channels``).

    Args:
        backbone_cfg: the STDCNet config.
        last_in_channels: channels of the last two STDC stages, deepest first.
        out_channels: width of the context path.
        ffm_cfg: ``{in_channels, out_channels, scale_factor}`` of the feature fusion module.
        upsample_mode, align_corners: how context maps are upsampled (MMSeg: nearest).
    """

    def __init__(self, backbone_cfg: Dict[str, Any], last_in_channels: Sequence[int] = (1024, 512),
                 out_channels: int = 128, ffm_cfg: Optional[Dict[str, Any]] = None, upsample_mode: str = "nearest",
                 align_corners: Optional[bool] = None, norm_cfg: Optional[Dict] = dict(type="BN"),
                 norm_eval: bool = False, pretrained: Optional[str] = None,
                 init_cfg: Optional[Dict[str, Any]] = None):
        super().__init__(norm_eval=norm_eval, pretrained=pretrained, init_cfg=init_cfg)
        ffm_cfg = dict(ffm_cfg or dict(in_channels=512, out_channels=256, scale_factor=4))
        self.backbone = build(backbone_cfg, BACKBONES)
        self.arms = nn.ModuleList()
        self.convs = nn.ModuleList()
        for channels in last_in_channels:
            self.arms.append(AttentionRefinementModule(channels, out_channels))
            self.convs.append(ConvModule(out_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg))
        self.conv_avg = ConvModule(last_in_channels[0], out_channels, 1, norm_cfg=norm_cfg)
        self.ffm = FeatureFusionModule(**ffm_cfg)
        self.upsample_mode, self.align_corners = upsample_mode, align_corners
        first = getattr(self.backbone, "out_channels", [None])[0]
        self.out_channels = [first, out_channels, out_channels, ffm_cfg["out_channels"]]
        self.init_weights()  # MMSeg's defaults (Kaiming convs, unit norms), then pretrained / init_cfg

    def _init_layers(self) -> None:
        """The default init of the context path only: the inner STDCNet initialised itself (and loaded its own
        ``init_cfg``, as MMSeg's in1k-pre configs give it) when it was built."""
        init_layers_except(self, self.backbone)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        outs = list(self.backbone(x))
        avg = self.conv_avg(F.adaptive_avg_pool2d(outs[-1], 1))
        feature_up = resize(avg, size=outs[-1].shape[2:], mode=self.upsample_mode, align_corners=self.align_corners)
        arms_out = []
        for i in range(len(self.arms)):
            x_arm = self.arms[i](outs[len(outs) - 1 - i]) + feature_up
            feature_up = resize(x_arm, size=outs[len(outs) - 2 - i].shape[2:], mode=self.upsample_mode,
                                align_corners=self.align_corners)
            feature_up = self.convs[i](feature_up)
            arms_out.append(feature_up)
        feat_fuse = self.ffm(outs[0], arms_out[1])
        return tuple([outs[0]] + arms_out + [feat_fuse])
