"""SETRUPHead (MMSeg): SETR's naive (one conv, ×4) and progressive (PUP: several conv + ×2) upsampling heads."""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models.heads.decode_head import BaseDecodeHead
from rayseg.models.upsample import Upsample
from rayseg.models.utils import ConvModule, build_norm_layer, load_init_weights
from rayseg.registry import HEADS, check_kwargs


@HEADS.register()
class SETRUPHead(BaseDecodeHead):
    """LayerNorm over the channels of one ViT map (``norm``), then ``num_convs`` × (``kernel_size`` ConvModule,
    bilinear ×``up_scale``) in ``up_convs.{i}.0`` / ``.1``, then the classifier.

    Naive SETR: ``num_convs: 1, up_scale: 4, kernel_size: 1``; PUP: ``num_convs: 4, up_scale: 2, kernel_size: 3``.

    Args:
        norm_layer: the input LayerNorm (MMSeg's default ``{type: LN, eps: 1e-6, requires_grad: true}``).
        **kwargs: BaseDecodeHead arguments (``in_channels`` an int, one input).
    """

    def __init__(self, norm_layer: Dict[str, Any] = dict(type="LN", eps=1e-6, requires_grad=True),
                 num_convs: int = 1, up_scale: int = 4, kernel_size: int = 3, **kwargs: Any):
        check_kwargs(BaseDecodeHead.__init__, kwargs, "head 'SETRUPHead'")
        if kernel_size not in (1, 3):
            raise ConfigError(f"SETRUPHead: kernel_size must be 1 or 3, got {kernel_size!r}")
        if not isinstance(num_convs, int) or num_convs < 1:
            raise ConfigError(f"SETRUPHead: num_convs must be an int >= 1, got {num_convs!r}")
        super().__init__(**kwargs)
        if not isinstance(self.in_channels, int):
            raise ConfigError(f"SETRUPHead: in_channels must be one int (one input), got {self.in_channels!r}")
        if not isinstance(norm_layer, dict) or norm_layer.get("type") != "LN":
            raise ConfigError(f"SETRUPHead: norm_layer must have type 'LN', got {norm_layer!r}")
        self.norm = build_norm_layer(norm_layer, self.in_channels)[1]
        self.up_convs = nn.ModuleList()
        in_channels = self.in_channels
        for _ in range(num_convs):
            self.up_convs.append(nn.Sequential(
                ConvModule(in_channels, self.channels, kernel_size, stride=1, padding=(kernel_size - 1) // 2,
                           norm_cfg=self.norm_cfg, act_cfg=self.act_cfg),
                Upsample(scale_factor=up_scale, mode="bilinear", align_corners=self.align_corners)))
            in_channels = self.channels
        self.init_weights()

    def init_weights(self) -> None:
        """MMSeg's init_cfg: unit LayerNorm, classifier ~N(0, 0.01)."""
        nn.init.ones_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)
        nn.init.normal_(self.conv_seg.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)
        load_init_weights(self, None, self.init_cfg)

    def forward(self, inputs: Any) -> torch.Tensor:
        x = self._transform_inputs(inputs)
        n, c, h, w = x.shape
        # LayerNorm over channels, per pixel (as tokens).
        x = self.norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(n, c, h, w)
        for up_conv in self.up_convs:
            x = up_conv(x)
        return self.cls_seg(x)
