"""Mix Vision Transformer (MiT), the SegFormer encoder, as in MMSegmentation 1.x.

Parameter names follow MMSeg so its SegFormer checkpoints (and the converted ImageNet MiT weights) load:
``layers.{i}.0`` is the overlapping patch embedding (``projection``, ``norm``), ``layers.{i}.1.{j}`` the
transformer blocks (``norm1``, ``attn.attn.*``, ``attn.sr``, ``attn.norm``, ``norm2``, ``ffn.layers.*``)
and ``layers.{i}.2`` the stage's final LayerNorm. MMSeg's attention is mmcv's ``MultiheadAttention``,
which keeps a ``torch.nn.MultiheadAttention`` under ``.attn``; using torch's class here gives the same keys
(``in_proj_weight``, ``in_proj_bias``, ``out_proj.weight``, ``out_proj.bias``).

SegFormer sizes (embed_dims / num_layers / num_heads=(1, 2, 5, 8)):
B0 32/(2,2,2,2), B1 64/(2,2,2,2), B2 64/(3,4,6,3), B3 64/(3,4,18,3), B4 64/(3,8,27,3), B5 64/(3,6,40,3).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp

from rayseg.errors import ConfigError
from rayseg.models.backbones.base import BaseBackbone
from rayseg.models.utils import build_activation_layer, build_norm_layer
from rayseg.registry import BACKBONES


def nlc_to_nchw(x: torch.Tensor, hw_shape: Tuple[int, int]) -> torch.Tensor:
    """(N, H*W, C) tokens → (N, C, H, W) map."""
    n, _, c = x.shape
    return x.transpose(1, 2).reshape(n, c, hw_shape[0], hw_shape[1])


def nchw_to_nlc(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) map → (N, H*W, C) tokens."""
    return x.flatten(2).transpose(1, 2)


def _layer_norm(norm_cfg: Dict[str, Any], dims: int) -> nn.Module:
    # MiT normalises token sequences, so only LayerNorm makes sense (BN here would silently be wrong).
    if not isinstance(norm_cfg, dict) or norm_cfg.get("type") != "LN":
        raise ConfigError(f"MixVisionTransformer: norm_cfg must have type 'LN', got {norm_cfg!r}")
    return build_norm_layer(norm_cfg, dims)[1]


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch per sample with probability ``drop_prob``."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = float(drop_prob)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: strided conv (``projection``) then LayerNorm (``norm``) on the tokens."""

    def __init__(self, in_channels: int, embed_dims: int, kernel_size: int, stride: int, padding: int,
                 norm_cfg: Optional[Dict[str, Any]]):
        super().__init__()
        self.projection = nn.Conv2d(in_channels, embed_dims, kernel_size, stride=stride, padding=padding, bias=True)
        self.norm = _layer_norm(norm_cfg, embed_dims) if norm_cfg is not None else None

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = self.projection(x)
        hw_shape = (x.shape[2], x.shape[3])
        x = nchw_to_nlc(x)
        if self.norm is not None:
            x = self.norm(x)
        return x, hw_shape


class MixFFN(nn.Module):
    """1×1 conv → 3×3 depthwise conv (positional information) → act → 1×1 conv, on the token map."""

    def __init__(self, embed_dims: int, feedforward_channels: int, act_cfg: Dict[str, Any], ffn_drop: float,
                 drop_path: float):
        super().__init__()
        fc1 = nn.Conv2d(embed_dims, feedforward_channels, 1, bias=True)
        pe_conv = nn.Conv2d(feedforward_channels, feedforward_channels, 3, padding=1, bias=True,
                            groups=feedforward_channels)
        fc2 = nn.Conv2d(feedforward_channels, embed_dims, 1, bias=True)
        drop = nn.Dropout(ffn_drop)
        # Same order as MMSeg so ``ffn.layers.{0,1,4}`` hold the weights.
        self.layers = nn.Sequential(fc1, pe_conv, build_activation_layer(act_cfg), drop, fc2, drop)
        self.dropout_layer = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int], identity: torch.Tensor) -> torch.Tensor:
        out = nchw_to_nlc(self.layers(nlc_to_nchw(x, hw_shape)))
        return identity + self.dropout_layer(out)


class EfficientMultiheadAttention(nn.Module):
    """Multi-head attention whose keys/values come from a map reduced ``sr_ratio``× by a strided conv."""

    def __init__(self, embed_dims: int, num_heads: int, attn_drop: float, proj_drop: float, drop_path: float,
                 qkv_bias: bool, norm_cfg: Dict[str, Any], sr_ratio: int):
        super().__init__()
        if embed_dims % num_heads:
            raise ConfigError(f"MixVisionTransformer: embed dims {embed_dims} not divisible by {num_heads} heads")
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=attn_drop, bias=qkv_bias, batch_first=True)
        self.proj_drop = nn.Dropout(proj_drop)
        self.dropout_layer = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(embed_dims, embed_dims, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = _layer_norm(norm_cfg, embed_dims)

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int], identity: torch.Tensor) -> torch.Tensor:
        x_kv = x
        if self.sr_ratio > 1:
            x_kv = self.norm(nchw_to_nlc(self.sr(nlc_to_nchw(x, hw_shape))))
        # need_weights=False lets torch use the fused attention kernel and skips averaging the weights.
        out = self.attn(query=x, key=x_kv, value=x_kv, need_weights=False)[0]
        return identity + self.dropout_layer(self.proj_drop(out))


