"""Fast-SCNN backbone (real-time segmentation) as in MMSegmentation 1.x.

Parameter names follow MMSeg so its Fast-SCNN checkpoints load: ``learning_to_downsample.{conv,dsconv1,dsconv2}``,
``global_feature_extractor.{bottleneck1..3,ppm,out}`` and ``feature_fusion.{dwconv,conv_lower_res,
conv_higher_res}``. ``forward`` returns (higher-res features 1/8, lower-res features 1/32, fused 1/8) picked by
``out_indices``; MMSeg's config puts the decode head on the fused map and FCN auxiliary heads on the other two.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models.backbones.base import BaseBackbone
from rayseg.models.backbones.mobilenet_v2 import InvertedResidual
from rayseg.models.heads.psp_head import PPM
from rayseg.models.heads._sep_conv import DepthwiseSeparableConvModule
from rayseg.models.utils import ConvModule, resize
from rayseg.registry import BACKBONES


class LearningToDownsample(nn.Module):
    """Three stride-2 convs (a plain 3×3, then two depthwise separable) down to 1/8 resolution."""

    def __init__(self, in_channels: int, dw_channels: Sequence[int], out_channels: int, conv_cfg: Optional[Dict],
                 norm_cfg: Optional[Dict], act_cfg: Optional[Dict], dw_act_cfg: Optional[Dict]):
        super().__init__()
        dw1, dw2 = dw_channels
        self.conv = ConvModule(in_channels, dw1, 3, stride=2, padding=1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                               act_cfg=act_cfg)
        self.dsconv1 = DepthwiseSeparableConvModule(dw1, dw2, kernel_size=3, stride=2, padding=1, norm_cfg=norm_cfg,
                                                    dw_act_cfg=dw_act_cfg)
        self.dsconv2 = DepthwiseSeparableConvModule(dw2, out_channels, kernel_size=3, stride=2, padding=1,
                                                    norm_cfg=norm_cfg, dw_act_cfg=dw_act_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dsconv2(self.dsconv1(self.conv(x)))


class GlobalFeatureExtractor(nn.Module):
    """Three groups of MobileNetV2 blocks (to 1/32), pyramid pooling, then a 3×3 fusion conv (``out``)."""

    def __init__(self, in_channels: int, block_channels: Sequence[int], out_channels: int, expand_ratio: int,
                 num_blocks: Sequence[int], strides: Sequence[int], pool_scales: Sequence[int],
                 conv_cfg: Optional[Dict], norm_cfg: Optional[Dict], act_cfg: Optional[Dict], align_corners: bool):
        super().__init__()
        if not len(block_channels) == len(num_blocks) == len(strides) == 3:
            raise ConfigError(f"FastSCNN: global_block_channels and global_block_strides need 3 entries, got "
                              f"{tuple(block_channels)} and {tuple(strides)}")
        chans = [in_channels] + list(block_channels)
        for i in range(3):
            blocks = [InvertedResidual(chans[i] if j == 0 else chans[i + 1], chans[i + 1], strides[i] if j == 0 else 1,
                                       expand_ratio, norm_cfg=norm_cfg, act_cfg=act_cfg)
                      for j in range(num_blocks[i])]
            self.add_module(f"bottleneck{i + 1}", nn.Sequential(*blocks))
        self.ppm = PPM(tuple(pool_scales), block_channels[2], block_channels[2] // 4, conv_cfg=conv_cfg,
                       norm_cfg=norm_cfg, act_cfg=act_cfg, align_corners=align_corners)
        self.out = ConvModule(block_channels[2] * 2, out_channels, 3, padding=1, conv_cfg=conv_cfg,
                              norm_cfg=norm_cfg, act_cfg=act_cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bottleneck3(self.bottleneck2(self.bottleneck1(x)))
        return self.out(torch.cat([x, *self.ppm(x)], dim=1))


class FeatureFusionModule(nn.Module):
    """Upsample the 1/32 branch, depthwise 3×3 + 1×1 on it, 1×1 on the 1/8 branch, add, ReLU."""

    def __init__(self, higher_in_channels: int, lower_in_channels: int, out_channels: int, conv_cfg: Optional[Dict],
                 norm_cfg: Optional[Dict], dwconv_act_cfg: Optional[Dict], align_corners: bool):
        super().__init__()
        self.align_corners = align_corners
        self.dwconv = ConvModule(lower_in_channels, out_channels, 3, padding=1, groups=out_channels,
                                 conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=dwconv_act_cfg)
        # No activation before the sum: the ReLU comes after adding the two branches.
        self.conv_lower_res = ConvModule(out_channels, out_channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                         act_cfg=None)
        self.conv_higher_res = ConvModule(higher_in_channels, out_channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                          act_cfg=None)
        self.relu = nn.ReLU(True)

    def forward(self, higher: torch.Tensor, lower: torch.Tensor) -> torch.Tensor:
        lower = resize(lower, size=higher.shape[2:], mode="bilinear", align_corners=self.align_corners)
        lower = self.conv_lower_res(self.dwconv(lower))
        return self.relu(self.conv_higher_res(higher) + lower)


@BACKBONES.register()
class FastSCNN(BaseBackbone):
    """Fast-SCNN (MMSeg arguments): a shallow learning-to-downsample branch (1/8) fused with a deep, cheap
    global branch (1/32). ``out_indices`` picks from (higher-res 1/8, lower-res 1/32, fused 1/8).

    ``global_in_channels`` must equal ``higher_in_channels`` and ``global_out_channels`` must equal
    ``lower_in_channels`` (they name the same tensors twice, as in MMSeg).
    """

    def __init__(self, in_channels: int = 3, downsample_dw_channels: Sequence[int] = (32, 48),
                 global_in_channels: int = 64, global_block_channels: Sequence[int] = (64, 96, 128),
                 global_block_strides: Sequence[int] = (2, 2, 1), global_out_channels: int = 128,
                 higher_in_channels: int = 64, lower_in_channels: int = 128, fusion_out_channels: int = 128,
                 out_indices: Sequence[int] = (0, 1, 2), conv_cfg: Optional[Dict] = None,
                 norm_cfg: Optional[Dict] = dict(type="BN"), act_cfg: Optional[Dict] = dict(type="ReLU"),
                 align_corners: bool = False, dw_act_cfg: Optional[Dict] = None, norm_eval: bool = False,
                 pretrained: Optional[str] = None, init_cfg: Optional[Dict[str, Any]] = None):
        super().__init__(norm_eval=norm_eval, pretrained=pretrained, init_cfg=init_cfg)
        if global_in_channels != higher_in_channels:
            raise ConfigError(f"FastSCNN: global_in_channels ({global_in_channels}) must equal higher_in_channels "
                              f"({higher_in_channels})")
        if global_out_channels != lower_in_channels:
            raise ConfigError(f"FastSCNN: global_out_channels ({global_out_channels}) must equal lower_in_channels "
                              f"({lower_in_channels})")
        if len(downsample_dw_channels) != 2:
            raise ConfigError(f"FastSCNN: downsample_dw_channels needs 2 entries, got {downsample_dw_channels!r}")
        out_indices = tuple(out_indices)
        if not out_indices or not all(-3 <= i < 3 for i in out_indices):
            raise ConfigError(f"FastSCNN: out_indices {out_indices} must index (higher, lower, fusion)")
        self.out_indices, self.align_corners = out_indices, align_corners
        self.learning_to_downsample = LearningToDownsample(in_channels, tuple(downsample_dw_channels),
                                                           global_in_channels, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                                           act_cfg=act_cfg, dw_act_cfg=dw_act_cfg)
        self.global_feature_extractor = GlobalFeatureExtractor(
            global_in_channels, tuple(global_block_channels), global_out_channels, expand_ratio=6,
            num_blocks=(3, 3, 3), strides=tuple(global_block_strides), pool_scales=(1, 2, 3, 6), conv_cfg=conv_cfg,
            norm_cfg=norm_cfg, act_cfg=act_cfg, align_corners=align_corners)
        self.feature_fusion = FeatureFusionModule(higher_in_channels, lower_in_channels, fusion_out_channels,
                                                  conv_cfg=conv_cfg, norm_cfg=norm_cfg, dwconv_act_cfg=act_cfg,
                                                  align_corners=align_corners)
        all_channels = (global_in_channels, global_out_channels, fusion_out_channels)
        self.out_channels = tuple(all_channels[i] for i in out_indices)
        self.init_weights()

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        higher = self.learning_to_downsample(x)
        lower = self.global_feature_extractor(higher)
        fused = self.feature_fusion(higher, lower)
        outs = (higher, lower, fused)
        return tuple(outs[i] for i in self.out_indices)
