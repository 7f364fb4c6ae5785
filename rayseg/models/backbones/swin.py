"""Swin Transformer backbone (shifted-window attention), as MMSegmentation 1.x's ``SwinTransformer``.

Parameter names follow MMSeg so its Swin checkpoints (UPerNet-Swin) and ImageNet Swin weights converted by
``jobs/convert_weights.py --kind swin`` load: ``patch_embed.projection``/``.norm``; ``stages.{i}.blocks.{j}``
with ``norm1``, ``attn.w_msa.{qkv,proj,relative_position_bias_table,relative_position_index}``, ``norm2``,
``ffn.layers.0.0``/``ffn.layers.1`` (mmcv's ``FFN``); ``stages.{i}.downsample.{norm,reduction}`` (patch merging,
channels in ``nn.Unfold`` order) and one output LayerNorm ``norm{i}`` per entry of ``out_indices``.

Swin sizes (embed_dims / depths / num_heads): T 96/(2,2,6,2)/(3,6,12,24), S 96/(2,2,18,2)/(3,6,12,24),
B 128/(2,2,18,2)/(4,8,16,32); window 7 (ImageNet-1k 224²) or 12 (ImageNet-22k 384²).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as cp

from rayseg.errors import ConfigError
from rayseg.models.backbones.base import BaseBackbone
from rayseg.models.backbones.mit import DropPath
from rayseg.models.utils import build_activation_layer, build_norm_layer
from rayseg.registry import BACKBONES


def _pad_corner(x: torch.Tensor, stride: int) -> torch.Tensor:
    """mmcv's ``AdaptivePadding(padding='corner')`` for a kernel equal to its stride: zero-pad bottom/right to
    whole multiples of ``stride``. Always padding (maybe by 0) keeps a traced graph's sizes symbolic."""
    h, w = x.shape[-2:]
    return F.pad(x, [0, (stride - w % stride) % stride, 0, (stride - h % stride) % stride])


class SwinPatchEmbed(nn.Module):
    """Non-overlapping patch embedding: corner padding, ``patch_size`` conv (``projection``), optional LN."""

    def __init__(self, in_channels: int, embed_dims: int, patch_size: int, norm_cfg: Optional[Dict[str, Any]]):
        super().__init__()
        self.patch_size = patch_size
        self.projection = nn.Conv2d(in_channels, embed_dims, patch_size, stride=patch_size)
        self.norm = build_norm_layer(norm_cfg, embed_dims)[1] if norm_cfg is not None else None

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        x = self.projection(_pad_corner(x, self.patch_size))
        hw_shape = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        if self.norm is not None:
            x = self.norm(x)
        return x, hw_shape


