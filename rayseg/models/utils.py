"""Small building blocks shared by backbones and heads, named like mmcv's so checkpoints line up.

``ConvModule`` keeps mmcv's attribute names (``conv``, ``bn``/``gn``, ``activate``) because MMSeg
checkpoints store e.g. ``decode_head.bottleneck.conv.weight`` and ``decode_head.bottleneck.bn.weight``.
"""
from __future__ import annotations


from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from rayseg.errors import ConfigError

# Norm layer types → (attribute-name abbreviation, accepted extra keys). SyncBN is built as a plain
# BatchNorm2d: the engine converts to SyncBatchNorm only when it actually runs >1 worker, so a
# single-process run (CPU tests, one GPU) works with the same config.
_NORM_KEYS = {
    "BN": ("bn", {"eps", "momentum", "affine", "track_running_stats"}),
    "BN2d": ("bn", {"eps", "momentum", "affine", "track_running_stats"}),
    "SyncBN": ("bn", {"eps", "momentum", "affine", "track_running_stats"}),
    "GN": ("gn", {"num_groups", "eps", "affine"}),
    "LN": ("ln", {"eps", "elementwise_affine"}),
}

_ACTS = {
    "ReLU": (nn.ReLU, {"inplace"}),
    "ReLU6": (nn.ReLU6, {"inplace"}),
    "LeakyReLU": (nn.LeakyReLU, {"negative_slope", "inplace"}),
    "GELU": (nn.GELU, {"approximate"}),
    "Sigmoid": (nn.Sigmoid, set()),
    "Tanh": (nn.Tanh, set()),
}


def _split_cfg(cfg: Any, what: str) -> Tuple[str, Dict[str, Any]]:
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise ConfigError(f"{what} must be a dict with a 'type' key, got {cfg!r}")
    kwargs = dict(cfg)
    return kwargs.pop("type"), kwargs


def build_norm_layer(norm_cfg: Dict[str, Any], num_features: int, postfix: Any = "") -> Tuple[str, nn.Module]:
    """Build a norm layer from ``norm_cfg``; return ``(name, layer)`` as mmcv does.

    ``name`` is the abbreviation plus ``postfix`` (``bn1``, ``gn``…), the attribute name MMSeg uses.
    ``requires_grad: false`` freezes the affine parameters.
    """
    layer_type, kwargs = _split_cfg(norm_cfg, "norm_cfg")
    if layer_type not in _NORM_KEYS:
        raise ConfigError(f"norm_cfg: unknown type {layer_type!r}; supported: {', '.join(_NORM_KEYS)}")
    abbr, accepted = _NORM_KEYS[layer_type]
    requires_grad = kwargs.pop("requires_grad", True)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"norm_cfg type {layer_type!r}: unknown argument(s) {unknown}; accepted: {sorted(accepted)}")
    if layer_type == "GN":
        if "num_groups" not in kwargs:
            raise ConfigError("norm_cfg type 'GN' needs 'num_groups'")
        layer = nn.GroupNorm(num_channels=num_features, **kwargs)
    elif layer_type == "LN":
        # As mmcv: LayerNorm over the last dimension (used on token sequences, NLC).
        layer = nn.LayerNorm(num_features, **kwargs)
    else:
        layer = nn.BatchNorm2d(num_features, **kwargs)
    for param in layer.parameters():
        param.requires_grad = bool(requires_grad)
    return f"{abbr}{postfix}", layer


def build_conv_layer(conv_cfg: Optional[Dict[str, Any]], *args: Any, **kwargs: Any) -> nn.Conv2d:
    """Build a 2-D convolution; ``conv_cfg`` may be None or ``{type: Conv2d}`` (the only kind here)."""
    if conv_cfg is not None:
        layer_type, extra = _split_cfg(conv_cfg, "conv_cfg")
        if layer_type not in ("Conv", "Conv2d") or extra:
            raise ConfigError(f"conv_cfg: only {{type: Conv2d}} is supported, got {conv_cfg!r}")
    return nn.Conv2d(*args, **kwargs)


def build_activation_layer(act_cfg: Dict[str, Any]) -> nn.Module:
    """Build an activation from ``act_cfg`` (ReLU, ReLU6, LeakyReLU, GELU, Sigmoid, Tanh)."""
    act_type, kwargs = _split_cfg(act_cfg, "act_cfg")
    if act_type not in _ACTS:
        raise ConfigError(f"act_cfg: unknown type {act_type!r}; supported: {', '.join(_ACTS)}")
    cls, accepted = _ACTS[act_type]
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ConfigError(f"act_cfg type {act_type!r}: unknown argument(s) {unknown}")
    return cls(**kwargs)


def kaiming_init(module: nn.Module, a: float = 0, mode: str = "fan_out", nonlinearity: str = "relu") -> None:
    """mmcv's default conv init: Kaiming normal (fan_out), zero bias."""
    nn.init.kaiming_normal_(module.weight, a=a, mode=mode, nonlinearity=nonlinearity)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)


def constant_init(module: nn.Module, val: float, bias: float = 0) -> None:
    """Fill weight with ``val`` and bias with ``bias`` (norm layers: 1 and 0)."""
    if getattr(module, "weight", None) is not None:
        nn.init.constant_(module.weight, val)
    if getattr(module, "bias", None) is not None:
        nn.init.constant_(module.bias, bias)


