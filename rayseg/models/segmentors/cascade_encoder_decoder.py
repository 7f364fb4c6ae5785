"""``CascadeEncoderDecoder`` (MMSeg): a chain of decode heads, each after the first reading the previous one's
logits (OCRNet: FCNHead → OCRHead). The last head gives the output; every head is trained.

``decode_head`` is a list of ``num_stages`` head configs, kept as ``model.decode_head`` (an ``nn.ModuleList``:
checkpoint keys ``decode_head.0.…``, ``decode_head.1.…`` as in MMSeg). Losses are prefixed ``decode_0.``,
``decode_1.``… (and ``aux.`` for auxiliary heads), as MMSeg names them.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models.heads.cascade_decode_head import BaseCascadeDecodeHead
from rayseg.models.segmentors.encoder_decoder import EncoderDecoder
from rayseg.models.utils import add_prefix, resize
from rayseg.registry import HEADS, MODELS, build


@MODELS.register()
class CascadeEncoderDecoder(EncoderDecoder):
    """Backbone (+ neck) + ``num_stages`` cascaded decode heads (+ auxiliary heads).

    Args:
        num_stages: number of decode heads; ``len(decode_head)`` must equal it (at least 2).
        decode_head: list of head configs; the first is a plain decode head (e.g. FCNHead), the others
            cascade heads (``BaseCascadeDecodeHead``, e.g. OCRHead).
        Other arguments: as ``EncoderDecoder``. ``num_classes`` and ``align_corners`` are the last head's.
    """

    def __init__(self, num_stages: int, backbone: Dict[str, Any], decode_head: Sequence[Dict[str, Any]],
                 neck: Optional[Dict[str, Any]] = None,
                 auxiliary_head: Union[None, Dict[str, Any], Sequence[Dict[str, Any]]] = None,
                 train_cfg: Optional[Dict[str, Any]] = None, test_cfg: Optional[Dict[str, Any]] = None,
                 pretrained: Optional[str] = None, init_cfg: Optional[Dict[str, Any]] = None):
        if not isinstance(num_stages, int) or num_stages < 2:
            raise ConfigError(f"CascadeEncoderDecoder: num_stages must be an int >= 2, got {num_stages!r}")
        if not isinstance(decode_head, (list, tuple)) or len(decode_head) != num_stages:
            raise ConfigError(f"CascadeEncoderDecoder: decode_head must be a list of num_stages={num_stages} head "
                              f"configs, got {decode_head!r}")
        # The base class builds the first head as ``decode_head``; the rest join it in a ModuleList below,
        # so each head is built once and the modules keep MMSeg's order (backbone, neck, decode_head, aux).
        super().__init__(backbone=backbone, decode_head=decode_head[0], neck=neck, auxiliary_head=auxiliary_head,
                         train_cfg=train_cfg, test_cfg=test_cfg, pretrained=pretrained, init_cfg=init_cfg)
        self.num_stages = num_stages
        heads = [self.decode_head]
        for i, cfg in enumerate(decode_head[1:], start=1):
            head = build(cfg, HEADS)
            if not isinstance(head, BaseCascadeDecodeHead):
                raise ConfigError(f"CascadeEncoderDecoder: decode_head.{i} ({type(head).__name__}) is not a cascade "
                                  "head (one reading the previous head's logits, e.g. OCRHead)")
            heads.append(head)
        if isinstance(heads[0], BaseCascadeDecodeHead):
            raise ConfigError(f"CascadeEncoderDecoder: decode_head.0 ({type(heads[0]).__name__}) must be a plain "
                              "decode head (e.g. FCNHead): nothing precedes it")
        self.decode_head = nn.ModuleList(heads)
        self.align_corners = heads[-1].align_corners
        self.num_classes = heads[-1].num_classes

    def _decode(self, x: Sequence[torch.Tensor]) -> torch.Tensor:
        out = self.decode_head[0].forward_test(x)
        for head in self.decode_head[1:]:
            out = head.forward_test(x, out)
        return out

    def encode_decode(self, img: torch.Tensor) -> torch.Tensor:
        """The last head's logits resized (bilinear) to the input size."""
        out = self._decode(self.extract_feat(img))
        return resize(out, size=img.shape[2:], mode="bilinear", align_corners=self.align_corners)

    def forward_train(self, img: torch.Tensor, gt_semantic_seg: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Loss dict: ``decode_0.*``, ``decode_1.*``… then the auxiliary heads' (``aux.*`` / ``aux_i.*``)."""
        if gt_semantic_seg.dim() == 3:
            gt_semantic_seg = gt_semantic_seg.unsqueeze(1)
        x = self.extract_feat(img)
        losses = add_prefix(self.decode_head[0].forward_train(x, gt_semantic_seg), "decode_0")
        prev: Optional[torch.Tensor] = None
        for i in range(1, self.num_stages):
            # As MMSeg: the previous stage runs again to give this stage its input (in train mode, so its
            # BatchNorm statistics see the batch twice, exactly as in MMSeg's training).
            prev = self.decode_head[0].forward(x) if i == 1 else self.decode_head[i - 1].forward(x, prev)
            losses.update(add_prefix(self.decode_head[i].forward_train(x, prev, gt_semantic_seg), f"decode_{i}"))
        if isinstance(self.auxiliary_head, nn.ModuleList):
            for idx, head in enumerate(self.auxiliary_head):
                losses.update(add_prefix(head.forward_train(x, gt_semantic_seg), f"aux_{idx}"))
        elif self.auxiliary_head is not None:
            losses.update(add_prefix(self.auxiliary_head.forward_train(x, gt_semantic_seg), "aux"))
        return losses
