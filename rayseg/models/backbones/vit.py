"""Vision Transformer (ViT) backbone, as MMSegmentation 1.x's ``VisionTransformer`` (SETR, UPerNet-ViT).

Parameter names follow MMSeg so its checkpoints and timm/DeiT weights converted by
``jobs/convert_weights.py --kind vit`` load: ``patch_embed.projection`` (and ``.norm`` with ``patch_norm``),
``cls_token``, ``pos_embed`` (always ``1 + patches`` long, the class token's slot included), ``ln_pre``
(``pre_norm``), ``layers.{i}`` with ``ln1``, ``attn.attn`` (a ``torch.nn.MultiheadAttention``: ``in_proj_*``,
``out_proj``, as mmcv's wrapper keeps it), ``ln2``, ``ffn.layers.0.0``/``ffn.layers.1``, and the final ``ln1``
(``final_norm``).

ViT sizes (embed_dims / num_layers / num_heads): B-16 768/12/12, L-16 1024/24/16 (SETR uses L-16 at 768²).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp

from rayseg.errors import CheckpointError, ConfigError
from rayseg.models.backbones.base import BaseBackbone
from rayseg.models.backbones.swin import SwinFFN, _pad_corner
from rayseg.models.utils import build_norm_layer, resize
from rayseg.registry import BACKBONES


class ViTPatchEmbed(nn.Module):
    """``patch_size`` conv on the (corner-padded) image, tokens out, optional LayerNorm."""

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int, padding: Any, bias: bool,
                 norm_cfg: Optional[Dict[str, Any]]):
        super().__init__()
        if padding not in ("corner", 0, None):
            raise ConfigError(f"VisionTransformer: patch_pad must be 'corner' or 0, got {padding!r}")
        self.patch_size, self.corner = patch_size, padding == "corner"
        self.projection = nn.Conv2d(in_channels, embed_dims, patch_size, stride=patch_size, bias=bias)
        self.norm = build_norm_layer(norm_cfg, embed_dims)[1] if norm_cfg is not None else None

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        if self.corner:
            x = _pad_corner(x, self.patch_size)
        x = self.projection(x)
        hw_shape = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        if self.norm is not None:
            x = self.norm(x)
        return x, hw_shape


class MultiheadAttentionBlock(nn.Module):
    """mmcv's ``MultiheadAttention`` (batch first): ``identity + proj_drop(attn(x))`` — no drop path here,
    as in MMSeg's ViT, whose stochastic depth is on the FFN branch only."""

    def __init__(self, embed_dims: int, num_heads: int, attn_drop: float, proj_drop: float, qkv_bias: bool):
        super().__init__()
        self.attn = nn.MultiheadAttention(embed_dims, num_heads, dropout=attn_drop, bias=qkv_bias,
                                          batch_first=True)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        return identity + self.proj_drop(self.attn(x, x, x, need_weights=False)[0])


class ViTEncoderLayer(nn.Module):
    """Pre-norm block: ``x + attn(ln1(x))`` then ``x + ffn(ln2(x))``."""

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int, drop_rate: float,
                 attn_drop_rate: float, drop_path_rate: float, qkv_bias: bool, act_cfg: Dict[str, Any],
                 norm_cfg: Dict[str, Any], with_cp: bool):
        super().__init__()
        self.ln1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.attn = MultiheadAttentionBlock(embed_dims, num_heads, attn_drop_rate, drop_rate, qkv_bias)
        self.ln2 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.ffn = SwinFFN(embed_dims, feedforward_channels, act_cfg, drop_rate, drop_path_rate)
        self.with_cp = with_cp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def inner(x: torch.Tensor) -> torch.Tensor:
            x = self.attn(self.ln1(x), identity=x)
            return self.ffn(self.ln2(x), identity=x)

        if self.with_cp and x.requires_grad:
            return cp.checkpoint(inner, x, use_reentrant=False)
        return inner(x)


