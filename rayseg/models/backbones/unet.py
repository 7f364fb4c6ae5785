"""UNet backbone as in MMSegmentation 1.x (encoder-decoder; the decoder maps are the outputs).

Parameter names follow MMSeg so its UNet checkpoints load: ``encoder.{i}`` is a Sequential of an optional
MaxPool and a ``BasicConvBlock`` (``encoder.0.0.convs.0.conv.weight``, ``encoder.1.1.convs...``),
``decoder.{i}`` an ``UpConvBlock`` with ``upsample`` (``InterpConv`` → ``upsample.interp_upsample.1.conv``,
``DeconvModule`` → ``upsample.deconv_upsamping.0`` — MMSeg's spelling) and ``conv_block``.

``forward`` returns ``num_stages`` maps, deepest first and highest resolution last, as MMSeg:
for UNet-S5-D16 the strides are (16, 8, 4, 2, 1) and the channels (16, 8, 4, 2, 1) × base_channels.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp

from rayseg.errors import ConfigError
from rayseg.models.backbones.base import BaseBackbone
from rayseg.models.utils import ConvModule, build_activation_layer, build_norm_layer, resize
from rayseg.registry import BACKBONES


def _run(module: nn.Module, x: torch.Tensor, with_cp: bool) -> torch.Tensor:
    # Activation checkpointing trades compute for memory; only worth it when gradients flow.
    if with_cp and x.requires_grad:
        return cp.checkpoint(module, x, use_reentrant=False)
    return module(x)


class BasicConvBlock(nn.Module):
    """``num_convs`` 3×3 ConvModules; only the first may be strided, all but the first may be dilated."""

    def __init__(self, in_channels: int, out_channels: int, num_convs: int = 2, stride: int = 1, dilation: int = 1,
                 with_cp: bool = False, conv_cfg: Optional[Dict] = None, norm_cfg: Optional[Dict] = dict(type="BN"),
                 act_cfg: Optional[Dict] = dict(type="ReLU")):
        super().__init__()
        self.with_cp = with_cp
        self.convs = nn.Sequential(*[
            ConvModule(in_channels if i == 0 else out_channels, out_channels, 3, stride=stride if i == 0 else 1,
                       dilation=1 if i == 0 else dilation, padding=1 if i == 0 else dilation,
                       conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
            for i in range(num_convs)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run(self.convs, x, self.with_cp)


class _Interpolate(nn.Module):
    """Parameter-free resize (MMSeg's ``Upsample``), so it can sit inside a Sequential."""

    def __init__(self, scale_factor: float = 2, mode: str = "bilinear", align_corners: bool = False):
        super().__init__()
        self.scale_factor, self.mode, self.align_corners = scale_factor, mode, align_corners

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize(x, scale_factor=self.scale_factor, mode=self.mode, align_corners=self.align_corners)


class InterpConv(nn.Module):
    """Bilinear 2× upsampling then a 1×1 ConvModule (``conv_first`` swaps the order)."""

    def __init__(self, in_channels: int, out_channels: int, with_cp: bool = False,
                 norm_cfg: Optional[Dict] = dict(type="BN"), act_cfg: Optional[Dict] = dict(type="ReLU"), *,
                 conv_cfg: Optional[Dict] = None, conv_first: bool = False, kernel_size: int = 1, stride: int = 1,
                 padding: int = 0,
                 upsample_cfg: Dict[str, Any] = dict(scale_factor=2, mode="bilinear", align_corners=False)):
        super().__init__()
        self.with_cp = with_cp
        conv = ConvModule(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                          conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg)
        unknown = set(upsample_cfg) - {"scale_factor", "mode", "align_corners"}
        if unknown:
            raise ConfigError(f"InterpConv: unknown upsample_cfg key(s) {sorted(unknown)}")
        upsample = _Interpolate(**upsample_cfg)
        self.interp_upsample = nn.Sequential(conv, upsample) if conv_first else nn.Sequential(upsample, conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run(self.interp_upsample, x, self.with_cp)


class DeconvModule(nn.Module):
    """Transposed-conv upsampling (``scale_factor``×) → norm → activation."""

    def __init__(self, in_channels: int, out_channels: int, with_cp: bool = False,
                 norm_cfg: Optional[Dict] = dict(type="BN"), act_cfg: Optional[Dict] = dict(type="ReLU"), *,
                 kernel_size: int = 4, scale_factor: int = 2):
        super().__init__()
        if kernel_size < scale_factor or (kernel_size - scale_factor) % 2:
            raise ConfigError(f"DeconvModule: need kernel_size >= scale_factor with an even difference, got "
                              f"kernel_size={kernel_size}, scale_factor={scale_factor}")
        self.with_cp = with_cp
        deconv = nn.ConvTranspose2d(in_channels, out_channels, kernel_size, stride=scale_factor,
                                    padding=(kernel_size - scale_factor) // 2)
        # The attribute name keeps MMSeg's typo ("upsamping") so its checkpoints load.
        self.deconv_upsamping = nn.Sequential(deconv, build_norm_layer(norm_cfg, out_channels)[1],
                                              build_activation_layer(act_cfg))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _run(self.deconv_upsamping, x, self.with_cp)


_UPSAMPLERS = {"InterpConv": InterpConv, "DeconvModule": DeconvModule}


def build_upsample(cfg: Dict[str, Any], in_channels: int, out_channels: int, with_cp: bool,
                   norm_cfg: Optional[Dict], act_cfg: Optional[Dict]) -> nn.Module:
    """Build the decoder's upsampler from ``upsample_cfg`` (``InterpConv`` or ``DeconvModule``)."""
    if not isinstance(cfg, dict) or cfg.get("type") not in _UPSAMPLERS:
        raise ConfigError(f"UNet: upsample_cfg type must be one of {sorted(_UPSAMPLERS)}, got {cfg!r}")
    kwargs = dict(cfg)
    cls = _UPSAMPLERS[kwargs.pop("type")]
    try:
        return cls(in_channels, out_channels, with_cp=with_cp, norm_cfg=norm_cfg, act_cfg=act_cfg, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"UNet upsample_cfg {cfg!r}: {exc}") from exc


class UpConvBlock(nn.Module):
    """Upsample the deeper map to the skip's channels, concatenate with the skip, then a BasicConvBlock."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, num_convs: int, dilation: int,
                 with_cp: bool, conv_cfg: Optional[Dict], norm_cfg: Optional[Dict], act_cfg: Optional[Dict],
                 upsample_cfg: Optional[Dict[str, Any]]):
        super().__init__()
        self.conv_block = BasicConvBlock(2 * skip_channels, out_channels, num_convs=num_convs, stride=1,
                                         dilation=dilation, with_cp=with_cp, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                         act_cfg=act_cfg)
        if upsample_cfg is not None:
            self.upsample = build_upsample(upsample_cfg, in_channels, skip_channels, with_cp, norm_cfg, act_cfg)
        else:
            # Same resolution (no downsampling in this stage): a 1×1 conv only matches channels.
            self.upsample = ConvModule(in_channels, skip_channels, 1, conv_cfg=conv_cfg, norm_cfg=norm_cfg,
                                       act_cfg=act_cfg)

    def forward(self, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.conv_block(torch.cat([skip, self.upsample(x)], dim=1))


@BACKBONES.register()
class UNet(BaseBackbone):
    """U-Net (MMSeg arguments). Stage ``i`` has ``base_channels * 2**i`` channels; stage ``i > 0`` halves the
    resolution with a strided conv (``strides[i] == 2``) or a 2×2 max-pool (``downsamples[i-1]``).

    Inputs must be divisible by the total downsampling (16 for S5-D16); other sizes raise ValueError.
    ``dcn`` and ``plugins`` are not implemented (as in MMSeg) and must stay None.
    """

    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_stages: int = 5,
                 strides: Sequence[int] = (1, 1, 1, 1, 1), enc_num_convs: Sequence[int] = (2, 2, 2, 2, 2),
                 dec_num_convs: Sequence[int] = (2, 2, 2, 2), downsamples: Sequence[bool] = (True, True, True, True),
                 enc_dilations: Sequence[int] = (1, 1, 1, 1, 1), dec_dilations: Sequence[int] = (1, 1, 1, 1),
                 with_cp: bool = False, conv_cfg: Optional[Dict] = None, norm_cfg: Optional[Dict] = dict(type="BN"),
                 act_cfg: Optional[Dict] = dict(type="ReLU"), upsample_cfg: Dict[str, Any] = dict(type="InterpConv"),
                 norm_eval: bool = False, dcn: Any = None, plugins: Any = None, pretrained: Optional[str] = None,
                 init_cfg: Optional[Dict[str, Any]] = None):
        super().__init__(norm_eval=norm_eval, pretrained=pretrained, init_cfg=init_cfg)
        if dcn is not None or plugins is not None:
            raise ConfigError("UNet: dcn and plugins are not implemented (MMSeg does not implement them either)")
        for name, value, n in (("strides", strides, num_stages), ("enc_num_convs", enc_num_convs, num_stages),
                               ("enc_dilations", enc_dilations, num_stages),
                               ("dec_num_convs", dec_num_convs, num_stages - 1),
                               ("downsamples", downsamples, num_stages - 1),
                               ("dec_dilations", dec_dilations, num_stages - 1)):
            if len(value) != n:
                raise ConfigError(f"UNet: {name} {tuple(value)} needs {n} entries (num_stages={num_stages})")
        if any(s not in (1, 2) for s in strides):
            raise ConfigError(f"UNet: strides must be 1 or 2, got {tuple(strides)}")
        self.num_stages, self.strides, self.downsamples = num_stages, tuple(strides), tuple(downsamples)
        self.base_channels = base_channels

        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for i in range(num_stages):
            enc_block: List[nn.Module] = []
            if i != 0:
                if strides[i] == 1 and downsamples[i - 1]:
                    enc_block.append(nn.MaxPool2d(kernel_size=2))
                upsample = strides[i] != 1 or downsamples[i - 1]
                self.decoder.append(UpConvBlock(
                    base_channels * 2 ** i, base_channels * 2 ** (i - 1), base_channels * 2 ** (i - 1),
                    num_convs=dec_num_convs[i - 1], dilation=dec_dilations[i - 1], with_cp=with_cp,
                    conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg,
                    upsample_cfg=upsample_cfg if upsample else None))
            enc_block.append(BasicConvBlock(in_channels, base_channels * 2 ** i, num_convs=enc_num_convs[i],
                                            stride=strides[i], dilation=enc_dilations[i], with_cp=with_cp,
                                            conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg))
            self.encoder.append(nn.Sequential(*enc_block))
            in_channels = base_channels * 2 ** i
        self.out_channels = tuple(base_channels * 2 ** i for i in reversed(range(num_stages)))
        self.init_weights()

    @property
    def downsample_rate(self) -> int:
        """Total downsampling of the encoder; input sides must be multiples of it."""
        rate = 1
        for i in range(1, self.num_stages):
            if self.strides[i] == 2 or self.downsamples[i - 1]:
                rate *= 2
        return rate

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        h, w = x.shape[-2:]
        rate = self.downsample_rate
        if h % rate or w % rate:
            raise ValueError(f"UNet: input size {(h, w)} must be divisible by the encoder's downsample rate {rate} "
                             "(pad the input, or use slide inference with a divisible crop_size)")
        enc_outs = []
        for enc in self.encoder:
            x = enc(x)
            enc_outs.append(x)
        dec_outs = [x]
        for i in reversed(range(len(self.decoder))):
            x = self.decoder[i](enc_outs[i], x)
            dec_outs.append(x)
        return tuple(dec_outs)
