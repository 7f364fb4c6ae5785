"""ConvNeXt backbone, as mmpretrain's ``ConvNeXt`` (``type='mmpretrain.ConvNeXt'`` in MMSeg 1.x's UPerNet configs,
``mmcls.ConvNeXt`` in 0.x).

Parameter names follow mmpretrain so MMSeg's UPerNet-ConvNeXt checkpoints and mmpretrain's ImageNet ConvNeXt
weights load as they are: ``downsample_layers.0`` (the stem: ``0`` conv, ``1`` LayerNorm), ``downsample_layers.{i}``
(``0`` LayerNorm, ``1`` 2×2 stride-2 conv), ``stages.{i}.{j}`` blocks with ``depthwise_conv``, ``norm``,
``pointwise_conv1``, ``pointwise_conv2`` and the layer scale ``gamma``, and one output LayerNorm ``norm{i}`` per
entry of ``out_indices``. Every LayerNorm normalises over channels (mmpretrain's ``LN2d``).

Sizes (depths / channels): tiny (3,3,9,3)/(96,192,384,768), small (3,3,27,3)/(96,…), base (3,3,27,3)/
(128,256,512,1024), large …/(192,384,768,1536), xlarge …/(256,512,1024,2048). The stem and every downsampling
conv have no padding: an input whose side is not a multiple of 32 loses the remainder at the stride-32 stage,
as in mmpretrain.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from torchvision.models.convnext import LayerNorm2d
from torchvision.ops import StochasticDepth

from rayseg.errors import ConfigError
from rayseg.models.backbones.base import BaseBackbone
from rayseg.models.utils import build_activation_layer
from rayseg.registry import BACKBONES

ARCH_SETTINGS = {
    "atto": ([2, 2, 6, 2], [40, 80, 160, 320]),
    "femto": ([2, 2, 6, 2], [48, 96, 192, 384]),
    "pico": ([2, 2, 6, 2], [64, 128, 256, 512]),
    "nano": ([2, 2, 8, 2], [80, 160, 320, 640]),
    "tiny": ([3, 3, 9, 3], [96, 192, 384, 768]),
    "small": ([3, 3, 27, 3], [96, 192, 384, 768]),
    "base": ([3, 3, 27, 3], [128, 256, 512, 1024]),
    "large": ([3, 3, 27, 3], [192, 384, 768, 1536]),
    "xlarge": ([3, 3, 27, 3], [256, 512, 1024, 2048]),
    "huge": ([3, 3, 27, 3], [352, 704, 1408, 2816]),
}


def _ln2d_eps(norm_cfg: Any) -> float:
    """The eps of mmpretrain's ``LN2d`` norm config (the only norm its ConvNeXt builds)."""
    if not isinstance(norm_cfg, dict) or norm_cfg.get("type") not in ("LN2d", "LN"):
        raise ConfigError(f"ConvNeXt: norm_cfg must have type 'LN2d', got {norm_cfg!r}")
    unknown = sorted(set(norm_cfg) - {"type", "eps", "requires_grad"})
    if unknown:
        raise ConfigError(f"ConvNeXt: norm_cfg: unknown argument(s) {unknown}; accepted: eps, requires_grad")
    return float(norm_cfg.get("eps", 1e-5))  # mmpretrain's build_norm_layer default when eps is not given


