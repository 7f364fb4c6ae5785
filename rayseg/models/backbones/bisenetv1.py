"""BiSeNetV1 backbone (MMSegmentation 1.x): a three-conv spatial path (stride 8), a context path on another
backbone (ResNet in MMSeg's configs) with attention refinement of its stride-16/32 maps, and a feature fusion module.

Parameter names follow MMSeg: ``context_path.backbone.*`` (the inner backbone), ``context_path.arm16``/``arm32``,
``conv_head16``/``conv_head32``, ``gap_conv.1``, ``spatial_path.layer1..4``, ``ffm.conv1``/``conv_atten.0``.
As MMSeg, the paths and the FFM use BN/ReLU whatever the backbone's ``norm_cfg`` (same state dict either way).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models.backbones.base import BaseBackbone
from rayseg.models.backbones.stdc import AttentionRefinementModule, init_layers_except
from rayseg.models.utils import ConvModule, resize
from rayseg.registry import BACKBONES, build


class SpatialPath(nn.Module):
    """7×7/2, 3×3/2, 3×3/2 then 1×1 ConvModules (``layer1`` … ``layer4``): output stride 8."""

    def __init__(self, in_channels: int, num_channels: Sequence[int]):
        super().__init__()
        self.layer1 = ConvModule(in_channels, num_channels[0], 7, stride=2, padding=3, norm_cfg=dict(type="BN"))
        self.layer2 = ConvModule(num_channels[0], num_channels[1], 3, stride=2, padding=1, norm_cfg=dict(type="BN"))
        self.layer3 = ConvModule(num_channels[1], num_channels[2], 3, stride=2, padding=1, norm_cfg=dict(type="BN"))
        self.layer4 = ConvModule(num_channels[2], num_channels[3], 1, norm_cfg=dict(type="BN"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ContextPath(nn.Module):
    """The inner backbone's stride-16/32 maps refined (ARM), the stride-32 one plus its global context, upsampled
    (nearest) and fused top-down; returns the stride-8 and stride-16 context maps."""

    def __init__(self, backbone_cfg: Dict[str, Any], context_channels: Sequence[int]):
        super().__init__()
        self.backbone = build(backbone_cfg, BACKBONES)
        bn = dict(type="BN")
        c0 = context_channels[0]
        self.arm16 = AttentionRefinementModule(context_channels[1], c0)
        self.arm32 = AttentionRefinementModule(context_channels[2], c0)
        self.conv_head32 = ConvModule(c0, c0, 3, padding=1, norm_cfg=bn)
        self.conv_head16 = ConvModule(c0, c0, 3, padding=1, norm_cfg=bn)
        self.gap_conv = nn.Sequential(nn.AdaptiveAvgPool2d((1, 1)), ConvModule(context_channels[2], c0, 1, norm_cfg=bn))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(x)
        if len(feats) != 4:
            raise ConfigError(f"BiSeNetV1: the context path's backbone must return 4 maps, got {len(feats)}")
        _, x_8, x_16, x_32 = feats
        x_32_sum = self.arm32(x_32) + self.gap_conv(x_32)
        x_32_up = self.conv_head32(resize(x_32_sum, size=x_16.shape[2:], mode="nearest"))
        x_16_sum = self.arm16(x_16) + x_32_up
        x_16_up = self.conv_head16(resize(x_16_sum, size=x_8.shape[2:], mode="nearest"))
        return x_16_up, x_32_up


class FeatureFusionModule(nn.Module):
    """BiSeNetV1's FFM: 1×1 ConvModule on the concatenated paths, plus itself rescaled by a one-conv channel
    attention (``conv_atten``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        bn = dict(type="BN")
        self.conv1 = ConvModule(in_channels, out_channels, 1, norm_cfg=bn)
        self.gap = nn.AdaptiveAvgPool2d((1, 1))
        self.conv_atten = nn.Sequential(ConvModule(out_channels, out_channels, 1, bias=False, norm_cfg=bn),
                                        nn.Sigmoid())

    def forward(self, x_sp: torch.Tensor, x_cp: torch.Tensor) -> torch.Tensor:
        x_fuse = self.conv1(torch.cat([x_sp, x_cp], dim=1))
        return x_fuse * self.conv_atten(self.gap(x_fuse)) + x_fuse


@BACKBONES.register()
class BiSeNetV1(BaseBackbone):
    """BiSeNetV1 (MMSeg arguments). Outputs, before ``out_indices``: the fused map (stride 8, ``out_channels``),
    then the context maps at strides 8 and 16 (``context_channels[0]``).

    ``spatial_channels[-1] + context_channels[0]`` must equal ``context_channels[1]`` (MMSeg sizes the FFM's input
    by the latter).
    """

    def __init__(self, backbone_cfg: Dict[str, Any], in_channels: int = 3,
                 spatial_channels: Sequence[int] = (64, 64, 64, 128),
                 context_channels: Sequence[int] = (128, 256, 512), out_indices: Sequence[int] = (0, 1, 2),
                 align_corners: bool = False, out_channels: int = 256, conv_cfg: Optional[Dict] = None,
                 norm_cfg: Optional[Dict] = dict(type="BN", requires_grad=True), act_cfg: Dict = dict(type="ReLU"),
                 norm_eval: bool = False, pretrained: Optional[str] = None,
                 init_cfg: Optional[Dict[str, Any]] = None):
        super().__init__(norm_eval=norm_eval, pretrained=pretrained, init_cfg=init_cfg)
        if len(spatial_channels) != 4 or len(context_channels) != 3:
            raise ConfigError(f"BiSeNetV1: need 4 spatial_channels and 3 context_channels, got "
                              f"{list(spatial_channels)}, {list(context_channels)}")
        if spatial_channels[-1] + context_channels[0] != context_channels[1]:
            raise ConfigError(f"BiSeNetV1: spatial_channels[-1] + context_channels[0] must equal context_channels[1] "
                              f"(the FFM input), got {spatial_channels[-1]} + {context_channels[0]} != "
                              f"{context_channels[1]}")
        widths = [out_channels, context_channels[0], context_channels[0]]
        if not out_indices or any(not (isinstance(i, int) and 0 <= i < 3) for i in out_indices):
            raise ConfigError(f"BiSeNetV1: out_indices must be in range(0, 3), got {list(out_indices)}")
        self.out_indices = tuple(out_indices)
        self.out_channels = [widths[i] for i in self.out_indices]
        self.align_corners = align_corners
        self.context_path = ContextPath(backbone_cfg, context_channels)
        self.spatial_path = SpatialPath(in_channels, spatial_channels)
        self.ffm = FeatureFusionModule(context_channels[1], out_channels)
        # MMSeg's BiSeNetV1 has no init of its own: its layers keep mmcv's ConvModule init (Kaiming, unit norms),
        # which BaseBackbone's default init is; the inner backbone has initialised itself (and loaded its own
        # init_cfg, e.g. the in1k-pre configs' open-mmlab://resnet18_v1c), so _init_layers leaves it alone.
        self.init_weights()

    def _init_layers(self) -> None:
        init_layers_except(self, self.context_path.backbone)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x_context8, x_context16 = self.context_path(x)
        x_fuse = self.ffm(self.spatial_path(x), x_context8)
        outs = (x_fuse, x_context8, x_context16)
        return tuple(outs[i] for i in self.out_indices)
