"""ISAHead (MMSeg, Interlaced Sparse Self-Attention): self-attention among pixels far apart (one per local
group: the global relation), then among the pixels of each local group (the local relation)."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn.functional as F

from rayseg.errors import ConfigError
from rayseg.models.heads._self_attention import SelfAttentionBlock
from rayseg.models.heads.decode_head import BaseDecodeHead
from rayseg.models.utils import ConvModule
from rayseg.registry import HEADS, check_kwargs


class ISASelfAttention(SelfAttentionBlock):
    """MMSeg's ISA ``SelfAttentionBlock``: self-attention, then a ConvModule ``output_project``."""

    def __init__(self, in_channels: int, channels: int, conv_cfg: Optional[Dict], norm_cfg: Optional[Dict],
                 act_cfg: Optional[Dict]):
        super().__init__(key_in_channels=in_channels, query_in_channels=in_channels, channels=channels,
                         out_channels=in_channels, share_key_query=False, query_downsample=None,
                         key_downsample=None, key_query_num_convs=2, key_query_norm=True, value_out_num_convs=1,
                         value_out_norm=False, matmul_norm=True, with_out=False, conv_cfg=conv_cfg,
                         norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.output_project = self.build_project(in_channels, in_channels, 1, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.output_project(super().forward(x, x))


@HEADS.register()
class ISAHead(BaseDecodeHead):
    """Interlaced sparse self-attention head.

    Args:
        isa_channels: channels of the attention's keys and queries.
        down_factor: (h, w) size of a local group; the map is zero-padded (centred) to a multiple of it.
        **kwargs: BaseDecodeHead arguments (unknown keys are rejected there).
    """

    def __init__(self, isa_channels: int, down_factor: Sequence[int] = (8, 8), **kwargs: Any):
        check_kwargs(BaseDecodeHead.__init__, kwargs, "head 'ISAHead'")
        if not (isinstance(down_factor, (list, tuple)) and len(down_factor) == 2
                and all(isinstance(v, int) and v > 0 for v in down_factor)):
            raise ConfigError(f"ISAHead: down_factor must be [h, w] of positive ints, got {down_factor!r}")
        super().__init__(**kwargs)
        self.down_factor = tuple(down_factor)
        common = dict(conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        self.in_conv = ConvModule(self.in_channels, self.channels, 3, padding=1, **common)
        self.global_relation = ISASelfAttention(self.channels, isa_channels, **common)
        self.local_relation = ISASelfAttention(self.channels, isa_channels, **common)
        self.out_conv = ConvModule(self.channels * 2, self.channels, 1, **common)
        self.init_weights()

    def forward(self, inputs: Any) -> torch.Tensor:
        x = self.in_conv(self._transform_inputs(inputs))
        residual = x
        n, c, h, w = x.shape
        loc_h, loc_w = self.down_factor
        glb_h, glb_w = math.ceil(h / loc_h), math.ceil(w / loc_w)
        pad_h, pad_w = glb_h * loc_h - h, glb_w * loc_w - w
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        # Global relation: pixels at the same place in every local group attend to each other.
        x = x.reshape(n, c, glb_h, loc_h, glb_w, loc_w).permute(0, 3, 5, 1, 2, 4).reshape(-1, c, glb_h, glb_w)
        x = self.global_relation(x)
        # Local relation: pixels of one local group attend to each other.
        x = x.reshape(n, loc_h, loc_w, c, glb_h, glb_w).permute(0, 4, 5, 3, 1, 2).reshape(-1, c, loc_h, loc_w)
        x = self.local_relation(x)
        x = x.reshape(n, glb_h, glb_w, c, loc_h, loc_w).permute(0, 3, 1, 4, 2, 5)
        x = x.reshape(n, c, glb_h * loc_h, glb_w * loc_w)
        if pad_h > 0 or pad_w > 0:
            x = x[:, :, pad_h // 2:pad_h // 2 + h, pad_w // 2:pad_w // 2 + w]
        return self.cls_seg(self.out_conv(torch.cat([x, residual], dim=1)))