class PatchMerging(nn.Module):
    """Group ``stride``×``stride`` neighbours (channel-major, as ``nn.Unfold``), LayerNorm, linear reduction."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, norm_cfg: Optional[Dict[str, Any]]):
        super().__init__()
        self.stride = stride
        sample_dim = stride * stride * in_channels
        self.norm = build_norm_layer(norm_cfg, sample_dim)[1] if norm_cfg is not None else None
        self.reduction = nn.Linear(sample_dim, out_channels, bias=False)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int]) -> Tuple[torch.Tensor, Tuple[int, int]]:
        b, _, c = x.shape
        s = self.stride
        x = x.transpose(1, 2).reshape(b, c, hw_shape[0], hw_shape[1])
        x = _pad_corner(x, s)
        h, w = x.shape[2] // s, x.shape[3] // s
        # nn.Unfold with kernel == stride, written as a reshape (exports to ONNX without im2col): feature
        # index c*s*s + i*s + j holds channel c at offset (i, j) of the window.
        x = x.reshape(b, c, h, s, w, s).permute(0, 2, 4, 1, 3, 5).reshape(b, h * w, c * s * s)
        if self.norm is not None:
            x = self.norm(x)
        return self.reduction(x), (h, w)


class WindowMSA(nn.Module):
    """Multi-head self-attention inside each window, with a learned relative position bias per head."""

    def __init__(self, embed_dims: int, num_heads: int, window_size: int, qkv_bias: bool,
                 qk_scale: Optional[float], attn_drop_rate: float, proj_drop_rate: float):
        super().__init__()
        self.window_size, self.num_heads = window_size, num_heads
        self.scale = qk_scale or (embed_dims // num_heads) ** -0.5
        ws = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * ws - 1) ** 2, num_heads))
        # MMSeg's index (a persistent buffer, so it is in its checkpoints): for query (a, b) and key (c, d),
        # row (a - c + ws - 1) * (2ws - 1) + (b - d + ws - 1) of the table.
        seq = (torch.arange(0, (2 * ws - 1) * ws, 2 * ws - 1)[:, None] + torch.arange(ws)[None, :]).reshape(1, -1)
        self.register_buffer("relative_position_index", (seq + seq.T).flip(1).contiguous())
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop_rate)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)].view(n, n, -1)
        attn = attn + bias.permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b // nw, nw, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, n, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


def _window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, H, W, C) → (B * windows, ws * ws, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def _window_reverse(windows: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """(B * windows, ws * ws, C) → (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


class ShiftWindowMSA(nn.Module):
    """Pad to whole windows, cyclically shift by ``shift_size`` (masking pairs that were not neighbours),
    attend within windows, shift back and crop."""

    def __init__(self, embed_dims: int, num_heads: int, window_size: int, shift_size: int, qkv_bias: bool,
                 qk_scale: Optional[float], attn_drop_rate: float, proj_drop_rate: float, drop_path: float):
        super().__init__()
        if not 0 <= shift_size < window_size:
            raise ConfigError(f"SwinTransformer: shift {shift_size} must lie in [0, window_size {window_size})")
        self.window_size, self.shift_size = window_size, shift_size
        self.w_msa = WindowMSA(embed_dims, num_heads, window_size, qkv_bias, qk_scale, attn_drop_rate,
                               proj_drop_rate)
        self.drop = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def _attn_mask(self, h_pad: Any, w_pad: Any, device: torch.device) -> torch.Tensor:
        """MMSeg's mask (-100 between tokens of different regions of the shifted map, else 0), built from
        ``arange`` comparisons rather than slice assignments so a traced graph keeps the size symbolic."""
        ws, s = self.window_size, self.shift_size

        def regions(n: Any) -> torch.Tensor:
            # 0 before the last window, 1 in the last window but before the shift, 2 in the shifted strip.
            idx = torch.arange(n, device=device)
            return (idx >= n - ws).long() + (idx >= n - s).long()

        img_mask = (regions(h_pad)[:, None] * 3 + regions(w_pad)[None, :]).float()
        mask_windows = _window_partition(img_mask[None, :, :, None], ws).squeeze(-1)
        attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
        return attn_mask.masked_fill(attn_mask != 0, -100.0).masked_fill(attn_mask == 0, 0.0)

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int]) -> torch.Tensor:
        b, length, c = x.shape
        h, w = hw_shape
        ws, s = self.window_size, self.shift_size
        x = x.view(b, h, w, c)
        pad_r, pad_b = (ws - w % ws) % ws, (ws - h % ws) % ws
        x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        h_pad, w_pad = x.shape[1], x.shape[2]
        attn_mask = None
        if s > 0:
            x = torch.roll(x, shifts=(-s, -s), dims=(1, 2))
            attn_mask = self._attn_mask(h_pad, w_pad, x.device)
        out = self.w_msa(_window_partition(x, ws), mask=attn_mask)
        x = _window_reverse(out, ws, h_pad, w_pad)
        if s > 0:
            x = torch.roll(x, shifts=(s, s), dims=(1, 2))
        x = x[:, :h, :w, :].reshape(b, h * w, c)
        return self.drop(x)


class SwinFFN(nn.Module):
    """mmcv's ``FFN`` (two layers): ``layers.0.0`` Linear → act → drop, ``layers.1`` Linear → drop; residual."""

    def __init__(self, embed_dims: int, feedforward_channels: int, act_cfg: Dict[str, Any], ffn_drop: float,
                 drop_path: float):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, feedforward_channels), build_activation_layer(act_cfg),
                          nn.Dropout(ffn_drop)),
            nn.Linear(feedforward_channels, embed_dims), nn.Dropout(ffn_drop))
        self.dropout_layer = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        return identity + self.dropout_layer(self.layers(x))