@BACKBONES.register()
class VisionTransformer(BaseBackbone):
    """Plain ViT (MMSeg arguments): one stride-``patch_size`` token map; returns the layers in ``out_indices``
    (``-1``: the last) as NCHW maps of ``embed_dims`` channels, class token removed.

    ``img_size`` sizes ``pos_embed``; other input sizes interpolate it (``interpolate_mode``) to the token grid.
    ``with_cls_token: false`` drops the class token before the layers (its ``pos_embed`` slot stays).
    ``final_norm`` applies ``ln1`` after the last layer; ``out_origin`` also returns the embedded input first.
    ``norm_eval`` keeps the LayerNorms in eval mode (as MMSeg; they have no statistics, so it only matters for
    dropout-free parity). ``frozen_exclude``: parameter-name substrings left trainable; without ``'all'`` every
    other parameter is frozen.
    """

    def __init__(self, img_size: Any = 224, patch_size: int = 16, patch_pad: Any = "corner", in_channels: int = 3,
                 embed_dims: int = 768, num_layers: int = 12, num_heads: int = 12, mlp_ratio: int = 4,
                 out_origin: bool = False, out_indices: Any = -1, qkv_bias: bool = True, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0, with_cls_token: bool = True,
                 output_cls_token: bool = False, norm_cfg: Dict[str, Any] = dict(type="LN"),
                 act_cfg: Dict[str, Any] = dict(type="GELU"), patch_norm: bool = False, patch_bias: bool = False,
                 pre_norm: bool = False, final_norm: bool = False, interpolate_mode: str = "bicubic",
                 num_fcs: int = 2, norm_eval: bool = False, with_cp: bool = False,
                 frozen_exclude: Sequence[str] = ("all",), pretrained: Optional[str] = None,
                 init_cfg: Optional[Dict[str, Any]] = None):
        super().__init__(norm_eval=norm_eval, pretrained=pretrained, init_cfg=init_cfg)
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(img_size) == 1:
            img_size = (img_size[0], img_size[0])
        if output_cls_token:
            # Outputs would be [map, token] pairs, which no rayseg head takes.
            raise ConfigError("VisionTransformer: output_cls_token is not supported")
        if num_fcs != 2:
            raise ConfigError(f"VisionTransformer: num_fcs must be 2 (MMSeg's ViT configs), got {num_fcs}")
        if not isinstance(norm_cfg, dict) or norm_cfg.get("type") != "LN":
            raise ConfigError(f"VisionTransformer: norm_cfg must have type 'LN', got {norm_cfg!r}")
        if embed_dims % num_heads:
            raise ConfigError(f"VisionTransformer: embed_dims {embed_dims} not divisible by {num_heads} heads")
        if isinstance(out_indices, int):
            out_indices = (num_layers - 1 if out_indices == -1 else out_indices,)
        out_indices = tuple(out_indices)
        if not out_indices or not all(0 <= i < num_layers for i in out_indices):
            raise ConfigError(f"VisionTransformer: out_indices {out_indices} must lie in 0..{num_layers - 1}")
        self.img_size, self.patch_size, self.interpolate_mode = img_size, patch_size, interpolate_mode
        self.out_indices, self.out_origin, self.with_cls_token = out_indices, out_origin, with_cls_token
        self.frozen_exclude = list(frozen_exclude)
        self.patch_embed = ViTPatchEmbed(in_channels, embed_dims, patch_size, patch_pad, patch_bias,
                                         norm_cfg if patch_norm else None)
        num_patches = (img_size[0] // patch_size) * (img_size[1] // patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dims))
        self.drop_after_pos = nn.Dropout(p=drop_rate)
        self.pre_norm = pre_norm
        if pre_norm:
            self.ln_pre = build_norm_layer(norm_cfg, embed_dims)[1]
        # (on the CPU: a model built under `with torch.device("meta")` still needs the rates as numbers)
        dpr = torch.linspace(0, drop_path_rate, num_layers, device="cpu").tolist()  # stochastic depth decay
        self.layers = nn.ModuleList([
            ViTEncoderLayer(embed_dims, num_heads, mlp_ratio * embed_dims, drop_rate, attn_drop_rate, dpr[i],
                            qkv_bias, act_cfg, norm_cfg, with_cp)
            for i in range(num_layers)])
        self.final_norm = final_norm
        if final_norm:
            self.ln1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.out_channels = (embed_dims,) * (len(out_indices) + int(out_origin))
        self.init_weights()
        if "all" not in self.frozen_exclude:
            for name, param in self.named_parameters():
                if not any(exclude in name for exclude in self.frozen_exclude):
                    param.requires_grad = False

    def _init_layers(self) -> None:
        """MMSeg's ViT init from scratch: trunc-normal(0.02) tokens and Linear weights (FFN biases ~N(0, 1e-6),
        others 0), Kaiming (fan_in) convs, unit LayerNorm."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    if "ffn" in name:
                        nn.init.normal_(m.bias, mean=0.0, std=1e-6)
                    else:
                        nn.init.zeros_(m.bias)
            elif isinstance(m, nn.MultiheadAttention):
                nn.init.xavier_uniform_(m.in_proj_weight)
                if m.in_proj_bias is not None:
                    nn.init.zeros_(m.in_proj_bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def train(self, mode: bool = True) -> "VisionTransformer":
        super().train(mode)
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.LayerNorm):
                    m.eval()
        return self

    def adapt_pretrained_state(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """As MMSeg's ``VisionTransformer.init_weights``: a pretrained ``pos_embed`` of another grid (e.g. timm's
        ViT-L/16 at 384², 24×24) is resized to this model's ``img_size // patch_size`` grid before loading."""
        pos = state.get("pos_embed")
        if pos is not None and tuple(pos.shape) != tuple(self.pos_embed.shape):
            pos_size = int(math.sqrt(pos.shape[1] - 1))
            if pos.dim() != 3 or pos_size * pos_size + 1 != pos.shape[1]:
                raise CheckpointError(f"VisionTransformer: pretrained pos_embed {tuple(pos.shape)} is not a square "
                                      f"grid plus a class token")
            h, w = self.img_size
            state["pos_embed"] = self.resize_pos_embed(pos, (h // self.patch_size, w // self.patch_size),
                                                       (pos_size, pos_size), self.interpolate_mode)
        return state

    @staticmethod
    def resize_pos_embed(pos_embed: torch.Tensor, input_shape: Tuple[int, int], pos_shape: Tuple[int, int],
                         mode: str) -> torch.Tensor:
        """``pos_embed`` (1, 1 + h*w, C) on the ``pos_shape`` grid → (1, 1 + H*W, C) on ``input_shape``;
        the class token's slot is kept as is."""
        pos_h, pos_w = pos_shape
        cls_weight = pos_embed[:, :1]
        grid = pos_embed[:, -pos_h * pos_w:].reshape(1, pos_h, pos_w, pos_embed.shape[2]).permute(0, 3, 1, 2)
        grid = resize(grid, size=input_shape, align_corners=False, mode=mode)
        return torch.cat((cls_weight, grid.flatten(2).transpose(1, 2)), dim=1)

    def _pos_embedding(self, x: torch.Tensor, hw_shape: Tuple[int, int]) -> torch.Tensor:
        pos_embed = self.pos_embed
        # While tracing, always resize (the identity at the pretraining grid) so the graph stays dynamic.
        if x.shape[1] != pos_embed.shape[1] or torch.jit.is_tracing():
            pos_shape = (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)
            if pos_embed.shape[1] != pos_shape[0] * pos_shape[1] + 1:
                raise ConfigError(f"VisionTransformer: pos_embed has {pos_embed.shape[1]} positions, expected "
                                  f"{pos_shape[0] * pos_shape[1] + 1} for img_size {self.img_size}")
            pos_embed = self.resize_pos_embed(pos_embed, hw_shape, pos_shape, self.interpolate_mode)
        return self.drop_after_pos(x + pos_embed)

    def _to_map(self, x: torch.Tensor, hw_shape: Tuple[int, int]) -> torch.Tensor:
        out = x[:, 1:] if self.with_cls_token else x
        b, _, c = out.shape
        return out.reshape(b, hw_shape[0], hw_shape[1], c).permute(0, 3, 1, 2).contiguous()

    def forward(self, inputs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x, hw_shape = self.patch_embed(inputs)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        x = self._pos_embedding(x, hw_shape)
        if not self.with_cls_token:
            x = x[:, 1:]
        if self.pre_norm:
            x = self.ln_pre(x)
        outs = [self._to_map(x, hw_shape)] if self.out_origin else []
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i == len(self.layers) - 1 and self.final_norm:
                x = self.ln1(x)
            if i in self.out_indices:
                outs.append(self._to_map(x, hw_shape))
        return tuple(outs)

