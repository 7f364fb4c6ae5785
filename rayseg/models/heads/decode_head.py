"""``BaseDecodeHead``: input selection, the final 1×1 classifier and the loss dict (MMSeg semantics)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models.utils import load_init_weights, resize
from rayseg.registry import LOSSES, PIXEL_SAMPLERS, build

LossCfg = Union[Dict[str, Any], Sequence[Dict[str, Any]]]


# MMSeg adds a tiny epsilon to the pixel count so an all-ignored batch yields 0 instead of NaN.
_EPS_COUNT = torch.finfo(torch.float32).eps


def accuracy(pred: torch.Tensor, target: torch.Tensor, ignore_index: Optional[int] = 255) -> torch.Tensor:
    """Top-1 pixel accuracy in percent over non-ignored pixels (0 when every pixel is ignored)."""
    with torch.no_grad():
        valid = target != ignore_index if ignore_index is not None else torch.ones_like(target, dtype=torch.bool)
        correct = (pred.argmax(dim=1) == target) & valid
        return correct.sum().float() * (100.0 / (valid.sum().float() + _EPS_COUNT))


class BaseDecodeHead(nn.Module):
    """Base of all decode heads; subclasses implement ``forward(inputs) -> logits``.

    Args:
        in_channels: channels of the selected input(s); a list with ``input_transform``.
        channels: channels of the head's internal features (input to ``conv_seg``).
        num_classes: number of output classes.
        dropout_ratio: Dropout2d before ``conv_seg`` (0 disables it).
        conv_cfg, norm_cfg, act_cfg: layer configs for the head's ConvModules.
        in_index: which backbone output(s) to use (int, or list with ``input_transform``).
        input_transform: None, ``'resize_concat'`` (resize to the first selected map and concatenate)
            or ``'multiple_select'`` (pass the selected list on).
        loss_decode: one loss config or a list; terms with the same ``loss_name`` are summed.
        ignore_index: label value excluded from losses and accuracy.
        sampler: a pixel sampler config (e.g. ``{type: OHEMPixelSampler, thresh: 0.7, min_kept: 100000}``,
            built with ``context=self``) or an object with ``sample(seg_logit, seg_label) -> weight``.
        align_corners: ``align_corners`` for every bilinear resize in the head.
        init_cfg: None (MMSeg default: conv_seg ~ N(0, 0.01)) or ``{type: Pretrained, checkpoint, prefix}``.
    """

    def __init__(self, in_channels: Union[int, Sequence[int]], channels: int, *, num_classes: int,
                 dropout_ratio: float = 0.1, conv_cfg: Optional[Dict] = None, norm_cfg: Optional[Dict] = None,
                 act_cfg: Optional[Dict] = dict(type="ReLU"), in_index: Union[int, Sequence[int]] = -1,
                 input_transform: Optional[str] = None,
                 loss_decode: LossCfg = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0),
                 ignore_index: int = 255, sampler: Any = None, align_corners: bool = False,
                 init_cfg: Optional[Dict[str, Any]] = None):
        super().__init__()
        self._init_inputs(in_channels, in_index, input_transform)
        self.channels = channels
        self.num_classes = num_classes
        self.dropout_ratio = dropout_ratio
        self.conv_cfg, self.norm_cfg, self.act_cfg = conv_cfg, norm_cfg, act_cfg
        self.ignore_index = ignore_index
        self.align_corners = align_corners
        self.init_cfg = init_cfg
        if isinstance(loss_decode, dict):
            self.loss_decode = build(loss_decode, LOSSES)
        elif isinstance(loss_decode, (list, tuple)):
            self.loss_decode = nn.ModuleList([build(cfg, LOSSES) for cfg in loss_decode])
        else:
            raise ConfigError(f"loss_decode must be a dict or a list of dicts, got {type(loss_decode).__name__}")
        if isinstance(sampler, dict):
            # After loss_decode and ignore_index are set: the sampler reads both from its head (MMSeg's context).
            sampler = build(sampler, PIXEL_SAMPLERS, context=self)
        self.sampler = sampler
        self.conv_seg = nn.Conv2d(channels, num_classes, kernel_size=1)
        self.dropout = nn.Dropout2d(dropout_ratio) if dropout_ratio > 0 else None

    def _init_inputs(self, in_channels: Any, in_index: Any, input_transform: Optional[str]) -> None:
        if input_transform not in (None, "resize_concat", "multiple_select"):
            raise ConfigError(f"input_transform must be None, 'resize_concat' or 'multiple_select', got {input_transform!r}")
        self.input_transform = input_transform
        self.in_index = in_index
        if input_transform is not None:
            if not isinstance(in_channels, (list, tuple)) or not isinstance(in_index, (list, tuple)) \
                    or len(in_channels) != len(in_index):
                raise ConfigError(f"input_transform {input_transform!r} needs in_channels and in_index lists of "
                                  f"equal length, got {in_channels!r} and {in_index!r}")
            self.in_index = list(in_index)
            self.in_channels = sum(in_channels) if input_transform == "resize_concat" else list(in_channels)
        else:
            if not isinstance(in_channels, int) or not isinstance(in_index, int):
                raise ConfigError(f"without input_transform, in_channels and in_index must be ints, "
                                  f"got {in_channels!r} and {in_index!r}")
            self.in_channels = in_channels

    def init_weights(self) -> None:
        """MMSeg's default: the classifier starts near zero so early logits are near-uniform."""
        nn.init.normal_(self.conv_seg.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.conv_seg.bias)
        load_init_weights(self, None, self.init_cfg)

    def _transform_inputs(self, inputs: Sequence[torch.Tensor]) -> Union[torch.Tensor, List[torch.Tensor]]:
        """Pick this head's input(s) from the backbone/neck outputs."""
        if self.input_transform == "resize_concat":
            selected = [inputs[i] for i in self.in_index]
            size = selected[0].shape[2:]
            return torch.cat([resize(x, size=size, mode="bilinear", align_corners=self.align_corners)
                              for x in selected], dim=1)
        if self.input_transform == "multiple_select":
            return [inputs[i] for i in self.in_index]
        return inputs[self.in_index]

    def cls_seg(self, feat: torch.Tensor) -> torch.Tensor:
        """Dropout then the 1×1 classifier."""
        if self.dropout is not None:
            feat = self.dropout(feat)
        return self.conv_seg(feat)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_train(self, inputs: Sequence[torch.Tensor], gt_semantic_seg: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Logits then losses (MMSeg's spelling)."""
        return self.losses(self.forward(inputs), gt_semantic_seg)

    def forward_test(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.forward(inputs)

    def losses(self, seg_logits: torch.Tensor, seg_label: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Loss dict: each loss under its ``loss_name`` (same names summed) plus detached ``acc_seg``.

        ``seg_label`` is (N,1,H,W) or (N,H,W); logits are upsampled to its size first.
        """
        if seg_label.dim() == 3:
            seg_label = seg_label.unsqueeze(1)
        seg_logits = resize(seg_logits, size=seg_label.shape[2:], mode="bilinear", align_corners=self.align_corners)
        seg_weight = self.sampler.sample(seg_logits, seg_label) if self.sampler is not None else None
        seg_label = seg_label.squeeze(1).long()
        loss: Dict[str, torch.Tensor] = {}
        modules = self.loss_decode if isinstance(self.loss_decode, nn.ModuleList) else [self.loss_decode]
        for loss_module in modules:
            value = loss_module(seg_logits, seg_label, weight=seg_weight, ignore_index=self.ignore_index)
            name = loss_module.loss_name
            loss[name] = loss[name] + value if name in loss else value
        loss["acc_seg"] = accuracy(seg_logits, seg_label, ignore_index=self.ignore_index)
        return loss