class ConvNeXtBlock(nn.Module):
    """7×7 depth-wise conv → LayerNorm → pointwise expansion → activation → pointwise projection → layer scale
    ``gamma`` → stochastic depth, plus the identity. The pointwise layers are ``nn.Linear`` on channel-last
    maps (``linear_pw_conv``, mmpretrain's default) or 1×1 convs."""

    def __init__(self, channels: int, eps: float, act_cfg: Dict[str, Any], mlp_ratio: float,
                 linear_pw_conv: bool, drop_path_rate: float, layer_scale_init_value: float, with_cp: bool):
        super().__init__()
        self.with_cp, self.linear_pw_conv = with_cp, linear_pw_conv
        self.depthwise_conv = nn.Conv2d(channels, channels, kernel_size=7, padding=3, groups=channels)
        # Channel-last LayerNorm for the linear variant, channel-first (LN2d) for the conv one: same parameters.
        self.norm = nn.LayerNorm(channels, eps=eps) if linear_pw_conv else LayerNorm2d(channels, eps=eps)
        mid = int(mlp_ratio * channels)
        if linear_pw_conv:
            self.pointwise_conv1, self.pointwise_conv2 = nn.Linear(channels, mid), nn.Linear(mid, channels)
        else:
            self.pointwise_conv1 = nn.Conv2d(channels, mid, 1)
            self.pointwise_conv2 = nn.Conv2d(mid, channels, 1)
        self.act = build_activation_layer(act_cfg)
        self.gamma = (nn.Parameter(layer_scale_init_value * torch.ones(channels))
                      if layer_scale_init_value > 0 else None)
        self.drop_path = StochasticDepth(drop_path_rate, "row") if drop_path_rate > 0 else nn.Identity()

    def _inner(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.depthwise_conv(x)
        if self.linear_pw_conv:
            x = x.permute(0, 2, 3, 1)
            x = self.pointwise_conv2(self.act(self.pointwise_conv1(self.norm(x))))
            x = x.permute(0, 3, 1, 2)
        else:
            x = self.pointwise_conv2(self.act(self.pointwise_conv1(self.norm(x))))
        if self.gamma is not None:
            x = x.mul(self.gamma.view(1, -1, 1, 1))
        return shortcut + self.drop_path(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and x.requires_grad:
            return cp.checkpoint(self._inner, x, use_reentrant=False)
        return self._inner(x)


@BACKBONES.register()
class ConvNeXt(BaseBackbone):
    """ConvNeXt (mmpretrain arguments); returns the stages in ``out_indices`` (strides 4/8/16/32), each through
    its own output LayerNorm ``norm{i}``.

    ``arch``: a name of :data:`ARCH_SETTINGS` or ``{depths, channels}``. ``layer_scale_init_value``: initial
    ``gamma`` (0: no layer scale; MMSeg's UPerNet configs use 1.0). ``gap_before_final_norm`` must be false for
    segmentation (true pools each output to a vector, mmpretrain's classification default). ``frozen_stages``
    (mmpretrain's meaning): that many downsampling layers and stages are frozen. ``use_grn`` (ConvNeXt V2)
    is not supported.
    """

    def __init__(self, arch: Any = "tiny", in_channels: int = 3, stem_patch_size: int = 4,
                 norm_cfg: Dict[str, Any] = dict(type="LN2d", eps=1e-6), act_cfg: Dict[str, Any] = dict(type="GELU"),
                 linear_pw_conv: bool = True, use_grn: bool = False, drop_path_rate: float = 0.0,
                 layer_scale_init_value: float = 1e-6, out_indices: Any = -1, frozen_stages: int = 0,
                 gap_before_final_norm: bool = True, with_cp: bool = False, mlp_ratio: float = 4.0,
                 norm_eval: bool = False, pretrained: Optional[str] = None,
                 init_cfg: Optional[Dict[str, Any]] = None):
        super().__init__(norm_eval=norm_eval, pretrained=pretrained, init_cfg=init_cfg)
        if isinstance(arch, str):
            if arch not in ARCH_SETTINGS:
                raise ConfigError(f"ConvNeXt: unknown arch {arch!r}; choose from {sorted(ARCH_SETTINGS)} or give "
                                  f"{{depths, channels}}")
            depths, channels = ARCH_SETTINGS[arch]
        elif isinstance(arch, dict) and {"depths", "channels"} <= set(arch):
            depths, channels = arch["depths"], arch["channels"]
        else:
            raise ConfigError(f"ConvNeXt: arch must be a name or {{depths, channels}}, got {arch!r}")
        depths, channels = [int(d) for d in depths], [int(c) for c in channels]
        if len(depths) != len(channels) or not depths:
            raise ConfigError(f"ConvNeXt: depths {depths} and channels {channels} need the same, non-zero length")
        if use_grn:
            raise ConfigError("ConvNeXt: use_grn (ConvNeXt V2) is not supported")
        if gap_before_final_norm:
            raise ConfigError("ConvNeXt: gap_before_final_norm must be false for segmentation (it pools each "
                              "output to a vector); MMSeg's configs set gap_before_final_norm=False")
        num_stages = len(depths)
        out_indices = [out_indices] if isinstance(out_indices, int) else list(out_indices)
        # mmpretrain counts negative indices from 4 whatever the number of stages.
        out_indices = tuple(4 + i if i < 0 else i for i in out_indices)
        if not out_indices or not all(0 <= i < num_stages for i in out_indices):
            raise ConfigError(f"ConvNeXt: out_indices {out_indices} must lie in 0..{num_stages - 1}")
        eps = _ln2d_eps(norm_cfg)
        self.depths, self.channels = depths, channels
        self.out_indices, self.frozen_stages = out_indices, frozen_stages
        # (on the CPU: a model built under `with torch.device("meta")` still needs the rates as numbers)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # stochastic depth decay
        self.downsample_layers = nn.ModuleList([nn.Sequential(
            nn.Conv2d(in_channels, channels[0], kernel_size=stem_patch_size, stride=stem_patch_size),
            LayerNorm2d(channels[0], eps=eps))])
        self.stages = nn.ModuleList()
        for i, depth in enumerate(depths):
            if i >= 1:
                self.downsample_layers.append(nn.Sequential(
                    LayerNorm2d(channels[i - 1], eps=eps), nn.Conv2d(channels[i - 1], channels[i], 2, stride=2)))
            start = sum(depths[:i])
            self.stages.append(nn.Sequential(*[
                ConvNeXtBlock(channels[i], eps, act_cfg, mlp_ratio, linear_pw_conv, dpr[start + j],
                              layer_scale_init_value, with_cp) for j in range(depth)]))
            if i in out_indices:
                self.add_module(f"norm{i}", LayerNorm2d(channels[i], eps=eps))
        if norm_cfg.get("requires_grad") is False:
            for m in self.modules():
                if isinstance(m, nn.LayerNorm):
                    m.requires_grad_(False)
        self.out_channels = tuple(channels[i] for i in out_indices)
        self.init_weights()

    def _init_layers(self) -> None:
        """mmpretrain's ConvNeXt init: trunc-normal(0.02) convs and Linear layers with zero bias, unit LayerNorm
        (``gamma`` keeps ``layer_scale_init_value``)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _freeze_stages(self) -> None:
        for i in range(self.frozen_stages):
            self._freeze(self.downsample_layers[i], self.stages[i])

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        outs = []
        for i, stage in enumerate(self.stages):
            x = stage(self.downsample_layers[i](x))
            if i in self.out_indices:
                outs.append(getattr(self, f"norm{i}")(x))
        return tuple(outs)

