"""ResNet backbones as in MMSegmentation (ResNet, ResNetV1c, ResNetV1d), dilated variants included.

Blocks are written here rather than taken from torchvision because MMSeg's differ in ways that
matter for checkpoints and for D8 models: BasicBlock supports dilation, Bottleneck supports the
``caffe`` style, norm attributes are named by type (``bn1`` / ``gn1``), and the deep stem is a
``stem`` Sequential. Parameter names match MMSeg 0.x/1.x, so MMSeg checkpoints load as they are.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models.backbones.base import BaseBackbone
from rayseg.models.utils import build_conv_layer, build_norm_layer, constant_init
from rayseg.registry import BACKBONES


class _ResBlock(nn.Module):
    """What BasicBlock and Bottleneck share: ``conv{i}`` → ``norm{i}`` with ReLU between, the shortcut, a
    final ReLU. Norms are named by type as in MMSeg (``bn1``…), reachable through ``norm{i}_name``."""

    expansion = 1

    def __init__(self, convs: Sequence[nn.Module], channels: Sequence[int], norm_cfg: Dict,
                 downsample: Optional[nn.Module]):
        super().__init__()
        # Registered conv1, bn1, conv2, bn2, … as MMSeg does, so module order (and init order) is unchanged.
        for i, (conv, num_features) in enumerate(zip(convs, channels), start=1):
            setattr(self, f"conv{i}", conv)
            name, norm = build_norm_layer(norm_cfg, num_features, postfix=i)
            setattr(self, f"norm{i}_name", name)
            self.add_module(name, norm)
        self.num_convs = len(convs)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    @property
    def last_norm(self) -> nn.Module:
        return getattr(self, getattr(self, f"norm{self.num_convs}_name"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = x
        for i in range(1, self.num_convs + 1):
            out = getattr(self, getattr(self, f"norm{i}_name"))(getattr(self, f"conv{i}")(out))
            if i < self.num_convs:
                out = self.relu(out)
        return self.relu(out + identity)


class BasicBlock(_ResBlock):
    """Two 3×3 convs (ResNet-18/34). Only the first conv is dilated, as in MMSeg."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: Optional[nn.Module] = None, style: str = "pytorch",
                 conv_cfg: Optional[Dict] = None, norm_cfg: Dict = dict(type="BN")):
        convs = [build_conv_layer(conv_cfg, inplanes, planes, 3, stride=stride, padding=dilation, dilation=dilation,
                                  bias=False),
                 build_conv_layer(conv_cfg, planes, planes, 3, padding=1, bias=False)]
        super().__init__(convs, (planes, planes), norm_cfg, downsample)


