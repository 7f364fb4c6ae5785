"""DAHead (MMSeg, Dual Attention Network): a position-attention branch (PAM) and a channel-attention branch
(CAM), each with its own classifier, and a classifier on their sum.

MMSeg trains all three outputs (losses prefixed ``pam_cam.``, ``pam.``, ``cam.``) and predicts with
``pam_cam`` only. Here ``forward`` (inference, export, the shared head API) returns the ``pam_cam`` logits
and ``forward_train`` computes the three losses.
"""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from rayseg.models.heads._self_attention import SelfAttentionBlock
from rayseg.models.heads.decode_head import BaseDecodeHead
from rayseg.models.utils import ConvModule, add_prefix
from rayseg.registry import HEADS, check_kwargs


class Scale(nn.Module):
    """mmcv's ``Scale``: multiply by one learnable scalar (``scale``)."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale, dtype=torch.float))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class PAM(SelfAttentionBlock):
    """Position attention: plain-conv self-attention over pixels, added back scaled by ``gamma`` (starts at 0)."""

    def __init__(self, in_channels: int, channels: int):
        super().__init__(key_in_channels=in_channels, query_in_channels=in_channels, channels=channels,
                         out_channels=in_channels, share_key_query=False, query_downsample=None,
                         key_downsample=None, key_query_num_convs=1, key_query_norm=False, value_out_num_convs=1,
                         value_out_norm=False, matmul_norm=False, with_out=False, conv_cfg=None, norm_cfg=None,
                         act_cfg=None)
        self.gamma = Scale(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.gamma(super().forward(x, x)) + x


class CAM(nn.Module):
    """Channel attention: channels attend to each other (``softmax(max - energy)``), scaled by ``gamma``."""

    def __init__(self):
        super().__init__()
        self.gamma = Scale(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        query = x.reshape(n, c, -1)
        energy = torch.bmm(query, query.permute(0, 2, 1))
        energy_new = torch.max(energy, -1, keepdim=True)[0].expand_as(energy) - energy
        out = torch.bmm(F.softmax(energy_new, dim=-1), query).reshape(n, c, h, w)
        return self.gamma(out) + x


@HEADS.register()
class DAHead(BaseDecodeHead):
    """Dual attention head.

    Args:
        pam_channels: channels of the position attention's keys and queries.
        **kwargs: BaseDecodeHead arguments (unknown keys are rejected there).
    """

    def __init__(self, pam_channels: int, **kwargs: Any):
        check_kwargs(BaseDecodeHead.__init__, kwargs, "head 'DAHead'")
        super().__init__(**kwargs)
        self.pam_channels = pam_channels
        common = dict(conv_cfg=self.conv_cfg, norm_cfg=self.norm_cfg, act_cfg=self.act_cfg)
        # Registered in MMSeg's order.
        self.pam_in_conv = ConvModule(self.in_channels, self.channels, 3, padding=1, **common)
        self.pam = PAM(self.channels, pam_channels)
        self.pam_out_conv = ConvModule(self.channels, self.channels, 3, padding=1, **common)
        self.pam_conv_seg = nn.Conv2d(self.channels, self.num_classes, kernel_size=1)
        self.cam_in_conv = ConvModule(self.in_channels, self.channels, 3, padding=1, **common)
        self.cam = CAM()
        self.cam_out_conv = ConvModule(self.channels, self.channels, 3, padding=1, **common)
        self.cam_conv_seg = nn.Conv2d(self.channels, self.num_classes, kernel_size=1)
        self.init_weights()

    def _branch_logits(self, conv_seg: nn.Module, feat: torch.Tensor) -> torch.Tensor:
        if self.dropout is not None:
            feat = self.dropout(feat)
        return conv_seg(feat)

    def forward_all(self, inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(pam_cam, pam, cam)`` logits, as MMSeg's ``DAHead.forward``."""
        x = self._transform_inputs(inputs)
        pam_feat = self.pam_out_conv(self.pam(self.pam_in_conv(x)))
        cam_feat = self.cam_out_conv(self.cam(self.cam_in_conv(x)))
        pam_out = self._branch_logits(self.pam_conv_seg, pam_feat)
        cam_out = self._branch_logits(self.cam_conv_seg, cam_feat)
        return self.cls_seg(pam_feat + cam_feat), pam_out, cam_out

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The ``pam_cam`` logits (what MMSeg predicts with)."""
        x = self._transform_inputs(inputs)
        pam_feat = self.pam_out_conv(self.pam(self.pam_in_conv(x)))
        cam_feat = self.cam_out_conv(self.cam(self.cam_in_conv(x)))
        return self.cls_seg(pam_feat + cam_feat)

    def forward_train(self, inputs: Sequence[torch.Tensor], gt_semantic_seg: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Losses of all three outputs, prefixed ``pam_cam.``, ``pam.`` and ``cam.`` as in MMSeg."""
        pam_cam, pam, cam = self.forward_all(inputs)
        losses: Dict[str, torch.Tensor] = {}
        for prefix, logits in (("pam_cam", pam_cam), ("pam", pam), ("cam", cam)):
            losses.update(add_prefix(self.losses(logits, gt_semantic_seg), prefix))
        return losses
