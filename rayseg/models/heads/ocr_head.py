"""OCRHead (MMSeg, Object-Contextual Representations): the second stage of OCRNet.

The previous head's logits act as soft object regions: ``SpatialGatherModule`` pools the features into one
context vector per class, and ``ObjectAttentionBlock`` lets every pixel attend over those class contexts;
the attended context is concatenated with the pixel features and classified.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from rayseg.errors import ConfigError
from rayseg.models.heads._self_attention import SelfAttentionBlock
from rayseg.models.heads.cascade_decode_head import BaseCascadeDecodeHead
from rayseg.models.heads.decode_head import BaseDecodeHead
from rayseg.models.utils import ConvModule
from rayseg.registry import HEADS, check_kwargs


class SpatialGatherModule(nn.Module):
    """Class context vectors: features averaged over pixels weighted by ``softmax(scale · logits)`` per class.

    Returns (N, C, num_classes, 1).
    """

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, feats: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        n, num_classes = probs.shape[:2]
        if probs.shape[2:] != feats.shape[2:]:
            raise ValueError(f"OCRHead: the previous stage's logits {tuple(probs.shape[2:])} must have the "
                             f"features' size {tuple(feats.shape[2:])}")
        probs = F.softmax(self.scale * probs.reshape(n, num_classes, -1), dim=2)
        feats = feats.reshape(n, feats.size(1), -1).permute(0, 2, 1)
        return torch.matmul(probs, feats).permute(0, 2, 1).contiguous().unsqueeze(3)


class ObjectAttentionBlock(SelfAttentionBlock):
    """Pixels (queries) attend over class contexts (keys/values); output fused with the pixel features."""

    def __init__(self, in_channels: int, channels: int, conv_cfg: Optional[Dict], norm_cfg: Optional[Dict],
                 act_cfg: Optional[Dict]):
        super().__init__(key_in_channels=in_channels, query_in_channels=in_channels, channels=channels,
                         out_channels=in_channels, share_key_query=False, query_downsample=None,
                         key_downsample=None, key_query_num_convs=2, key_query_norm=True, value_out_num_convs=1,
                         value_out_norm=True, matmul_norm=True, with_out=True, conv_cfg=conv_cfg,
                         norm_cfg=norm_cfg, act_cfg=act_cfg)
        self.bottleneck = ConvModule(in_channels * 2, in_channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                     act_cfg=act_cfg)

    def forward(self, query_feats: torch.Tensor, key_feats: torch.Tensor) -> torch.Tensor:
        context = super().forward(query_feats, key_feats)
        return self.bottleneck(torch.cat([context, query_feats], dim=1))


@HEADS.register()
class OCRHead(BaseCascadeDecodeHead):
    """Object-Contextual Representations head; ``forward(inputs, prev_output)``.

    Args:
        ocr_channels: channels of the attention's keys and queries.
        scale: temperature of the soft object regions (``softmax(scale · logits)``). MMSeg max-pools the
            queries for ``scale > 1``, a path that fails there; here only ``scale <= 1`` is accepted.
        **kwargs: BaseDecodeHead arguments (unknown keys are rejected there).
    """

    def __init__(self, ocr_channels: int, scale: float = 1, **kwargs: Any):
        check_kwargs(BaseDecodeHead.__init__, kwargs, "head 'OCRHead'")
        if not (isinstance(scale, (int, float)) and 0 < scale <= 1):
            raise ConfigError(f"OCRHead: scale must be in (0, 1] (MMSeg's scale > 1 path does not run), "
                              f"got {scale!r}")
        super().__init__(**kwargs)
        self.ocr_channels, self.scale = ocr_channels, scale
        common = dict(conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        # Registered in MMSeg's order (object_context_block, spatial_gather_module, bottleneck).
        self.object_context_block = ObjectAttentionBlock(self.channels, ocr_channels, **common)
        self.spatial_gather_module = SpatialGatherModule(scale)
        self.bottleneck = ConvModule(self.in_channels, self.channels, 3, padding=1, **common)
        self.init_weights()

    def forward(self, inputs: Sequence[torch.Tensor], prev_output: torch.Tensor) -> torch.Tensor:
        feats = self.bottleneck(self._transform_inputs(inputs))
        context = self.spatial_gather_module(feats, prev_output)
        return self.cls_seg(self.object_context_block(feats, context))
