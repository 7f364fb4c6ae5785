"""HRNet backbone as in MMSegmentation (``HRNet`` with its ``extra`` stage dict; HRNetV2 W18/W48 in the zoo).

The network keeps a high-resolution branch through all four stages and adds a lower-resolution branch per
stage; each ``HRModule`` runs its branches (residual blocks) and then fuses every branch into every other
(upsampling by 1×1 conv + bilinear resize, downsampling by strided 3×3 convs). ``forward`` returns one map
per branch of the last stage, at strides 4, 8, 16 and 32.

The blocks are rayseg's ResNet ``BasicBlock`` / ``Bottleneck``, whose parameter names are MMSeg's, and every
module sits at MMSeg's attribute path (``stage2.0.fuse_layers.1.0.0.weight``…), so MMSeg checkpoints and the
``open-mmlab://msra/hrnetv2_w18`` ImageNet weights load as they are.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models.backbones.base import BaseBackbone
from rayseg.models.backbones.resnet import BasicBlock, Bottleneck, _ResBlock
from rayseg.models.upsample import Upsample
from rayseg.models.utils import build_conv_layer, build_norm_layer, constant_init, resize
from rayseg.registry import BACKBONES

BLOCKS = {"BASIC": BasicBlock, "BOTTLENECK": Bottleneck}
_STAGE_KEYS = {"num_modules", "num_branches", "block", "num_blocks", "num_channels"}


def _conv_norm(conv_cfg: Optional[Dict], norm_cfg: Dict, in_channels: int, out_channels: int, kernel_size: int,
               stride: int = 1, relu: bool = False, inplace: bool = True) -> List[nn.Module]:
    """conv (no bias) → norm [→ ReLU]: the unit of HRNet's transition and fuse layers."""
    layers = [build_conv_layer(conv_cfg, in_channels, out_channels, kernel_size, stride=stride,
                               padding=kernel_size // 2, bias=False),
              build_norm_layer(norm_cfg, out_channels)[1]]
    if relu:
        layers.append(nn.ReLU(inplace=inplace))
    return layers


def make_blocks(block: type, inplanes: int, planes: int, num_blocks: int, conv_cfg: Optional[Dict],
                norm_cfg: Dict, stride: int = 1) -> nn.Sequential:
    """``num_blocks`` residual blocks; the first gets a 1×1 conv + norm shortcut when the shape changes."""
    downsample = None
    if stride != 1 or inplanes != planes * block.expansion:
        downsample = nn.Sequential(*_conv_norm(conv_cfg, norm_cfg, inplanes, planes * block.expansion, 1, stride))
    blocks = [block(inplanes, planes, stride=stride, downsample=downsample, conv_cfg=conv_cfg, norm_cfg=norm_cfg)]
    blocks += [block(planes * block.expansion, planes, conv_cfg=conv_cfg, norm_cfg=norm_cfg)
               for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


class HRModule(nn.Module):
    """Parallel branches, then a fusion of all branches into each output branch (MMSeg's ``HRModule``).

    ``multiscale_output=False`` keeps only the highest-resolution output (the fusion into branch 0).
    """

    def __init__(self, num_branches: int, block: type, num_blocks: Sequence[int], in_channels: Sequence[int],
                 num_channels: Sequence[int], multiscale_output: bool = True, conv_cfg: Optional[Dict] = None,
                 norm_cfg: Dict = dict(type="BN", requires_grad=True)):
        super().__init__()
        self.num_branches = num_branches
        self.multiscale_output = multiscale_output
        self.branches = nn.ModuleList([
            make_blocks(block, in_channels[i], num_channels[i], num_blocks[i], conv_cfg, norm_cfg)
            for i in range(num_branches)])
        # Branch outputs: the fuse layers map between these.
        self.out_channels = [c * block.expansion for c in num_channels]
        self.fuse_layers = self._make_fuse_layers(conv_cfg, norm_cfg) if num_branches > 1 else None
        # Not in place: the fused sums are read again by later branches' fusions.
        self.relu = nn.ReLU(inplace=False)

    def _make_fuse_layers(self, conv_cfg: Optional[Dict], norm_cfg: Dict) -> nn.ModuleList:
        chans = self.out_channels
        fuse_layers = []
        for i in range(self.num_branches if self.multiscale_output else 1):
            layer: List[Optional[nn.Module]] = []
            for j in range(self.num_branches):
                if j > i:  # coarser → finer: 1×1 conv to branch i's width, then upsample
                    layer.append(nn.Sequential(*_conv_norm(conv_cfg, norm_cfg, chans[j], chans[i], 1),
                                               Upsample(scale_factor=2 ** (j - i), mode="bilinear", align_corners=False)))
                elif j == i:
                    layer.append(None)
                else:  # finer → coarser: i - j strided 3×3 convs, ReLU between (not after the last)
                    steps = []
                    for k in range(i - j):
                        last = k == i - j - 1
                        steps.append(nn.Sequential(*_conv_norm(conv_cfg, norm_cfg, chans[j],
                                                               chans[i] if last else chans[j], 3, stride=2,
                                                               relu=not last, inplace=False)))
                    layer.append(nn.Sequential(*steps))
            fuse_layers.append(nn.ModuleList(layer))
        return nn.ModuleList(fuse_layers)

    def forward(self, x: List[torch.Tensor]) -> List[torch.Tensor]:
        if self.num_branches == 1:
            return [self.branches[0](x[0])]
        x = [branch(t) for branch, t in zip(self.branches, x)]
        fused = []
        for i, layer in enumerate(self.fuse_layers):
            y = 0
            for j in range(self.num_branches):
                if j == i:
                    y = y + x[j]
                elif j > i:
                    # Resized again to the exact size: an odd-sized finer map is not 2**k times the coarser one.
                    y = y + resize(layer[j](x[j]), size=x[i].shape[2:], mode="bilinear", align_corners=False)
                else:
                    y = y + layer[j](x[j])
            fused.append(self.relu(y))
        return fused


def _check_extra(extra: Any) -> Dict[str, Dict[str, Any]]:
    if not isinstance(extra, dict):
        raise ConfigError(f"HRNet: extra must be a dict with stage1..stage4, got {extra!r}")
    stages = {}
    for s in range(1, 5):
        key = f"stage{s}"
        cfg = extra.get(key)
        if not isinstance(cfg, dict):
            raise ConfigError(f"HRNet: extra.{key} is missing (need stage1..stage4 dicts with {sorted(_STAGE_KEYS)})")
        missing, unknown = sorted(_STAGE_KEYS - set(cfg)), sorted(set(cfg) - _STAGE_KEYS)
        if missing or unknown:
            raise ConfigError(f"HRNet: extra.{key}: missing key(s) {missing}, unknown key(s) {unknown}; "
                              f"needs exactly {sorted(_STAGE_KEYS)}")
        if cfg["block"] not in BLOCKS:
            raise ConfigError(f"HRNet: extra.{key}.block must be one of {sorted(BLOCKS)}, got {cfg['block']!r}")
        n = cfg["num_branches"]
        if len(cfg["num_blocks"]) != n or len(cfg["num_channels"]) != n:
            raise ConfigError(f"HRNet: extra.{key}: num_blocks {list(cfg['num_blocks'])} and num_channels "
                              f"{list(cfg['num_channels'])} need num_branches={n} entries each")
        if s == 1 and n != 1:
            raise ConfigError(f"HRNet: extra.stage1.num_branches must be 1, got {n}")
        stages[key] = dict(cfg)
    return stages


@BACKBONES.register()
class HRNet(BaseBackbone):
    """High-Resolution Network (MMSeg arguments). ``forward`` returns the last stage's branch outputs.

    Args:
        extra: ``{stage1..stage4: {num_modules, num_branches, block: BASIC|BOTTLENECK, num_blocks,
            num_channels}}``; stage1 has one branch (HRNetV2: stage k has k branches).
        in_channels: image channels.
        conv_cfg, norm_cfg: layer configs.
        norm_eval, pretrained, init_cfg: see ``BaseBackbone``.
        frozen_stages: freeze the stem (0) and stages 1..k (with their incoming transitions).
        zero_init_residual: zero the last norm of every residual block at initialisation (MMSeg: False).
        multiscale_output: False keeps only the highest-resolution output of the last module.
        with_cp: gradient checkpointing; not supported (must be False).
    """

    def __init__(self, extra: Dict[str, Any], in_channels: int = 3, conv_cfg: Optional[Dict] = None,
                 norm_cfg: Dict = dict(type="BN", requires_grad=True), norm_eval: bool = False,
                 with_cp: bool = False, frozen_stages: int = -1, zero_init_residual: bool = False,
                 multiscale_output: bool = True, pretrained: Optional[str] = None,
                 init_cfg: Optional[Dict[str, Any]] = None):
        super().__init__(norm_eval=norm_eval, pretrained=pretrained, init_cfg=init_cfg)
        if with_cp:
            raise ConfigError("HRNet: with_cp (gradient checkpointing) is not supported; set it to false")
        stages = _check_extra(extra)
        self.extra = extra
        self.frozen_stages, self.zero_init_residual = frozen_stages, zero_init_residual
        self.norm_cfg, self.conv_cfg = norm_cfg, conv_cfg
        # Stem: two strided 3×3 convs at 64 channels (fixed in MMSeg), attribute names as there.
        self.conv1 = build_conv_layer(conv_cfg, in_channels, 64, 3, stride=2, padding=1, bias=False)
        self.norm1_name, norm1 = build_norm_layer(norm_cfg, 64, postfix=1)
        self.add_module(self.norm1_name, norm1)
        self.conv2 = build_conv_layer(conv_cfg, 64, 64, 3, stride=2, padding=1, bias=False)
        self.norm2_name, norm2 = build_norm_layer(norm_cfg, 64, postfix=2)
        self.add_module(self.norm2_name, norm2)
        self.relu = nn.ReLU(inplace=True)

        s1 = stages["stage1"]
        block = BLOCKS[s1["block"]]
        self.layer1 = make_blocks(block, 64, s1["num_channels"][0], s1["num_blocks"][0], conv_cfg, norm_cfg)
        pre = [s1["num_channels"][0] * block.expansion]
        self.stage_cfgs = [stages[f"stage{s}"] for s in range(1, 5)]
        for s in (2, 3, 4):
            cfg = stages[f"stage{s}"]
            block = BLOCKS[cfg["block"]]
            cur = [c * block.expansion for c in cfg["num_channels"]]
            self.add_module(f"transition{s - 1}", self._make_transition(pre, cur))
            stage, pre = self._make_stage(cfg, cur, multiscale_output if s == 4 else True)
            self.add_module(f"stage{s}", stage)
        self.out_channels = tuple(pre if multiscale_output else pre[:1])
        self.init_weights()
        self._freeze_stages()

    def _make_transition(self, pre: Sequence[int], cur: Sequence[int]) -> nn.ModuleList:
        """Existing branches: a 3×3 conv where the width changes (else None); new branch: strided 3×3 convs."""
        layers: List[Optional[nn.Module]] = []
        for i, out_c in enumerate(cur):
            if i < len(pre):
                layers.append(None if out_c == pre[i] else
                              nn.Sequential(*_conv_norm(self.conv_cfg, self.norm_cfg, pre[i], out_c, 3, relu=True)))
            else:
                steps = []
                for j in range(i + 1 - len(pre)):
                    step_out = out_c if j == i - len(pre) else pre[-1]
                    steps.append(nn.Sequential(*_conv_norm(self.conv_cfg, self.norm_cfg, pre[-1], step_out, 3,
                                                           stride=2, relu=True)))
                layers.append(nn.Sequential(*steps))
        return nn.ModuleList(layers)

    def _make_stage(self, cfg: Dict[str, Any], in_channels: List[int], multiscale_output: bool):
        block = BLOCKS[cfg["block"]]
        modules = []
        for i in range(cfg["num_modules"]):
            # Only the stage's last module may drop the lower-resolution outputs.
            module = HRModule(cfg["num_branches"], block, cfg["num_blocks"], in_channels, cfg["num_channels"],
                              multiscale_output or i < cfg["num_modules"] - 1, self.conv_cfg, self.norm_cfg)
            in_channels = module.out_channels
            modules.append(module)
        return nn.Sequential(*modules), list(in_channels)

    def _init_layers(self) -> None:
        super()._init_layers()
        if self.zero_init_residual:
            for m in self.modules():
                if isinstance(m, _ResBlock):
                    constant_init(m.last_norm, 0)

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen = [self.conv1, getattr(self, self.norm1_name), self.conv2, getattr(self, self.norm2_name)]
        for s in range(1, self.frozen_stages + 1):
            frozen.append(self.layer1 if s == 1 else getattr(self, f"stage{s}"))
            if s < 4:
                frozen.append(getattr(self, f"transition{s}"))
        self._freeze(*frozen)

    @staticmethod
    def _apply_transition(transition: nn.ModuleList, outputs: List[torch.Tensor]) -> List[torch.Tensor]:
        # As MMSeg: every transition that has layers (a new branch, or a re-widened one) reads the previous
        # stage's lowest-resolution map.
        return [outputs[i] if t is None else t(outputs[-1]) for i, t in enumerate(transition)]

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        x = self.relu(getattr(self, self.norm1_name)(self.conv1(x)))
        x = self.relu(getattr(self, self.norm2_name)(self.conv2(x)))
        outputs = [self.layer1(x)]
        for s in (2, 3, 4):
            outputs = getattr(self, f"stage{s}")(self._apply_transition(getattr(self, f"transition{s - 1}"), outputs))
        return tuple(outputs)
