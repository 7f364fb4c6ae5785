"""``BaseCascadeDecodeHead``: a decode head that also reads the previous head's logits (MMSeg's cascade heads,
e.g. OCRHead after an FCNHead in OCRNet). Built by ``CascadeEncoderDecoder``."""
from __future__ import annotations

from typing import Dict, Sequence

import torch

from rayseg.models.heads.decode_head import BaseDecodeHead


class BaseCascadeDecodeHead(BaseDecodeHead):
    """Base of cascade heads; subclasses implement ``forward(inputs, prev_output) -> logits``, where
    ``prev_output`` is the previous stage's logits (N, num_classes of that head, h, w)."""

    def forward(self, inputs: Sequence[torch.Tensor], prev_output: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def forward_train(self, inputs: Sequence[torch.Tensor], prev_output: torch.Tensor,  # type: ignore[override]
                      gt_semantic_seg: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Logits from the features and the previous stage's logits, then losses."""
        return self.losses(self.forward(inputs, prev_output), gt_semantic_seg)

    def forward_test(self, inputs: Sequence[torch.Tensor],  # type: ignore[override]
                     prev_output: torch.Tensor) -> torch.Tensor:
        return self.forward(inputs, prev_output)