class ConvModule(nn.Module):
    """conv → norm → activation, as mmcv's ``ConvModule`` (order fixed to conv/norm/act).

    Attributes are ``conv``, the norm under its mmcv name (``bn`` or ``gn``; also reachable as
    ``norm``) and ``activate``. ``bias='auto'`` adds a conv bias only when there is no norm.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Any, stride: Any = 1,
                 padding: Any = 0, dilation: Any = 1, groups: int = 1, bias: Any = "auto",
                 conv_cfg: Optional[Dict[str, Any]] = None, norm_cfg: Optional[Dict[str, Any]] = None,
                 act_cfg: Optional[Dict[str, Any]] = dict(type="ReLU"), inplace: bool = True):
        super().__init__()
        self.with_norm = norm_cfg is not None
        self.with_activation = act_cfg is not None
        if bias == "auto":
            bias = not self.with_norm
        self.conv = build_conv_layer(conv_cfg, in_channels, out_channels, kernel_size, stride=stride,
                                     padding=padding, dilation=dilation, groups=groups, bias=bias)
        self.norm_name = None
        if self.with_norm:
            self.norm_name, norm = build_norm_layer(norm_cfg, out_channels)
            self.add_module(self.norm_name, norm)
        if self.with_activation:
            act_cfg = dict(act_cfg)
            # mmcv passes ``inplace`` to activations that take it (ReLU family), not to GELU etc.
            if act_cfg["type"] in ("ReLU", "ReLU6", "LeakyReLU"):
                act_cfg.setdefault("inplace", inplace)
            self.activate = build_activation_layer(act_cfg)
        self.init_weights(act_cfg)

    @property
    def norm(self) -> Optional[nn.Module]:
        return getattr(self, self.norm_name) if self.norm_name else None

    def init_weights(self, act_cfg: Optional[Dict[str, Any]]) -> None:
        if act_cfg is not None and act_cfg.get("type") == "LeakyReLU":
            kaiming_init(self.conv, a=act_cfg.get("negative_slope", 0.01), nonlinearity="leaky_relu")
        else:
            kaiming_init(self.conv)
        if self.with_norm:
            constant_init(self.norm, 1, bias=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.with_norm:
            x = self.norm(x)
        if self.with_activation:
            x = self.activate(x)
        return x


def resize(input: torch.Tensor, size: Any = None, scale_factor: Any = None, mode: str = "nearest",
           align_corners: Optional[bool] = None) -> torch.Tensor:
    """``F.interpolate`` that tolerates ``align_corners`` being passed for non-linear modes."""
    if mode not in ("linear", "bilinear", "bicubic", "trilinear"):
        align_corners = None
    if size is not None:
        size = tuple(int(s) for s in size)
    return F.interpolate(input, size=size, scale_factor=scale_factor, mode=mode, align_corners=align_corners)


def add_prefix(inputs: Dict[str, Any], prefix: str) -> Dict[str, Any]:
    """``{'loss_ce': x}`` → ``{'decode.loss_ce': x}`` (MMSeg's loss naming)."""
    return {f"{prefix}.{name}": value for name, value in inputs.items()}


def load_pretrained(module: nn.Module, checkpoint: str, prefix: Optional[str] = None) -> None:
    """Load pretrained weights into ``module`` (non-strict; shape mismatches are errors).

    ``checkpoint`` is a local path, an ``http(s)://``/``file://`` URL, ``torchvision://NAME`` or
    ``open-mmlab://NAME``; remote files are cached by torch hub. The checkpoint may be a bare state
    dict or hold one under ``state_dict``/``model``; DDP's ``module.`` is stripped. With ``prefix``
    (e.g. ``backbone.``) only keys under it are used, with the prefix removed. Missing/unexpected keys
    are warned about. See ``rayseg.models.pretrained``.
    """
    # Imported here so that building a model without pretrained weights never touches that code.
    from rayseg.models.pretrained import load_pretrained_weights

    load_pretrained_weights(module, checkpoint, prefix=prefix)


def load_init_weights(module: nn.Module, pretrained: Optional[str], init_cfg: Optional[Dict[str, Any]]) -> None:
    """Load ``pretrained`` (a path, URL or model-zoo name) or ``init_cfg: {type: Pretrained, checkpoint,
    prefix}`` into ``module``; nothing when both are None. Any other ``init_cfg`` is a ConfigError."""
    if pretrained is not None:
        load_pretrained(module, pretrained)
        return
    if init_cfg is None:
        return
    cfg = dict(init_cfg)
    if cfg.pop("type", None) != "Pretrained" or "checkpoint" not in cfg or set(cfg) - {"checkpoint", "prefix"}:
        raise ConfigError(f"{type(module).__name__}: init_cfg must be {{type: Pretrained, checkpoint: PATH"
                          f"[, prefix]}}, got {init_cfg!r}")
    load_pretrained(module, cfg["checkpoint"], prefix=cfg.get("prefix"))


def requires_grad(module: nn.Module, flag: bool) -> None:
    """Set ``requires_grad`` on every parameter of ``module``."""
    for param in module.parameters():
        param.requires_grad = flag
