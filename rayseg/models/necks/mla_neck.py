"""MLANeck (MMSeg): SETR's multi-level feature aggregation over several ViT layers."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models.utils import ConvModule, build_norm_layer
from rayseg.registry import NECKS


class MLAModule(nn.Module):
    """1×1 ``channel_proj`` per input; top-down running sums (deepest first); 3×3 ``feat_extract`` on each.
    Outputs come deepest-first, as in MMSeg."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, norm_cfg: Optional[Dict[str, Any]],
                 act_cfg: Optional[Dict[str, Any]]):
        super().__init__()
        self.channel_proj = nn.ModuleList([ConvModule(c, out_channels, 1, norm_cfg=norm_cfg, act_cfg=act_cfg)
                                           for c in in_channels])
        self.feat_extract = nn.ModuleList([ConvModule(out_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg,
                                                      act_cfg=act_cfg) for _ in in_channels])

    def forward(self, inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        feats = [conv(x) for x, conv in zip(inputs, self.channel_proj)][::-1]
        mids = [feats[0]]
        for feat in feats[1:]:
            mids.append(mids[-1] + feat)
        return tuple(conv(mid) for mid, conv in zip(mids, self.feat_extract))


@NECKS.register()
class MLANeck(nn.Module):
    """Per-input LayerNorm over channels (``norm.{i}``), then ``mla`` (:class:`MLAModule`).

    Args:
        in_channels: channels of each input (a list); the inputs must share a size.
        out_channels: channels of every output.
        norm_layer: the input LayerNorms (MMSeg's default ``{type: LN, eps: 1e-6, requires_grad: true}``).
        norm_cfg, act_cfg: for the ConvModules (MMSeg's default: neither; SETR-MLA: SyncBN + ReLU).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int,
                 norm_layer: Dict[str, Any] = dict(type="LN", eps=1e-6, requires_grad=True),
                 norm_cfg: Optional[Dict[str, Any]] = None, act_cfg: Optional[Dict[str, Any]] = None):
        super().__init__()
        if not isinstance(in_channels, (list, tuple)) or not in_channels:
            raise ConfigError(f"MLANeck: in_channels must be a non-empty list, got {in_channels!r}")
        if not isinstance(norm_layer, dict) or norm_layer.get("type") != "LN":
            raise ConfigError(f"MLANeck: norm_layer must have type 'LN', got {norm_layer!r}")
        self.in_channels, self.out_channels = list(in_channels), out_channels
        self.norm = nn.ModuleList([build_norm_layer(norm_layer, c)[1] for c in in_channels])
        self.mla = MLAModule(in_channels, out_channels, norm_cfg, act_cfg)

    def forward(self, inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"MLANeck: got {len(inputs)} inputs, built for {len(self.in_channels)}")
        outs = []
        for x, norm in zip(inputs, self.norm):
            n, c, h, w = x.shape
            outs.append(norm(x.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(n, c, h, w))
        return self.mla(outs)
