"""NLHead (MMSeg, Non-local Neural Networks): FCNHead's two convs with mmcv's ``NonLocal2d`` between them."""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models.heads.fcn_head import FCNHead
from rayseg.models.utils import ConvModule, constant_init
from rayseg.registry import HEADS

_MODES = ("embedded_gaussian", "dot_product")


class NonLocal2d(nn.Module):
    """mmcv's ``NonLocal2d`` (modes ``embedded_gaussian`` and ``dot_product``, no sub-sampling).

    ``x + conv_out(softmax(theta(x)ᵀ·phi(x) [/ sqrt(inter)]) · g(x))``; module names ``g``, ``theta``, ``phi``,
    ``conv_out`` (with ``norm_cfg``) as in mmcv's checkpoints. ``conv_out`` starts at zero (its norm's weight
    when it has one), so the block starts as the identity, as in mmcv.
    """

    def __init__(self, in_channels: int, reduction: int = 2, use_scale: bool = True,
                 conv_cfg: Optional[Dict] = None, norm_cfg: Optional[Dict] = None, mode: str = "embedded_gaussian"):
        super().__init__()
        if mode not in _MODES:
            raise ConfigError(f"NLHead: mode must be one of {list(_MODES)}, got {mode!r}")
        self.in_channels, self.use_scale, self.mode = in_channels, use_scale, mode
        self.inter_channels = max(in_channels // reduction, 1)
        self.g = ConvModule(in_channels, self.inter_channels, 1, conv_cfg=conv_cfg, act_cfg=None)
        self.conv_out = ConvModule(self.inter_channels, in_channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                   act_cfg=None)
        self.theta = ConvModule(in_channels, self.inter_channels, 1, conv_cfg=conv_cfg, act_cfg=None)
        self.phi = ConvModule(in_channels, self.inter_channels, 1, conv_cfg=conv_cfg, act_cfg=None)
        for m in (self.g, self.theta, self.phi):
            nn.init.normal_(m.conv.weight, std=0.01)
            if m.conv.bias is not None:
                nn.init.zeros_(m.conv.bias)
        constant_init(self.conv_out.norm if self.conv_out.norm is not None else self.conv_out.conv, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.size(0)
        g_x = self.g(x).reshape(n, self.inter_channels, -1).permute(0, 2, 1)
        theta_x = self.theta(x).reshape(n, self.inter_channels, -1).permute(0, 2, 1)
        phi_x = self.phi(x).reshape(n, self.inter_channels, -1)
        pairwise = torch.matmul(theta_x, phi_x)
        if self.mode == "embedded_gaussian":
            if self.use_scale:
                pairwise = pairwise / theta_x.shape[-1] ** 0.5
            pairwise = pairwise.softmax(dim=-1)
        else:  # dot_product: normalised by the number of positions
            pairwise = pairwise / pairwise.shape[-1]
        y = torch.matmul(pairwise, g_x).permute(0, 2, 1).contiguous().reshape(n, self.inter_channels,
                                                                               *x.shape[2:])
        return x + self.conv_out(y)


@HEADS.register()
class NLHead(FCNHead):
    """Non-local head: ``convs.0`` → ``nl_block`` → ``convs.1`` (→ ``conv_cat`` with the input) → classifier.

    Args:
        reduction: channel reduction of the non-local block's embeddings.
        use_scale: scale the similarities by ``1/sqrt(inter_channels)`` (embedded_gaussian).
        mode: ``'embedded_gaussian'`` or ``'dot_product'``.
        **kwargs: FCNHead arguments but ``num_convs`` (always 2).
    """

    def __init__(self, reduction: int = 2, use_scale: bool = True, mode: str = "embedded_gaussian", **kwargs: Any):
        if "num_convs" in kwargs:
            raise ConfigError(f"NLHead: num_convs is always 2, got num_convs={kwargs['num_convs']!r}")
        super().__init__(num_convs=2, **kwargs)
        self.reduction, self.use_scale, self.mode = reduction, use_scale, mode
        self.nl_block = NonLocal2d(self.channels, reduction=reduction, use_scale=use_scale,
                                   conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, mode=mode)
        # Again, now that nl_block exists (an init_cfg checkpoint must reach it too).
        self.init_weights()

    def forward(self, inputs: Any) -> torch.Tensor:
        x = self._transform_inputs(inputs)
        output = self.convs[1](self.nl_block(self.convs[0](x)))
        if self.concat_input:
            output = self.conv_cat(torch.cat([x, output], dim=1))
        return self.cls_seg(output)