class TransformerEncoderLayer(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))`` then ``x + ffn(norm2(x))``."""

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int, drop_rate: float,
                 attn_drop_rate: float, drop_path_rate: float, qkv_bias: bool, act_cfg: Dict[str, Any],
                 norm_cfg: Dict[str, Any], sr_ratio: int, with_cp: bool):
        super().__init__()
        self.norm1 = _layer_norm(norm_cfg, embed_dims)
        self.attn = EfficientMultiheadAttention(embed_dims, num_heads, attn_drop=attn_drop_rate, proj_drop=drop_rate,
                                                drop_path=drop_path_rate, qkv_bias=qkv_bias, norm_cfg=norm_cfg,
                                                sr_ratio=sr_ratio)
        self.norm2 = _layer_norm(norm_cfg, embed_dims)
        self.ffn = MixFFN(embed_dims, feedforward_channels, act_cfg=act_cfg, ffn_drop=drop_rate,
                          drop_path=drop_path_rate)
        self.with_cp = with_cp

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int]) -> torch.Tensor:
        def inner(x: torch.Tensor) -> torch.Tensor:
            x = self.attn(self.norm1(x), hw_shape, identity=x)
            return self.ffn(self.norm2(x), hw_shape, identity=x)

        if self.with_cp and x.requires_grad:
            return cp.checkpoint(inner, x, use_reentrant=False)
        return inner(x)


@BACKBONES.register()
class MixVisionTransformer(BaseBackbone):
    """SegFormer's hierarchical encoder (MMSeg arguments); returns a tuple of NCHW maps at strides 4/8/16/32.

    Stage ``i`` has ``embed_dims * num_heads[i]`` channels (MiT-B0: 32, 64, 160, 256). ``drop_path_rate`` grows
    linearly over all blocks. ``with_cp`` recomputes each block in backward to save memory.
    """

    def __init__(self, in_channels: int = 3, embed_dims: int = 32, num_stages: int = 4,
                 num_layers: Sequence[int] = (2, 2, 2, 2), num_heads: Sequence[int] = (1, 2, 5, 8),
                 patch_sizes: Sequence[int] = (7, 3, 3, 3), strides: Sequence[int] = (4, 2, 2, 2),
                 sr_ratios: Sequence[int] = (8, 4, 2, 1), out_indices: Sequence[int] = (0, 1, 2, 3),
                 mlp_ratio: int = 4, qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, act_cfg: Dict[str, Any] = dict(type="GELU"),
                 norm_cfg: Dict[str, Any] = dict(type="LN", eps=1e-6), pretrained: Optional[str] = None,
                 init_cfg: Optional[Dict[str, Any]] = None, with_cp: bool = False, norm_eval: bool = False):
        super().__init__(norm_eval=norm_eval, pretrained=pretrained, init_cfg=init_cfg)
        num_layers, num_heads = tuple(num_layers), tuple(num_heads)
        patch_sizes, strides, sr_ratios = tuple(patch_sizes), tuple(strides), tuple(sr_ratios)
        out_indices = (out_indices,) if isinstance(out_indices, int) else tuple(out_indices)
        lengths = {len(num_layers), len(num_heads), len(patch_sizes), len(strides), len(sr_ratios)}
        if lengths != {num_stages}:
            raise ConfigError(f"MixVisionTransformer: num_layers, num_heads, patch_sizes, strides and sr_ratios "
                              f"need {num_stages} entries each (num_stages)")
        if not out_indices or not all(0 <= i < num_stages for i in out_indices):
            raise ConfigError(f"MixVisionTransformer: out_indices {out_indices} must lie in 0..{num_stages - 1}")
        self.out_indices = out_indices
        dpr = torch.linspace(0, drop_path_rate, sum(num_layers)).tolist()  # stochastic depth decay rule
        self.layers = nn.ModuleList()
        cur, dims = 0, in_channels
        for i, num_layer in enumerate(num_layers):
            dims_i = embed_dims * num_heads[i]
            patch_embed = PatchEmbed(dims, dims_i, kernel_size=patch_sizes[i], stride=strides[i],
                                     padding=patch_sizes[i] // 2, norm_cfg=norm_cfg)
            blocks = nn.ModuleList([
                TransformerEncoderLayer(dims_i, num_heads[i], mlp_ratio * dims_i, drop_rate=drop_rate,
                                        attn_drop_rate=attn_drop_rate, drop_path_rate=dpr[cur + j],
                                        qkv_bias=qkv_bias, act_cfg=act_cfg, norm_cfg=norm_cfg,
                                        sr_ratio=sr_ratios[i], with_cp=with_cp)
                for j in range(num_layer)])
            self.layers.append(nn.ModuleList([patch_embed, blocks, _layer_norm(norm_cfg, dims_i)]))
            dims, cur = dims_i, cur + num_layer
        self.out_channels = tuple(embed_dims * num_heads[i] for i in out_indices)
        self.init_weights()

    def _init_layers(self) -> None:
        """MMSeg's MiT init: trunc-normal Linear, unit LayerNorm, He-normal (fan_out) convs."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / fan_out))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        outs = []
        for i, (patch_embed, blocks, norm) in enumerate(self.layers):
            x, hw_shape = patch_embed(x)
            for block in blocks:
                x = block(x, hw_shape)
            x = nlc_to_nchw(norm(x), hw_shape)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)
