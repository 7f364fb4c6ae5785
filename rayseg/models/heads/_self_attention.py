"""``SelfAttentionBlock``: MMSeg's generic key/query/value attention block (``mmseg.models.utils``), the base
of OCR's object attention (and of the non-local style heads). Module names are MMSeg's: ``key_project``,
``query_project``, ``value_project``, ``out_project`` — a ConvModule, or a Sequential of them."""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from rayseg.errors import ConfigError
from rayseg.models.utils import ConvModule, constant_init


class SelfAttentionBlock(nn.Module):
    """Attention of query pixels over key pixels: ``softmax(q·k [/ sqrt(channels)]) · v`` (then ``out_project``).

    Args:
        key_in_channels, query_in_channels: channels of the key and query inputs.
        channels: channels of the projected keys/queries (and values when ``with_out``).
        out_channels: channels of the output.
        share_key_query: one projection for keys and queries.
        query_downsample, key_downsample: optional modules applied after projecting queries / keys and values.
        key_query_num_convs, value_out_num_convs: 1×1 convs per projection.
        key_query_norm, value_out_norm: ConvModules (with norm/activation) instead of plain convs.
        matmul_norm: scale the similarities by ``channels ** -0.5``.
        with_out: project the attended values to ``out_channels`` with ``out_project``.
    """

    def __init__(self, key_in_channels: int, query_in_channels: int, channels: int, out_channels: int,
                 share_key_query: bool, query_downsample: Optional[nn.Module], key_downsample: Optional[nn.Module],
                 key_query_num_convs: int, value_out_num_convs: int, key_query_norm: bool, value_out_norm: bool,
                 matmul_norm: bool, with_out: bool, conv_cfg: Optional[Dict], norm_cfg: Optional[Dict],
                 act_cfg: Optional[Dict]):
        super().__init__()
        if share_key_query and key_in_channels != query_in_channels:
            raise ConfigError(f"share_key_query needs equal key/query channels, got {key_in_channels} and "
                              f"{query_in_channels}")
        self.key_in_channels, self.query_in_channels = key_in_channels, query_in_channels
        self.channels, self.out_channels = channels, out_channels
        self.share_key_query = share_key_query
        self.conv_cfg, self.norm_cfg, self.act_cfg = conv_cfg, norm_cfg, act_cfg
        self.key_project = self.build_project(key_in_channels, channels, key_query_num_convs, key_query_norm)
        self.query_project = self.key_project if share_key_query else \
            self.build_project(query_in_channels, channels, key_query_num_convs, key_query_norm)
        self.value_project = self.build_project(key_in_channels, channels if with_out else out_channels,
                                                value_out_num_convs, value_out_norm)
        self.out_project = self.build_project(channels, out_channels, value_out_num_convs, value_out_norm) \
            if with_out else None
        self.query_downsample, self.key_downsample = query_downsample, key_downsample
        self.matmul_norm = matmul_norm
        if self.out_project is not None and not isinstance(self.out_project, ConvModule):
            # As MMSeg: a plain-conv output projection starts at zero (the block starts as a no-op residual).
            constant_init(self.out_project, 0)

    def build_project(self, in_channels: int, channels: int, num_convs: int, use_conv_module: bool) -> nn.Module:
        """``num_convs`` 1×1 convs (ConvModules with ``use_conv_module``); a single one is not wrapped."""
        if use_conv_module:
            common = dict(conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
            convs = [ConvModule(in_channels if i == 0 else channels, channels, 1, **common) for i in range(num_convs)]
        else:
            convs = [nn.Conv2d(in_channels if i == 0 else channels, channels, 1) for i in range(num_convs)]
        return nn.Sequential(*convs) if len(convs) > 1 else convs[0]

    def forward(self, query_feats: torch.Tensor, key_feats: torch.Tensor) -> torch.Tensor:
        batch_size = query_feats.size(0)
        query = self.query_project(query_feats)
        if self.query_downsample is not None:
            query = self.query_downsample(query)
        query = query.reshape(*query.shape[:2], -1).permute(0, 2, 1).contiguous()
        key = self.key_project(key_feats)
        value = self.value_project(key_feats)
        if self.key_downsample is not None:
            key, value = self.key_downsample(key), self.key_downsample(value)
        key = key.reshape(*key.shape[:2], -1)
        value = value.reshape(*value.shape[:2], -1).permute(0, 2, 1).contiguous()
        sim_map = torch.matmul(query, key)
        if self.matmul_norm:
            sim_map = (self.channels ** -0.5) * sim_map
        sim_map = F.softmax(sim_map, dim=-1)
        context = torch.matmul(sim_map, value).permute(0, 2, 1).contiguous()
        context = context.reshape(batch_size, -1, *query_feats.shape[2:])
        if self.out_project is not None:
            context = self.out_project(context)
        return context
