"""Rewrites that make a segmentor traceable for export, without changing its outputs.

- :func:`revert_sync_batchnorm`: SyncBatchNorm (torch's, or rayseg's CPU one) → BatchNorm2d with the same
  statistics; in eval mode they compute the same thing, and an exported graph has no process group.
- :class:`ExportableAdaptiveAvgPool2d`: ONNX has no adaptive pooling; torch's exporter only handles
  output sizes that divide the input (PSP's 1/2/3/6 bins do not at most sizes). This computes the same
  bins as two matrix products whose matrices are built from the input size, so it also exports with
  dynamic shapes.
- :func:`export_patches`: while tracing, keep resize sizes symbolic (``rayseg.models.utils.resize``
  and ``Upsample`` turn them into Python ints, which would bake the example's size into a dynamic
  graph) and keep ``nn.MultiheadAttention`` off its fused fast path
  (``aten::_native_multi_head_attention`` has no ONNX translation).
- :class:`ExportableMultiheadAttention`: attention in plain tensor operations, as torch's exporter
  traces ``nn.MultiheadAttention`` with its key length fixed (a dynamic graph fails at other sizes).
"""
from __future__ import annotations

import contextlib
import copy
import sys
from typing import Iterator, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

_SizeArg = Union[int, None, Sequence[Optional[int]]]


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """``module`` with every synchronised BatchNorm replaced by a ``BatchNorm2d`` holding the same
    parameters and running statistics (in place for children; returns the possibly new root)."""
    from rayseg.engine.sync_bn import CPUSyncBatchNorm

    if isinstance(module, (nn.SyncBatchNorm, CPUSyncBatchNorm)):
        out = nn.BatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats)
        out.load_state_dict(module.state_dict())
        return out.train(module.training)
    for name, child in module.named_children():
        new = revert_sync_batchnorm(child)
        if new is not child:
            setattr(module, name, new)
    return module


def _pool_matrix(index: torch.Tensor, bins: int) -> torch.Tensor:
    """(bins, n) averaging matrix of adaptive pooling along one axis, ``index`` being 0..n-1 (float).

    Bin i averages positions floor(i*n/bins) ≤ j < ceil((i+1)*n/bins), as torch's adaptive pooling.
    The quotients are exact in float32 for any realistic size (an integer quotient divides exactly,
    others stay far from an integer), so the bins match torch's.
    """
    n = index[-1:] + 1
    i = torch.arange(bins, dtype=index.dtype, device=index.device)
    start = torch.floor(i * n / bins)
    end = torch.ceil((i + 1) * n / bins)
    inside = (index[None, :] >= start[:, None]) & (index[None, :] < end[:, None])
    return inside.to(index.dtype) / (end - start)[:, None]


class ExportableAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d`` as matrix products: ``P_h @ x @ P_wᵀ`` (same bins, same averages)."""

    def __init__(self, output_size: _SizeArg):
        super().__init__()
        if isinstance(output_size, int) or output_size is None:
            output_size = (output_size, output_size)
        self.output_size: Tuple[Optional[int], Optional[int]] = (output_size[0], output_size[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_h, out_w = self.output_size
        if out_h == 1 and out_w == 1:
            return x.mean(dim=(2, 3), keepdim=True)  # ONNX ReduceMean/GlobalAveragePool: any size
        if out_h is not None:
            # Positions 0..H-1 computed from x itself, so a dynamic graph rebuilds them for each input.
            rows = torch.ones_like(x[0, 0, :, 0]).cumsum(0) - 1
            x = torch.matmul(_pool_matrix(rows, out_h), x)
        if out_w is not None:
            cols = torch.ones_like(x[0, 0, 0, :]).cumsum(0) - 1
            x = torch.matmul(x, _pool_matrix(cols, out_w).transpose(0, 1))
        return x

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


def replace_adaptive_pools(module: nn.Module) -> nn.Module:
    """Swap every ``nn.AdaptiveAvgPool2d`` below ``module`` for :class:`ExportableAdaptiveAvgPool2d`."""
    for name, child in module.named_children():
        if isinstance(child, nn.AdaptiveAvgPool2d):
            setattr(module, name, ExportableAdaptiveAvgPool2d(child.output_size))
        else:
            replace_adaptive_pools(child)
    return module


class ExportableMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` (eval mode, no masks) written out in plain tensor operations.

    torch's ONNX exporter traces its attention with the key length as a constant, so a dynamic graph
    breaks at any other size; here every reshape takes its lengths from the tensors (``-1``). The
    weights stay in the wrapped module.
    """

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        self.mha = mha

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask=None,
                need_weights: bool = True, attn_mask=None, average_attn_weights: bool = True,
                is_causal: bool = False):
        mha = self.mha
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            return mha(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                       attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
        if not mha.batch_first:  # (L, N, E) → (N, L, E)
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        w_q, w_k, w_v = mha.in_proj_weight.chunk(3)
        b_q, b_k, b_v = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None)
        heads = mha.num_heads
        head_dim = mha.embed_dim // heads

        def split(t: torch.Tensor, w: torch.Tensor, b) -> torch.Tensor:  # (N, L, E) → (N, heads, L, head_dim)
            return F.linear(t, w, b).reshape(t.shape[0], -1, heads, head_dim).transpose(1, 2)

        q, k, v = split(query, w_q, b_q), split(key, w_k, b_k), split(value, w_v, b_v)
        attn = torch.softmax(torch.matmul(q * head_dim ** -0.5, k.transpose(-2, -1)), dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(query.shape[0], -1, mha.embed_dim)
        out = mha.out_proj(out)
        return (out if mha.batch_first else out.transpose(0, 1)), None


def replace_attention(module: nn.Module) -> nn.Module:
    """Wrap every plain ``nn.MultiheadAttention`` below ``module`` (one embedding size for query, key and
    value, no bias_k/bias_v, no zero attention) in :class:`ExportableMultiheadAttention`."""
    for name, child in module.named_children():
        if (isinstance(child, nn.MultiheadAttention) and child._qkv_same_embed_dim and child.bias_k is None
                and not child.add_zero_attn):
            setattr(module, name, ExportableMultiheadAttention(child))
        else:
            replace_attention(child)
    return module


def prepare_for_export(model: nn.Module, onnx: bool = False) -> nn.Module:
    """A copy of ``model`` for tracing: eval mode, no gradients, plain BatchNorm, and for ONNX the
    adaptive pools and attention rewritten. The caller's model is left as it was."""
    model = revert_sync_batchnorm(copy.deepcopy(model))
    if onnx:
        replace_adaptive_pools(model)
        replace_attention(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def _traceable_resize(original):
    def resize(input: torch.Tensor, size=None, scale_factor=None, mode: str = "nearest", align_corners=None):
        if size is None or not torch.jit.is_tracing():
            return original(input, size=size, scale_factor=scale_factor, mode=mode, align_corners=align_corners)
        if mode not in ("linear", "bilinear", "bicubic", "trilinear"):
            align_corners = None
        # The traced sizes stay symbolic (no int()): a dynamic graph then resizes to each input's size.
        return F.interpolate(input, size=tuple(size), scale_factor=scale_factor, mode=mode,
                             align_corners=align_corners)

    return resize


def _traceable_upsample_forward(original):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = getattr(self, "scale_factor", None)
        if getattr(self, "size", None) is None and factor and float(factor).is_integer() and torch.jit.is_tracing():
            # int(dim * factor) as a Python int would be a constant; for a whole factor interpolating by
            # the factor gives the same size and the same sampling, and stays symbolic.
            return F.interpolate(x, scale_factor=float(factor), mode=self.mode,
                                 align_corners=self.align_corners if self.mode in ("linear", "bilinear", "bicubic",
                                                                                   "trilinear") else None)
        return original(self, x)

    return forward


@contextlib.contextmanager
def export_patches() -> Iterator[None]:
    """While tracing: symbolic resize sizes and MultiheadAttention's plain (exportable) path.

    Every module that imported ``rayseg.models.utils.resize`` by name (the model parts, custom parts)
    gets the traceable version until the block ends, and ``Upsample`` a traceable ``forward``; outside
    tracing both behave as the originals. (Once ``resize`` and ``Upsample`` keep traced sizes symbolic
    themselves, these two patches can go.)
    """
    from rayseg.models import utils as model_utils

    try:  # the Upsample module of the model zoo's second half; absent in older trees
        from rayseg.models.upsample import Upsample
    except ImportError:
        Upsample = None
    upsample_forward = Upsample.forward if Upsample is not None else None
    original = model_utils.resize
    patched = _traceable_resize(original)
    holders = [m for m in list(sys.modules.values())
               if getattr(m, "__dict__", None) is not None and m.__dict__.get("resize") is original]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    try:
        for holder in holders:
            holder.resize = patched
        if Upsample is not None:
            Upsample.forward = _traceable_upsample_forward(upsample_forward)
        torch.backends.mha.set_fastpath_enabled(False)
        yield
    finally:
        for holder in holders:
            holder.resize = original
        if Upsample is not None:
            Upsample.forward = upsample_forward
        torch.backends.mha.set_fastpath_enabled(fastpath)
