"""Layers the real-time backbones share, named like mmcv's so MMSeg checkpoints line up.

- :func:`conv_act` / :class:`ConvAct`: mmcv's ``ConvModule`` that also takes ``HSwish`` and ``HSigmoid``
  activations (mmcv's hard swish ``x * relu6(x + 3) / 6`` and hard sigmoid ``clamp((x + bias) / divisor, 0, 1)``),
  which ``rayseg.models.utils`` does not build. Activations hold no parameters, so the state dict is a ConvModule's.
- :class:`Conv2dAdaptivePadding`: mmcv's TensorFlow-style "same" padded conv (padding chosen per input size,
  the extra pixel on the bottom/right), used by MobileNetV3's stem and stride-2 depthwise convs.
- :class:`SELayer`: MMSeg's squeeze-and-excitation block (``conv1`` / ``conv2`` ConvModules).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from rayseg.errors import ConfigError
from rayseg.models.backbones.mobilenet_v2 import make_divisible
from rayseg.models.utils import ConvModule


class HSigmoid(nn.Module):
    """mmcv's ``HSigmoid``: ``clamp((x + bias) / divisor, min_value, max_value)``."""

    def __init__(self, bias: float = 3.0, divisor: float = 6.0, min_value: float = 0.0, max_value: float = 1.0):
        super().__init__()
        if divisor == 0:
            raise ConfigError("HSigmoid: divisor must not be 0")
        self.bias, self.divisor, self.min_value, self.max_value = bias, divisor, min_value, max_value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((x + self.bias) / self.divisor).clamp(self.min_value, self.max_value)


def _extra_activation(act_cfg: Optional[Dict[str, Any]]) -> Optional[nn.Module]:
    """The activation for ``HSwish`` / ``HSigmoid`` configs; None for every other config."""
    if not isinstance(act_cfg, dict):
        return None
    kwargs = dict(act_cfg)
    kind = kwargs.pop("type", None)
    if kind == "HSwish":
        kwargs.pop("inplace", None)
        if kwargs:
            raise ConfigError(f"act_cfg type 'HSwish': unknown argument(s) {sorted(kwargs)}")
        return nn.Hardswish()
    if kind == "HSigmoid":
        unknown = sorted(set(kwargs) - {"bias", "divisor", "min_value", "max_value"})
        if unknown:
            raise ConfigError(f"act_cfg type 'HSigmoid': unknown argument(s) {unknown}")
        return HSigmoid(**kwargs)
    return None


class Conv2dAdaptivePadding(nn.Conv2d):
    """mmcv's ``Conv2dAdaptivePadding``: pads so the output is ``ceil(input / stride)`` ("same"), the odd
    pixel going to the bottom/right; the ``padding`` argument is ignored (as in mmcv)."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs["padding"] = 0
        super().__init__(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Integer arithmetic only (no math.ceil / max): while tracing, the sizes stay symbolic, so an exported
        # graph pads each input by its own size.
        pads = []
        for size, kernel, stride, dilation in zip(x.shape[-2:], self.weight.shape[-2:], self.stride, self.dilation):
            out = (size + stride - 1) // stride
            pad = (out - 1) * stride + (kernel - 1) * dilation + 1 - size
            pads.append(pad * (pad > 0))
        (pad_h, pad_w) = pads
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def conv_act(in_channels: int, out_channels: int, kernel_size: int, *, adaptive_padding: bool = False,
             act_cfg: Optional[Dict[str, Any]] = dict(type="ReLU"), **kwargs: Any) -> ConvModule:
    """A ``ConvModule`` that also accepts HSwish/HSigmoid ``act_cfg`` and mmcv's adaptive-padding conv."""
    extra = _extra_activation(act_cfg)
    module = ConvModule(in_channels, out_channels, kernel_size, act_cfg=None if extra is not None else act_cfg,
                        **kwargs)
    if extra is not None:
        module.with_activation = True
        module.activate = extra
    if adaptive_padding:
        old = module.conv
        conv = Conv2dAdaptivePadding(old.in_channels, old.out_channels, old.kernel_size, stride=old.stride,
                                     dilation=old.dilation, groups=old.groups, bias=old.bias is not None)
        conv.load_state_dict(old.state_dict())  # keep ConvModule's Kaiming initialisation
        module.conv = conv
    return module


class SELayer(nn.Module):
    """MMSeg's squeeze-and-excitation: global average → ``conv1`` (act 1) → ``conv2`` (act 2) → scale ``x``."""

    def __init__(self, channels: int, ratio: int = 16,
                 act_cfg: Sequence[Dict[str, Any]] = (dict(type="ReLU"),
                                                      dict(type="HSigmoid", bias=3.0, divisor=6.0))):
        super().__init__()
        if isinstance(act_cfg, dict):
            act_cfg = (act_cfg, act_cfg)
        if len(act_cfg) != 2:
            raise ConfigError(f"SELayer: act_cfg must be one dict or two, got {act_cfg!r}")
        squeezed = make_divisible(channels // ratio, 8)
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.conv1 = conv_act(channels, squeezed, 1, act_cfg=act_cfg[0])
        self.conv2 = conv_act(squeezed, channels, 1, act_cfg=act_cfg[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv2(self.conv1(self.global_avgpool(x)))
