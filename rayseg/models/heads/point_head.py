"""PointHead (MMSeg, PointRend): refines the previous head's logits at uncertain points with a point-wise MLP
on features sampled there (``point_sample``: ``F.grid_sample`` as ``mmcv.ops.point_sample``).

Training (``forward_train``) samples points by uncertainty (``num_points``, ``oversample_ratio``,
``importance_sample_ratio``) and returns MMSeg's point losses (``pointloss_ce``, ``acc_point``). Inference
(``forward``) is MMSeg's subdivision: ``subdivision_steps`` times, upsample the logits by ``scale_factor`` and
replace the ``subdivision_num_points`` most uncertain ones by the MLP's. MMSeg reads these settings from the
segmentor's ``train_cfg`` / ``test_cfg``; here they are the head's own arguments (same names and defaults as
MMSeg's pointrend config).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from rayseg.errors import ConfigError
from rayseg.models.heads.cascade_decode_head import BaseCascadeDecodeHead
from rayseg.models.heads.decode_head import BaseDecodeHead, accuracy
from rayseg.models.utils import build_activation_layer, kaiming_init, resize
from rayseg.registry import HEADS, check_kwargs


def point_sample(input: torch.Tensor, points: torch.Tensor, align_corners: bool = False,
                 **kwargs: Any) -> torch.Tensor:
    """``mmcv.ops.point_sample``: sample ``input`` (N, C, H, W) at ``points`` (N, P, 2) in [0, 1] × [0, 1]
    (x, y) → (N, C, P)."""
    output = F.grid_sample(input, points.unsqueeze(2) * 2.0 - 1.0, align_corners=align_corners, **kwargs)
    return output.squeeze(3)


def calculate_uncertainty(seg_logits: torch.Tensor) -> torch.Tensor:
    """Second-best minus best logit (N, 1, ...): highest where the top two classes are closest."""
    top2 = torch.topk(seg_logits, k=2, dim=1)[0]
    return (top2[:, 1] - top2[:, 0]).unsqueeze(1)


class PointFC(nn.Module):
    """mmcv ``ConvModule`` with ``conv_cfg=Conv1d`` and no norm: ``conv`` (1×1 Conv1d) then ``activate``."""

    def __init__(self, in_channels: int, out_channels: int, act_cfg: Optional[Dict]):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size=1)
        self.activate = build_activation_layer(act_cfg) if act_cfg is not None else None
        kaiming_init(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        return self.activate(x) if self.activate is not None else x


@HEADS.register()
class PointHead(BaseCascadeDecodeHead):
    """PointRend's point head; ``forward(inputs, prev_output)`` → refined logits.

    Args:
        num_fcs: point-wise fc layers (1×1 Conv1d) of ``channels`` each.
        coarse_pred_each_layer: concatenate the coarse logits to every fc layer's output.
        conv_cfg: only ``{type: Conv1d}``; norm_cfg: only None (as MMSeg's PointRend).
        num_points, oversample_ratio, importance_sample_ratio: training point sampling (MMSeg ``train_cfg``).
        subdivision_steps, subdivision_num_points, scale_factor: inference subdivision (MMSeg ``test_cfg``).
        **kwargs: BaseDecodeHead arguments; ``input_transform`` is always ``'multiple_select'``.

    The classifier is ``fc_seg`` (a Conv1d, MMSeg's name); ``conv_seg`` is an alias of it.
    """

    def __init__(self, num_fcs: int = 3, coarse_pred_each_layer: bool = True,
                 conv_cfg: Optional[Dict] = dict(type="Conv1d"), norm_cfg: Optional[Dict] = None,
                 act_cfg: Optional[Dict] = dict(type="ReLU", inplace=False), num_points: int = 2048,
                 oversample_ratio: float = 3, importance_sample_ratio: float = 0.75, subdivision_steps: int = 2,
                 subdivision_num_points: int = 8196, scale_factor: float = 2, **kwargs: Any):
        check_kwargs(BaseDecodeHead.__init__, kwargs, "head 'PointHead'")
        transform = kwargs.pop("input_transform", "multiple_select")
        if transform != "multiple_select":
            raise ConfigError(f"PointHead: input_transform is always 'multiple_select', got {transform!r}")
        if conv_cfg is not None and dict(conv_cfg) != {"type": "Conv1d"}:
            raise ConfigError(f"PointHead: conv_cfg must be {{type: Conv1d}}, got {conv_cfg!r}")
        if norm_cfg is not None:
            raise ConfigError(f"PointHead: norm_cfg must be null (point-wise fcs have no norm), got {norm_cfg!r}")
        if not (oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1):
            raise ConfigError(f"PointHead: need oversample_ratio >= 1 and 0 <= importance_sample_ratio <= 1, got "
                              f"{oversample_ratio!r}, {importance_sample_ratio!r}")
        if not (isinstance(subdivision_steps, int) and subdivision_steps >= 0 and subdivision_num_points > 0):
            raise ConfigError(f"PointHead: need subdivision_steps >= 0 and subdivision_num_points > 0, got "
                              f"{subdivision_steps!r}, {subdivision_num_points!r}")
        super().__init__(input_transform="multiple_select", conv_cfg=conv_cfg, norm_cfg=norm_cfg, act_cfg=act_cfg,
                         **kwargs)
        self.num_fcs, self.coarse_pred_each_layer = num_fcs, coarse_pred_each_layer
        self.num_points, self.oversample_ratio = num_points, oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.subdivision_steps, self.subdivision_num_points = subdivision_steps, subdivision_num_points
        self.scale_factor = scale_factor
        fc_in = sum(self.in_channels) + self.num_classes
        self.fcs = nn.ModuleList()
        for _ in range(num_fcs):
            self.fcs.append(PointFC(fc_in, self.channels, act_cfg))
            fc_in = self.channels + (self.num_classes if coarse_pred_each_layer else 0)
        self.fc_seg = nn.Conv1d(fc_in, self.num_classes, kernel_size=1)
        # MMSeg: plain Dropout on (N, C, P) point features, and no conv_seg (``conv_seg`` aliases fc_seg).
        self.dropout = nn.Dropout(self.dropout_ratio) if self.dropout_ratio > 0 else None
        del self.conv_seg
        self.init_weights()

    @property
    def conv_seg(self) -> nn.Conv1d:  # type: ignore[override]
        return self.fc_seg

    def cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.fc_seg(feat)

    def forward_points(self, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """Point logits (N, num_classes, P) from fine features (N, ΣC, P) and coarse logits (N, K, P)."""
        x = torch.cat([fine, coarse], dim=1)
        for fc in self.fcs:
            x = fc(x)
            if self.coarse_pred_each_layer:
                x = torch.cat([x, coarse], dim=1)
        return self.cls_seg(x)

    def _point_logits(self, x: Sequence[torch.Tensor], prev_output: torch.Tensor,
                      points: torch.Tensor) -> torch.Tensor:
        fine = torch.cat([point_sample(f, points, align_corners=self.align_corners) for f in x], dim=1)
        coarse = point_sample(prev_output, points, align_corners=self.align_corners)
        return self.forward_points(fine, coarse)

    def get_points_test(self, seg_logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Indices (N, P) into H·W of the most uncertain cells and their centres (N, P, 2) in [0, 1]²."""
        uncertainty = calculate_uncertainty(seg_logits)
        n, _, height, width = uncertainty.shape
        num_points = min(height * width, self.subdivision_num_points)
        point_indices = uncertainty.reshape(n, height * width).topk(num_points, dim=1)[1]
        xs = 0.5 / width + (point_indices % width).float() / width
        ys = 0.5 / height + torch.div(point_indices, width, rounding_mode="floor").float() / height
        return point_indices, torch.stack([xs, ys], dim=2)

    def get_points_train(self, seg_logits: torch.Tensor) -> torch.Tensor:
        """(N, num_points, 2): the most uncertain of ``oversample_ratio``× random points, then random ones."""
        n = seg_logits.shape[0]
        num_sampled = int(self.num_points * self.oversample_ratio)
        coords = torch.rand(n, num_sampled, 2, device=seg_logits.device)
        uncertainty = calculate_uncertainty(point_sample(seg_logits, coords))
        num_uncertain = int(self.importance_sample_ratio * self.num_points)
        idx = torch.topk(uncertainty[:, 0, :], k=num_uncertain, dim=1)[1]
        coords = torch.gather(coords, 1, idx.unsqueeze(2).expand(-1, -1, 2))
        num_random = self.num_points - num_uncertain
        if num_random > 0:
            coords = torch.cat([coords, torch.rand(n, num_random, 2, device=seg_logits.device)], dim=1)
        return coords

    def forward(self, inputs: Sequence[torch.Tensor], prev_output: torch.Tensor) -> torch.Tensor:
        """Subdivision inference: the previous logits refined ``subdivision_steps`` times."""
        x = self._transform_inputs(inputs)
        refined = prev_output
        for _ in range(self.subdivision_steps):
            refined = resize(refined, scale_factor=self.scale_factor, mode="bilinear",
                             align_corners=self.align_corners)
            n, channels, height, width = refined.shape
            point_indices, points = self.get_points_test(refined)
            point_logits = self._point_logits(x, prev_output, points)
            index = point_indices.unsqueeze(1).expand(-1, channels, -1)
            refined = refined.reshape(n, channels, height * width).scatter(2, index, point_logits)
            refined = refined.reshape(n, channels, height, width)
        return refined

    def forward_train(self, inputs: Sequence[torch.Tensor], prev_output: torch.Tensor,
                      gt_semantic_seg: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Point losses (MMSeg names): ``point<loss_name>`` per loss, and ``acc_point``."""
        x = self._transform_inputs(inputs)
        with torch.no_grad():
            points = self.get_points_train(prev_output)
        point_logits = self._point_logits(x, prev_output, points)
        if gt_semantic_seg.dim() == 3:
            gt_semantic_seg = gt_semantic_seg.unsqueeze(1)
        label = point_sample(gt_semantic_seg.float(), points, mode="nearest", align_corners=self.align_corners)
        label = label.squeeze(1).long()
        modules = self.loss_decode if isinstance(self.loss_decode, nn.ModuleList) else [self.loss_decode]
        losses: Dict[str, torch.Tensor] = {}
        for loss_module in modules:
            losses["point" + loss_module.loss_name] = loss_module(point_logits, label, ignore_index=self.ignore_index)
        losses["acc_point"] = accuracy(point_logits, label, ignore_index=self.ignore_index)
        return losses