class SwinBlock(nn.Module):
    """``x + attn(norm1(x))`` then ``x + ffn(norm2(x))``; odd blocks of a stage use shifted windows."""

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int, window_size: int, shift: bool,
                 qkv_bias: bool, qk_scale: Optional[float], drop_rate: float, attn_drop_rate: float,
                 drop_path_rate: float, act_cfg: Dict[str, Any], norm_cfg: Dict[str, Any], with_cp: bool):
        super().__init__()
        self.with_cp = with_cp
        self.norm1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.attn = ShiftWindowMSA(embed_dims, num_heads, window_size, window_size // 2 if shift else 0,
                                   qkv_bias, qk_scale, attn_drop_rate, drop_rate, drop_path_rate)
        self.norm2 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.ffn = SwinFFN(embed_dims, feedforward_channels, act_cfg, drop_rate, drop_path_rate)

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int]) -> torch.Tensor:
        def inner(x: torch.Tensor) -> torch.Tensor:
            x = x + self.attn(self.norm1(x), hw_shape)
            return self.ffn(self.norm2(x), identity=x)

        if self.with_cp and x.requires_grad:
            return cp.checkpoint(inner, x, use_reentrant=False)
        return inner(x)


class SwinBlockSequence(nn.Module):
    """One stage: ``blocks`` then an optional ``downsample`` (patch merging) for the next stage."""

    def __init__(self, blocks: List[SwinBlock], downsample: Optional[PatchMerging]):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int]):
        for block in self.blocks:
            x = block(x, hw_shape)
        if self.downsample is not None:
            x_down, down_hw = self.downsample(x, hw_shape)
            return x_down, down_hw, x, hw_shape
        return x, hw_shape, x, hw_shape


