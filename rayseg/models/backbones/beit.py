"""BEiT backbone, as MMSegmentation 1.x's ``BEiT`` (UPerNet-BEiT with the ``Feature2Pyramid`` neck).

A plain ViT whose attention adds a learned relative position bias (one table per layer, with three extra rows
for the class token) and whose two residual branches are scaled by learned ``gamma_1`` / ``gamma_2`` (layer
scale, ``init_values``). Parameter names follow MMSeg so its checkpoints load: ``cls_token``,
``patch_embed.projection`` (``.norm`` with ``patch_norm``), ``layers.{i}`` with ``ln1``, ``attn.{q_bias, v_bias,
relative_position_bias_table, relative_position_index, qkv, proj}``, ``ln2``, ``ffn.layers.0.0``/``ffn.layers.1``,
``gamma_1``, ``gamma_2``, and the final ``ln1`` (``final_norm``).

Sizes (embed_dims / num_layers / num_heads): base 768/12/12, large 1024/24/16; patch 16, ``img_size`` 640 in
MMSeg's ADE20K configs. The bias table covers the ``img_size // patch_size`` grid: MMSeg's BEiT only runs at that
size (its configs infer with sliding ``img_size`` windows); here a smaller grid uses the table's entries for
its offsets (identical at the full grid), a larger one is refused.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import StochasticDepth

from rayseg.errors import CheckpointError, ConfigError
from rayseg.models.backbones.base import BaseBackbone
from rayseg.models.backbones.vit import ViTPatchEmbed
from rayseg.models.utils import build_activation_layer, build_norm_layer
from rayseg.registry import BACKBONES


def relative_position_index(h: Any, w: Any, wh: int, ww: int, device: Any = None) -> torch.Tensor:
    """MMSeg's BEiT index into a table built for a ``wh``×``ww`` window, for an ``h``×``w`` token grid (h ≤ wh,
    w ≤ ww) plus the class token: (1 + h*w, 1 + h*w). Token pair (a, b) → (c, d) reads row
    ``(a - c + wh - 1) * (2ww - 1) + (b - d + ww - 1)``; the last three rows are token→cls, cls→token, cls→cls.
    Built from ``arange`` so a traced graph keeps ``h`` and ``w`` symbolic."""
    num_distance = (2 * wh - 1) * (2 * ww - 1) + 3
    ys = torch.arange(h, device=device)[:, None].expand(h, w).reshape(-1)
    xs = torch.arange(w, device=device)[None, :].expand(h, w).reshape(-1)
    inner = (ys[:, None] - ys[None, :] + wh - 1) * (2 * ww - 1) + (xs[:, None] - xs[None, :] + ww - 1)
    n = inner.shape[0]
    top = torch.full((1, n), num_distance - 3, dtype=inner.dtype, device=device)
    left = torch.full((n + 1, 1), num_distance - 2, dtype=inner.dtype, device=device)
    index = torch.cat((left, torch.cat((top, inner), dim=0)), dim=1)
    corner = torch.zeros_like(index)
    corner[0, 0] = 1
    return torch.where(corner.bool(), torch.full_like(index, num_distance - 1), index)


class BEiTAttention(nn.Module):
    """Multi-head self-attention over class token + patch tokens with a relative position bias per head.
    ``bias='qv_bias'``: learned ``q_bias`` and ``v_bias`` (the key has none), as BEiT; True: a plain qkv bias."""

    def __init__(self, embed_dims: int, num_heads: int, window_size: Tuple[int, int], bias: Any,
                 attn_drop_rate: float, proj_drop_rate: float):
        super().__init__()
        self.embed_dims, self.num_heads, self.bias = embed_dims, num_heads, bias
        self.scale = (embed_dims // num_heads) ** -0.5
        if bias == "qv_bias":
            self.q_bias = nn.Parameter(torch.zeros(embed_dims))
            self.v_bias = nn.Parameter(torch.zeros(embed_dims))
        self.window_size = window_size
        wh, ww = window_size
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * wh - 1) * (2 * ww - 1) + 3, num_heads))
        # A persistent buffer in MMSeg (so in its checkpoints); built on the CPU for meta-device builds.
        self.register_buffer("relative_position_index", relative_position_index(wh, ww, wh, ww, device="cpu"))
        self.qkv = nn.Linear(embed_dims, embed_dims * 3, bias=bias is True)
        self.attn_drop = nn.Dropout(attn_drop_rate)
        self.proj = nn.Linear(embed_dims, embed_dims)
        self.proj_drop = nn.Dropout(proj_drop_rate)

    def _bias(self, hw_shape: Tuple[int, int], n: int) -> torch.Tensor:
        wh, ww = self.window_size
        if torch.jit.is_tracing() or tuple(hw_shape) != (wh, ww):
            index = relative_position_index(hw_shape[0], hw_shape[1], wh, ww, device=self.qkv.weight.device)
        else:
            index = self.relative_position_index
        bias = self.relative_position_bias_table[index.reshape(-1)].view(n, n, -1)
        return bias.permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        if self.bias == "qv_bias":
            qkv_bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
            qkv = F.linear(x, self.qkv.weight, qkv_bias)
        else:
            qkv = self.qkv(x)
        qkv = qkv.reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1) + self._bias(hw_shape, n)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = (attn @ v).transpose(1, 2).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class BEiTFFN(nn.Module):
    """mmcv's ``FFN`` without its identity: ``layers.0.0`` Linear → act → drop, ``layers.1`` Linear → drop."""

    def __init__(self, embed_dims: int, feedforward_channels: int, act_cfg: Dict[str, Any]):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Sequential(nn.Linear(embed_dims, feedforward_channels), build_activation_layer(act_cfg),
                          nn.Dropout(0.0)),
            nn.Linear(feedforward_channels, embed_dims), nn.Dropout(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class BEiTLayer(nn.Module):
    """``x + drop_path(gamma_1 * attn(ln1(x)))`` then ``x + drop_path(gamma_2 * ffn(ln2(x)))``."""

    def __init__(self, embed_dims: int, num_heads: int, feedforward_channels: int, attn_drop_rate: float,
                 drop_path_rate: float, bias: Any, act_cfg: Dict[str, Any], norm_cfg: Dict[str, Any],
                 window_size: Tuple[int, int], init_values: float):
        super().__init__()
        self.ln1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.attn = BEiTAttention(embed_dims, num_heads, window_size, bias, attn_drop_rate, 0.0)
        self.ln2 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.ffn = BEiTFFN(embed_dims, feedforward_channels, act_cfg)
        self.drop_path = StochasticDepth(drop_path_rate, "row") if drop_path_rate > 0 else nn.Identity()
        self.gamma_1 = nn.Parameter(init_values * torch.ones(embed_dims))
        self.gamma_2 = nn.Parameter(init_values * torch.ones(embed_dims))

    def forward(self, x: torch.Tensor, hw_shape: Tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.gamma_1 * self.attn(self.ln1(x), hw_shape))
        return x + self.drop_path(self.gamma_2 * self.ffn(self.ln2(x)))


def geometric_sequence_interpolation(src_size: int, dst_size: int, table: torch.Tensor) -> torch.Tensor:
    """MMSeg's ``BEiT._geometric_sequence_interpolation``: a ``(src_size², heads)`` relative position bias table
    resampled to ``(dst_size², heads)`` by bicubic interpolation on offsets that grow geometrically away from the
    centre (the centre keeps its spacing, the edges stretch). MMSeg calls scipy's ``interp2d(kind='cubic')``,
    gone from scipy 1.14; on a grid that is the same spline as ``RectBivariateSpline(kx=ky=3, s=0)``, evaluated
    at coordinates clamped to the source range (interp2d's nearest extrapolation)."""
    from scipy.interpolate import RectBivariateSpline  # only a pretrained BEiT of another size needs scipy

    def geometric_progression(a: float, r: float, n: int) -> float:
        return a * (1.0 - r ** n) / (1.0 - r)

    left, right = 1.01, 1.5  # bisection for the ratio whose src_size // 2 steps span dst_size // 2
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if geometric_progression(1, q, src_size // 2) > dst_size // 2:
            right = q
        else:
            left = q
    dis, cur = [], 1.0
    for i in range(src_size // 2):
        dis.append(cur)
        cur += q ** (i + 1)
    coords = np.array([-d for d in reversed(dis)] + [0] + dis)
    t = dst_size // 2.0
    dst = np.clip(np.arange(-t, t + 0.1, 1.0), coords[0], coords[-1])
    columns = []
    for i in range(table.shape[1]):
        z = table[:, i].view(src_size, src_size).float().numpy()
        spline = RectBivariateSpline(coords, coords, z, kx=3, ky=3, s=0)  # z[row=y, col=x], as interp2d's
        columns.append(torch.as_tensor(spline(dst, dst), dtype=torch.float32).reshape(-1, 1))
    return torch.cat(columns, dim=-1).to(table)


@BACKBONES.register()
class BEiT(BaseBackbone):
    """BEiT (MMSeg arguments): one stride-``patch_size`` token map; returns the layers in ``out_indices``
    (``-1``: the last) as NCHW maps of ``embed_dims`` channels, class token removed.

    ``img_size`` sizes the relative position tables (its ``// patch_size`` grid is the largest the model takes).
    ``qv_bias``: learned query and value biases. ``init_values``: the initial layer scale. ``final_norm``
    applies ``ln1`` after the last layer. ``norm_eval`` keeps the LayerNorms in eval mode, as MMSeg.
    """

    def __init__(self, img_size: Any = 224, patch_size: int = 16, in_channels: int = 3, embed_dims: int = 768,
                 num_layers: int = 12, num_heads: int = 12, mlp_ratio: int = 4, out_indices: Any = -1,
                 qv_bias: bool = True, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 norm_cfg: Dict[str, Any] = dict(type="LN"), act_cfg: Dict[str, Any] = dict(type="GELU"),
                 patch_norm: bool = False, final_norm: bool = False, num_fcs: int = 2, norm_eval: bool = False,
                 pretrained: Optional[str] = None, init_values: float = 0.1,
                 init_cfg: Optional[Dict[str, Any]] = None):
        super().__init__(norm_eval=norm_eval, pretrained=pretrained, init_cfg=init_cfg)
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if len(img_size) == 1:
            img_size = (img_size[0], img_size[0])
        if len(img_size) != 2:
            raise ConfigError(f"BEiT: img_size must be an int or (h, w), got {img_size!r}")
        if num_fcs != 2:
            raise ConfigError(f"BEiT: num_fcs must be 2 (MMSeg's BEiT configs), got {num_fcs}")
        if not isinstance(norm_cfg, dict) or norm_cfg.get("type") != "LN":
            raise ConfigError(f"BEiT: norm_cfg must have type 'LN', got {norm_cfg!r}")
        if embed_dims % num_heads:
            raise ConfigError(f"BEiT: embed_dims {embed_dims} not divisible by {num_heads} heads")
        if init_values is None:
            raise ConfigError("BEiT: init_values (the initial layer scale) must be a number")
        if isinstance(out_indices, int):
            out_indices = (num_layers - 1 if out_indices == -1 else out_indices,)
        out_indices = tuple(out_indices)
        if not out_indices or not all(0 <= i < num_layers for i in out_indices):
            raise ConfigError(f"BEiT: out_indices {out_indices} must lie in 0..{num_layers - 1}")
        self.img_size, self.patch_size, self.out_indices = img_size, patch_size, out_indices
        self.window_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dims))
        self.patch_embed = ViTPatchEmbed(in_channels, embed_dims, patch_size, 0, True,
                                         norm_cfg if patch_norm else None)
        # (on the CPU: a model built under `with torch.device("meta")` still needs the rates as numbers)
        dpr = torch.linspace(0, drop_path_rate, num_layers, device="cpu").tolist()  # stochastic depth decay
        self.layers = nn.ModuleList([
            BEiTLayer(embed_dims, num_heads, mlp_ratio * embed_dims, attn_drop_rate, dpr[i],
                      "qv_bias" if qv_bias else False, act_cfg, norm_cfg, self.window_size, float(init_values))
            for i in range(num_layers)])
        self.final_norm = final_norm
        if final_norm:
            self.ln1 = build_norm_layer(norm_cfg, embed_dims)[1]
        self.out_channels = (embed_dims,) * len(out_indices)
        self.init_weights()

    def _init_layers(self) -> None:
        """MMSeg's BEiT init from scratch: trunc-normal(0.02) class token and Linear weights (FFN biases
        ~N(0, 1e-6), others 0), Kaiming (fan_in) convs, unit LayerNorm; bias tables, q/v biases stay 0 and
        ``gamma`` keeps ``init_values``."""
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    if "ffn" in name:
                        nn.init.normal_(m.bias, mean=0.0, std=1e-6)
                    else:
                        nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def adapt_pretrained_state(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """As MMSeg's ``BEiT.resize_rel_pos_embed`` on load: the ``relative_position_index`` buffers are dropped
        (each model builds its own) and bias tables of another grid (BEiT's 224² release, 14×14) are resampled
        to this model's (640²: 40×40) by ``geometric_sequence_interpolation``; the three class-token rows stay."""
        own = self.state_dict()
        for key in list(state):
            if "relative_position_index" in key:
                state.pop(key)
            elif "relative_position_bias_table" in key and key in own:
                table = state[key]
                dst_num_pos = own[key].shape[0]
                if self.window_size[0] != self.window_size[1]:
                    raise CheckpointError(f"BEiT: resizing {key} needs a square token grid, got {self.window_size}")
                extra = dst_num_pos - (2 * self.window_size[0] - 1) * (2 * self.window_size[1] - 1)
                src_size = int((table.shape[0] - extra) ** 0.5)
                dst_size = int((dst_num_pos - extra) ** 0.5)
                if src_size != dst_size:
                    resized = geometric_sequence_interpolation(src_size, dst_size, table[:-extra])
                    state[key] = torch.cat((resized, table[-extra:]), dim=0)
        return state

    def train(self, mode: bool = True) -> "BEiT":
        super().train(mode)
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.LayerNorm):
                    m.eval()
        return self

    def forward(self, inputs: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        x, hw_shape = self.patch_embed(inputs)
        if not torch.jit.is_tracing() and (hw_shape[0] > self.window_size[0] or hw_shape[1] > self.window_size[1]):
            raise ConfigError(f"BEiT: a {tuple(inputs.shape[-2:])} input gives a {hw_shape} token grid, larger "
                              f"than the {self.window_size} grid of img_size {self.img_size}; infer with "
                              f"test_cfg mode 'slide' and crop_size {self.img_size}")
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        outs = []
        for i, layer in enumerate(self.layers):
            x = layer(x, hw_shape)
            if i == len(self.layers) - 1 and self.final_norm:
                x = self.ln1(x)
            if i in self.out_indices:
                out = x[:, 1:]
                b, _, c = out.shape
                outs.append(out.reshape(b, hw_shape[0], hw_shape[1], c).permute(0, 3, 1, 2).contiguous())
        return tuple(outs)