class Bottleneck(_ResBlock):
    """1×1 → 3×3 → 1×1 block (ResNet-50/101). ``style='pytorch'`` strides the 3×3, ``'caffe'`` the first 1×1."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: Optional[nn.Module] = None, style: str = "pytorch",
                 conv_cfg: Optional[Dict] = None, norm_cfg: Dict = dict(type="BN")):
        conv1_stride, conv2_stride = (1, stride) if style == "pytorch" else (stride, 1)
        convs = [build_conv_layer(conv_cfg, inplanes, planes, 1, stride=conv1_stride, bias=False),
                 build_conv_layer(conv_cfg, planes, planes, 3, stride=conv2_stride, padding=dilation,
                                  dilation=dilation, bias=False),
                 build_conv_layer(conv_cfg, planes, planes * self.expansion, 1, bias=False)]
        super().__init__(convs, (planes, planes, planes * self.expansion), norm_cfg, downsample)


def make_res_layer(block: type, inplanes: int, planes: int, num_blocks: int, stride: int, dilation: int,
                   style: str, avg_down: bool, conv_cfg: Optional[Dict], norm_cfg: Dict,
                   multi_grid: Optional[Sequence[int]], contract_dilation: bool,
                   block_kwargs: Optional[Dict[str, Any]] = None) -> nn.Sequential:
    """One stage, as MMSeg's ``ResLayer``: the first block downsamples (and may use a contracted dilation).
    ``block_kwargs``: more arguments for every block (ResNeXt's ``groups``, ``base_width``)."""
    block_kwargs = block_kwargs or {}
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        layers = []
        conv_stride = stride
        if avg_down:
            # ResNetV1d: average-pool then 1×1 conv, instead of a strided 1×1 conv that skips 3/4 of inputs.
            conv_stride = 1
            layers.append(nn.AvgPool2d(kernel_size=stride, stride=stride, ceil_mode=True, count_include_pad=False))
        layers.append(build_conv_layer(conv_cfg, inplanes, planes * block.expansion, 1, stride=conv_stride,
                                       bias=False))
        layers.append(build_norm_layer(norm_cfg, planes * block.expansion)[1])
        downsample = nn.Sequential(*layers)
    if multi_grid is not None:
        if len(multi_grid) != num_blocks:
            raise ConfigError(f"multi_grid {tuple(multi_grid)} needs one entry per block ({num_blocks})")
        dilations = [int(g) for g in multi_grid]
    else:
        # contract_dilation: the first block of a dilated stage uses half the dilation (MMSeg ResLayer).
        first = dilation // 2 if (dilation > 1 and contract_dilation) else dilation
        dilations = [first] + [dilation] * (num_blocks - 1)
    blocks = [block(inplanes, planes, stride=stride, dilation=dilations[0], downsample=downsample, style=style,
                    conv_cfg=conv_cfg, norm_cfg=norm_cfg, **block_kwargs)]
    inplanes = planes * block.expansion
    for i in range(1, num_blocks):
        blocks.append(block(inplanes, planes, stride=1, dilation=dilations[i], style=style,
                            conv_cfg=conv_cfg, norm_cfg=norm_cfg, **block_kwargs))
    return nn.Sequential(*blocks)


@BACKBONES.register()
class ResNet(BaseBackbone):
    """ResNet backbone (MMSeg arguments). ``forward`` returns a tuple of the ``out_indices`` stage outputs.

    D8 (output stride 8): ``strides=(1, 2, 1, 1)``, ``dilations=(1, 1, 2, 4)``. ``norm_eval`` keeps every
    BatchNorm in eval mode during ``train()`` (frozen statistics); ``frozen_stages`` freezes the stem
    and the first stages. ``multi_grid`` sets per-block dilations of the last stage. ``deep_stem`` and
    ``avg_down`` default to the class's ``DEEP_STEM`` / ``AVG_DOWN`` (what makes V1c and V1d).
    """

    DEEP_STEM = False
    AVG_DOWN = False

    arch_settings = {
        18: (BasicBlock, (2, 2, 2, 2)),
        34: (BasicBlock, (3, 4, 6, 3)),
        50: (Bottleneck, (3, 4, 6, 3)),
        101: (Bottleneck, (3, 4, 23, 3)),
        152: (Bottleneck, (3, 8, 36, 3)),
    }

    def __init__(self, depth: int, in_channels: int = 3, stem_channels: int = 64, base_channels: int = 64,
                 num_stages: int = 4, strides: Sequence[int] = (1, 2, 2, 2), dilations: Sequence[int] = (1, 1, 1, 1),
                 out_indices: Sequence[int] = (0, 1, 2, 3), style: str = "pytorch", deep_stem: Optional[bool] = None,
                 avg_down: Optional[bool] = None, frozen_stages: int = -1, conv_cfg: Optional[Dict] = None,
                 norm_cfg: Dict = dict(type="BN", requires_grad=True), norm_eval: bool = False,
                 contract_dilation: bool = False, zero_init_residual: bool = True,
                 multi_grid: Optional[Sequence[int]] = None, pretrained: Optional[str] = None,
                 init_cfg: Optional[Dict[str, Any]] = None):
        super().__init__(norm_eval=norm_eval, pretrained=pretrained, init_cfg=init_cfg)
        if depth not in self.arch_settings:
            raise ConfigError(f"ResNet: invalid depth {depth!r}; choose one of {sorted(self.arch_settings)}")
        if not 1 <= num_stages <= 4:
            raise ConfigError(f"ResNet: num_stages must be 1..4, got {num_stages}")
        strides, dilations, out_indices = tuple(strides), tuple(dilations), tuple(out_indices)
        if len(strides) < num_stages or len(dilations) < num_stages:
            raise ConfigError(f"ResNet: strides {strides} and dilations {dilations} need {num_stages} entries")
        if not out_indices or max(out_indices) >= num_stages:
            raise ConfigError(f"ResNet: out_indices {out_indices} must lie in 0..{num_stages - 1}")
        if style not in ("pytorch", "caffe"):
            raise ConfigError(f"ResNet: style must be 'pytorch' or 'caffe', got {style!r}")
        self.depth, self.out_indices, self.style = depth, out_indices, style
        self.deep_stem = self.DEEP_STEM if deep_stem is None else bool(deep_stem)
        self.avg_down = self.AVG_DOWN if avg_down is None else bool(avg_down)
        self.frozen_stages, self.norm_cfg, self.zero_init_residual = frozen_stages, norm_cfg, zero_init_residual
        self.block, stage_blocks = self.arch_settings[depth]
        self._make_stem(in_channels, stem_channels, conv_cfg, norm_cfg)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        self.res_layers = []
        inplanes = stem_channels
        for i, num_blocks in enumerate(stage_blocks[:num_stages]):
            planes = base_channels * 2 ** i
            layer = make_res_layer(self.block, inplanes, planes, num_blocks, stride=strides[i],
                                   dilation=dilations[i], style=style, avg_down=self.avg_down, conv_cfg=conv_cfg,
                                   norm_cfg=norm_cfg, contract_dilation=contract_dilation,
                                   multi_grid=multi_grid if i == num_stages - 1 else None,
                                   block_kwargs=self._block_kwargs(base_channels))
            inplanes = planes * self.block.expansion
            self.add_module(f"layer{i + 1}", layer)
            self.res_layers.append(f"layer{i + 1}")
        self.feat_dim = inplanes
        # Channels of each returned feature map, so configs/tests can size heads.
        self.out_channels = tuple(base_channels * 2 ** i * self.block.expansion for i in out_indices)
        self.init_weights()
        self._freeze_stages()

    def _block_kwargs(self, base_channels: int) -> Dict[str, Any]:
        """More arguments for every residual block (none here; ResNeXt adds its grouping)."""
        return {}

    def _make_stem(self, in_channels: int, stem_channels: int, conv_cfg: Optional[Dict], norm_cfg: Dict) -> None:
        if self.deep_stem:
            # V1c/V1d: three 3×3 convs replace the 7×7 (keys stem.0/1, stem.3/4, stem.6/7 as MMSeg).
            half = stem_channels // 2
            self.stem = nn.Sequential(
                build_conv_layer(conv_cfg, in_channels, half, 3, stride=2, padding=1, bias=False),
                build_norm_layer(norm_cfg, half)[1], nn.ReLU(inplace=True),
                build_conv_layer(conv_cfg, half, half, 3, stride=1, padding=1, bias=False),
                build_norm_layer(norm_cfg, half)[1], nn.ReLU(inplace=True),
                build_conv_layer(conv_cfg, half, stem_channels, 3, stride=1, padding=1, bias=False),
                build_norm_layer(norm_cfg, stem_channels)[1], nn.ReLU(inplace=True))
        else:
            self.conv1 = build_conv_layer(conv_cfg, in_channels, stem_channels, 7, stride=2, padding=3, bias=False)
            self.norm1_name, norm1 = build_norm_layer(norm_cfg, stem_channels, postfix=1)
            self.add_module(self.norm1_name, norm1)
            self.relu = nn.ReLU(inplace=True)

    def _init_layers(self) -> None:
        """MMSeg's default init plus, with ``zero_init_residual``, a zeroed last norm per block."""
        super()._init_layers()
        if self.zero_init_residual:
            # Each residual block starts as identity, which helps early training.
            for m in self.modules():
                if isinstance(m, _ResBlock):
                    constant_init(m.last_norm, 0)

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        stem = [self.stem] if self.deep_stem else [self.conv1, getattr(self, self.norm1_name)]
        self._freeze(*stem, *(getattr(self, f"layer{i}") for i in range(1, self.frozen_stages + 1)))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        if self.deep_stem:
            x = self.stem(x)
        else:
            x = self.relu(getattr(self, self.norm1_name)(self.conv1(x)))
        return self._forward_stages(self.maxpool(x), self.res_layers)


# MMSeg's docs call the plain torchvision-layout ResNet (stride on the 3×3 conv) "ResNetV1b"; accept
# that name for the same class so configs written either way build.
BACKBONES.register("ResNetV1b")(ResNet)


@BACKBONES.register()
class ResNetV1c(ResNet):
    """ResNet with the deep stem (three 3×3 convs) — MMSeg's default segmentation backbone."""

    DEEP_STEM = True


@BACKBONES.register()
class ResNetV1d(ResNet):
    """ResNetV1c plus average-pool downsampling in the shortcut (``avg_down``)."""

    DEEP_STEM = True
    AVG_DOWN = True
