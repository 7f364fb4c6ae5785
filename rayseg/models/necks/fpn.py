"""FPN neck (MMSeg's ``FPN``, Feature Pyramid Network): lateral 1×1 convs, a top-down sum, 3×3 output convs.

Used by Semantic FPN (``FPNHead`` on its outputs). Module paths are MMSeg's (``neck.lateral_convs.0.conv``,
``neck.fpn_convs.0.conv``), so MMSeg checkpoints load as they are.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from rayseg.errors import ConfigError
from rayseg.models.utils import ConvModule, resize
from rayseg.registry import NECKS

_EXTRA_CONVS = ("on_input", "on_lateral", "on_output")


@NECKS.register()
class FPN(nn.Module):
    """Feature Pyramid Network.

    Args:
        in_channels: channels of each input map (finest first).
        out_channels: channels of every output.
        num_outs: number of outputs; more than the used inputs adds extra levels (max-pool, or strided convs
            with ``add_extra_convs``).
        start_level, end_level: the inputs used (``end_level=-1``: up to the last, else exclusive index).
        add_extra_convs: False, True (= ``'on_output'``, or ``'on_input'`` with ``extra_convs_on_inputs``),
            or where the first extra conv reads: ``'on_input'``, ``'on_lateral'``, ``'on_output'``.
        relu_before_extra_convs: ReLU before every extra conv after the first.
        no_norm_on_lateral: lateral convs without norm.
        conv_cfg, norm_cfg, act_cfg: layer configs (MMSeg default: no norm, no activation).
        upsample_cfg: ``F.interpolate`` arguments of the top-down path (default nearest, to the finer size).
        init_cfg: None only (convs start Xavier-uniform, as MMSeg's default ``init_cfg``).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, num_outs: int, start_level: int = 0,
                 end_level: int = -1, add_extra_convs: Union[bool, str] = False, extra_convs_on_inputs: bool = False,
                 relu_before_extra_convs: bool = False, no_norm_on_lateral: bool = False,
                 conv_cfg: Optional[Dict] = None, norm_cfg: Optional[Dict] = None, act_cfg: Optional[Dict] = None,
                 upsample_cfg: Dict[str, Any] = dict(mode="nearest"), init_cfg: Optional[Dict] = None):
        super().__init__()
        if not isinstance(in_channels, (list, tuple)) or not in_channels:
            raise ConfigError(f"FPN: in_channels must be a non-empty list, got {in_channels!r}")
        if init_cfg is not None:
            raise ConfigError(f"FPN: init_cfg is not supported (convs start Xavier-uniform), got {init_cfg!r}")
        self.in_channels, self.out_channels, self.num_outs = list(in_channels), out_channels, num_outs
        self.num_ins = len(in_channels)
        self.relu_before_extra_convs = relu_before_extra_convs
        self.upsample_cfg = dict(upsample_cfg)
        if end_level == -1:
            self.backbone_end_level = self.num_ins
            if num_outs < self.num_ins - start_level:
                raise ConfigError(f"FPN: num_outs {num_outs} < the {self.num_ins - start_level} used inputs")
        else:
            self.backbone_end_level = end_level
            if end_level > self.num_ins or num_outs != end_level - start_level:
                raise ConfigError(f"FPN: end_level {end_level} needs end_level <= {self.num_ins} and "
                                  f"num_outs == end_level - start_level ({end_level - start_level}), got {num_outs}")
        self.start_level, self.end_level = start_level, end_level
        if isinstance(add_extra_convs, str):
            if add_extra_convs not in _EXTRA_CONVS:
                raise ConfigError(f"FPN: add_extra_convs must be a bool or one of {_EXTRA_CONVS}, "
                                  f"got {add_extra_convs!r}")
        elif not isinstance(add_extra_convs, bool):
            raise ConfigError(f"FPN: add_extra_convs must be a bool or a string, got {add_extra_convs!r}")
        elif add_extra_convs:
            add_extra_convs = "on_input" if extra_convs_on_inputs else "on_output"
        self.add_extra_convs = add_extra_convs

        common = dict(conv_cfg=conv_cfg, act_cfg=act_cfg, inplace=False)
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for i in range(start_level, self.backbone_end_level):
            self.lateral_convs.append(ConvModule(in_channels[i], out_channels, 1,
                                                 norm_cfg=None if no_norm_on_lateral else norm_cfg, **common))
            self.fpn_convs.append(ConvModule(out_channels, out_channels, 3, padding=1, norm_cfg=norm_cfg, **common))
        extra_levels = num_outs - self.backbone_end_level + start_level
        if self.add_extra_convs and extra_levels >= 1:
            for i in range(extra_levels):
                src = in_channels[self.backbone_end_level - 1] if i == 0 and self.add_extra_convs == "on_input" \
                    else out_channels
                self.fpn_convs.append(ConvModule(src, out_channels, 3, stride=2, padding=1, norm_cfg=norm_cfg,
                                                 **common))
        self._init_convs()

    def _init_convs(self) -> None:
        # MMSeg's FPN default init_cfg: Xavier (uniform) on every Conv2d, zero bias.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        if len(inputs) != self.num_ins:
            raise ValueError(f"FPN expects {self.num_ins} inputs, got {len(inputs)}")
        laterals: List[torch.Tensor] = [conv(inputs[i + self.start_level]) for i, conv in enumerate(self.lateral_convs)]
        used = len(laterals)
        for i in range(used - 1, 0, -1):
            if "scale_factor" in self.upsample_cfg:
                up = resize(laterals[i], **self.upsample_cfg)
            else:
                up = resize(laterals[i], size=laterals[i - 1].shape[2:], **self.upsample_cfg)
            laterals[i - 1] = laterals[i - 1] + up
        outs = [self.fpn_convs[i](laterals[i]) for i in range(used)]
        if self.num_outs > used:
            if not self.add_extra_convs:
                # Extra levels by subsampling (max-pool with kernel 1, stride 2), as Faster R-CNN's FPN.
                for _ in range(self.num_outs - used):
                    outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            else:
                source = {"on_input": lambda: inputs[self.backbone_end_level - 1],
                          "on_lateral": lambda: laterals[-1], "on_output": lambda: outs[-1]}[self.add_extra_convs]()
                outs.append(self.fpn_convs[used](source))
                for i in range(used + 1, self.num_outs):
                    x = F.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
                    outs.append(self.fpn_convs[i](x))
        return tuple(outs)