@BACKBONES.register()
class SwinTransformer(BaseBackbone):
    """Swin Transformer (MMSeg arguments); returns NCHW maps of stages ``out_indices`` (strides 4/8/16/32 and
    ``embed_dims * 2**i`` channels by default), each through its own output LayerNorm ``norm{i}``.

    ``pretrain_img_size`` only sizes ``absolute_pos_embed`` (``use_abs_pos_embed``, off in all released
    models). ``frozen_stages`` freezes the patch embedding and that many stages; ``with_cp`` recomputes each
    block in backward.
    """

    def __init__(self, pretrain_img_size: Any = 224, in_channels: int = 3, embed_dims: int = 96,
                 patch_size: int = 4, window_size: int = 7, mlp_ratio: float = 4,
                 depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                 strides: Sequence[int] = (4, 2, 2, 2), out_indices: Sequence[int] = (0, 1, 2, 3),
                 qkv_bias: bool = True, qk_scale: Optional[float] = None, patch_norm: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 use_abs_pos_embed: bool = False, act_cfg: Dict[str, Any] = dict(type="GELU"),
                 norm_cfg: Dict[str, Any] = dict(type="LN"), with_cp: bool = False,
                 pretrained: Optional[str] = None, frozen_stages: int = -1,
                 init_cfg: Optional[Dict[str, Any]] = None, norm_eval: bool = False):
        super().__init__(norm_eval=norm_eval, pretrained=pretrained, init_cfg=init_cfg)
        depths, num_heads, strides = tuple(depths), tuple(num_heads), tuple(strides)
        out_indices = (out_indices,) if isinstance(out_indices, int) else tuple(out_indices)
        num_stages = len(depths)
        if len(num_heads) != num_stages or len(strides) != num_stages:
            raise ConfigError(f"SwinTransformer: depths {depths}, num_heads {num_heads} and strides {strides} "
                              f"need the same length")
        if strides[0] != patch_size:
            raise ConfigError(f"SwinTransformer: strides[0] ({strides[0]}) must equal patch_size ({patch_size}): "
                              f"the patch embedding does not overlap")
        if any(stride != 2 for stride in strides[1:]):
            # MMSeg's patch merging unfolds 2×2 windows whatever the stride; only stride 2 tiles them.
            raise ConfigError(f"SwinTransformer: strides {strides}: the patch-merging strides (after the first) "
                              f"must be 2")
        if not out_indices or not all(0 <= i < num_stages for i in out_indices):
            raise ConfigError(f"SwinTransformer: out_indices {out_indices} must lie in 0..{num_stages - 1}")
        if not isinstance(norm_cfg, dict) or norm_cfg.get("type") != "LN":
            raise ConfigError(f"SwinTransformer: norm_cfg must have type 'LN', got {norm_cfg!r}")
        for i, heads in enumerate(num_heads):
            if (embed_dims * 2 ** i) % heads:
                raise ConfigError(f"SwinTransformer: stage {i} width {embed_dims * 2 ** i} is not divisible by "
                                  f"{heads} heads")
        self.out_indices, self.frozen_stages = out_indices, frozen_stages
        self.use_abs_pos_embed = use_abs_pos_embed
        patch_cfg = norm_cfg if patch_norm else None
        self.patch_embed = SwinPatchEmbed(in_channels, embed_dims, patch_size, patch_cfg)
        if use_abs_pos_embed:
            size = (pretrain_img_size,) * 2 if isinstance(pretrain_img_size, int) else tuple(pretrain_img_size)
            num_patches = (size[0] // patch_size) * (size[-1] // patch_size)
            self.absolute_pos_embed = nn.Parameter(torch.zeros((1, num_patches, embed_dims)))
        self.drop_after_pos = nn.Dropout(p=drop_rate)
        # (on the CPU: a model built under `with torch.device("meta")` still needs the rates as numbers)
        dpr = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()  # stochastic depth decay
        self.stages = nn.ModuleList()
        dims = embed_dims
        for i, depth in enumerate(depths):
            start = sum(depths[:i])
            blocks = [SwinBlock(dims, num_heads[i], int(mlp_ratio * dims), window_size, shift=j % 2 == 1,
                                qkv_bias=qkv_bias, qk_scale=qk_scale, drop_rate=drop_rate,
                                attn_drop_rate=attn_drop_rate, drop_path_rate=dpr[start + j], act_cfg=act_cfg,
                                norm_cfg=norm_cfg, with_cp=with_cp)
                      for j in range(depth)]
            downsample = (PatchMerging(dims, 2 * dims, strides[i + 1], patch_cfg) if i < num_stages - 1 else None)
            self.stages.append(SwinBlockSequence(blocks, downsample))
            if downsample is not None:
                dims = downsample.out_channels
        self.num_features = [int(embed_dims * 2 ** i) for i in range(num_stages)]
        for i in out_indices:
            self.add_module(f"norm{i}", build_norm_layer(norm_cfg, self.num_features[i])[1])
        self.out_channels = tuple(self.num_features[i] for i in out_indices)
        self.init_weights()

    def _init_layers(self) -> None:
        """MMSeg's Swin init from scratch: trunc-normal(0.02) Linear and position tables, unit LayerNorm."""
        if self.use_abs_pos_embed:
            nn.init.trunc_normal_(self.absolute_pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, WindowMSA):
                nn.init.trunc_normal_(m.relative_position_bias_table, std=0.02)

    def adapt_pretrained_state(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """As MMSeg's ``SwinTransformer.init_weights``: a ``backbone.`` prefix is dropped and bias tables of
        another window size are resized (bicubic, per head) to this model's."""
        state = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in state.items()}
        own = self.state_dict()
        for key in [k for k in state if "relative_position_bias_table" in k and k in own]:
            (l1, h1), (l2, h2) = state[key].shape, own[key].shape
            if h1 == h2 and l1 != l2:
                s1, s2 = int(l1 ** 0.5), int(l2 ** 0.5)
                table = state[key].permute(1, 0).reshape(1, h1, s1, s1)
                state[key] = F.interpolate(table, size=(s2, s2), mode="bicubic").view(h2, l2).permute(1, 0).contiguous()
        return state

    def _freeze_stages(self) -> None:
        if self.frozen_stages >= 0:
            self._freeze(self.patch_embed, self.drop_after_pos)
            if self.use_abs_pos_embed:
                self.absolute_pos_embed.requires_grad = False
        for i in range(1, self.frozen_stages + 1):
            if (i - 1) in self.out_indices:
                self._freeze(getattr(self, f"norm{i - 1}"))
            self._freeze(self.stages[i - 1])

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x, hw_shape = self.patch_embed(x)
        if self.use_abs_pos_embed:
            x = x + self.absolute_pos_embed
        x = self.drop_after_pos(x)
        outs = []
        for i, stage in enumerate(self.stages):
            x, hw_shape, out, out_hw = stage(x, hw_shape)
            if i in self.out_indices:
                out = getattr(self, f"norm{i}")(out)
                outs.append(out.view(-1, out_hw[0], out_hw[1], self.num_features[i]).permute(0, 3, 1, 2)
                            .contiguous())
        return tuple(outs)
