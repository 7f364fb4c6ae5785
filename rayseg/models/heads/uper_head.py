"""UPerHead (MMSeg, UPerNet): pyramid pooling on the top feature plus an FPN over all inputs, fused at stride 4."""
from __future__ import annotations

from typing import Any, List, Sequence

import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models.heads.decode_head import BaseDecodeHead
from rayseg.models.heads.psp_head import PPM
from rayseg.models.utils import ConvModule, resize
from rayseg.registry import HEADS, check_kwargs


@HEADS.register()
class UPerHead(BaseDecodeHead):
    """Unified Perceptual Parsing head.

    Always uses ``input_transform='multiple_select'``: ``in_channels`` and ``in_index`` are lists,
    ordered from the finest map to the coarsest. The PSP module (``psp_modules`` + ``bottleneck``)
    runs on the last (coarsest) input; every other input gets a 1×1 ``lateral_convs`` entry, a
    top-down sum and a 3×3 ``fpn_convs`` entry; all levels are upsampled to the first input and
    fused by ``fpn_bottleneck``. Logits come out at the first input's resolution.

    Args:
        pool_scales: output grid sizes of the pyramid poolings on the top feature.
        **kwargs: BaseDecodeHead arguments (unknown keys are rejected there). ``input_transform``
            may be omitted or given as ``'multiple_select'``.
    """

    def __init__(self, pool_scales: Sequence[int] = (1, 2, 3, 6), **kwargs: Any):
        # Check here (not only in BaseDecodeHead) so a typo gets a 'did you mean' hint.
        check_kwargs(BaseDecodeHead.__init__, kwargs, "head 'UPerHead'")
        transform = kwargs.pop("input_transform", "multiple_select")
        if transform != "multiple_select":
            raise ConfigError(f"UPerHead: input_transform is always 'multiple_select', got {transform!r}")
        if not isinstance(pool_scales, (list, tuple)) or not pool_scales:
            raise ConfigError(f"UPerHead: pool_scales must be a non-empty list, got {pool_scales!r}")
        self.pool_scales = tuple(pool_scales)
        super().__init__(input_transform="multiple_select", **kwargs)
        common = dict(conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        top = self.in_channels[-1]
        self.psp_modules = PPM(self.pool_scales, top, self.channels, align_corners=self.align_corners, **common)
        self.bottleneck = ConvModule(top + len(self.pool_scales) * self.channels, self.channels, 3, padding=1,
                                     **common)
        self.lateral_convs = nn.ModuleList()
        self.fpn_convs = nn.ModuleList()
        for in_channels in self.in_channels[:-1]:  # the top level's lateral is the PSP output
            # inplace=False as MMSeg: the lateral outputs are summed into afterwards.
            self.lateral_convs.append(ConvModule(in_channels, self.channels, 1, inplace=False, **common))
            self.fpn_convs.append(ConvModule(self.channels, self.channels, 3, padding=1, inplace=False, **common))
        self.fpn_bottleneck = ConvModule(len(self.in_channels) * self.channels, self.channels, 3, padding=1,
                                         **common)
        self.init_weights()

    def psp_forward(self, inputs: List[torch.Tensor]) -> torch.Tensor:
        """PSP module on the top feature (MMSeg's name)."""
        x = inputs[-1]
        return self.bottleneck(torch.cat([x] + self.psp_modules(x), dim=1))

    def _forward_feature(self, inputs: Any) -> torch.Tensor:
        inputs = self._transform_inputs(inputs)
        laterals = [conv(inputs[i]) for i, conv in enumerate(self.lateral_convs)]
        laterals.append(self.psp_forward(inputs))
        levels = len(laterals)
        # Top-down path: each level adds the upsampled coarser one (not in place: autograd needs the originals).
        for i in range(levels - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + resize(laterals[i], size=laterals[i - 1].shape[2:], mode="bilinear",
                                                       align_corners=self.align_corners)
        outs = [self.fpn_convs[i](laterals[i]) for i in range(levels - 1)] + [laterals[-1]]
        size = outs[0].shape[2:]
        outs = [outs[0]] + [resize(o, size=size, mode="bilinear", align_corners=self.align_corners) for o in outs[1:]]
        return self.fpn_bottleneck(torch.cat(outs, dim=1))

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.cls_seg(self._forward_feature(inputs))
