"""Feature2Pyramid (MMSeg): turns a plain ViT's (BEiT's) same-stride maps into a 4-level pyramid."""
from __future__ import annotations

from typing import Any, Dict, Sequence, Tuple

import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models.utils import build_norm_layer
from rayseg.registry import NECKS


@NECKS.register()
class Feature2Pyramid(nn.Module):
    """Rescale input ``i`` by ``rescales[i]``: ×4 two stride-2 transposed convs with norm + GELU between
    (``upsample_4x``), ×2 one (``upsample_2x``), ×1 identity, ×0.5 / ×0.25 max pooling. Channels are unchanged.

    Args:
        embed_dim: channels of every input (and output).
        rescales: ``[4, 2, 1, 0.5]`` (MMSeg's default) or ``[2, 1, 0.5, 0.25]``; the ops follow that order.
        norm_cfg: the norm inside ``upsample_4x`` (MMSeg's default SyncBN).
    """

    def __init__(self, embed_dim: int, rescales: Sequence[float] = (4, 2, 1, 0.5),
                 norm_cfg: Dict[str, Any] = dict(type="SyncBN", requires_grad=True)):
        super().__init__()
        rescales = [float(k) for k in rescales]
        if rescales not in ([4.0, 2.0, 1.0, 0.5], [2.0, 1.0, 0.5, 0.25]):
            # MMSeg builds a layer per factor but applies them in one of these two fixed orders.
            raise ConfigError(f"Feature2Pyramid: rescales must be [4, 2, 1, 0.5] or [2, 1, 0.5, 0.25], got "
                              f"{rescales}")
        self.rescales = rescales
        self.in_channels, self.out_channels = [embed_dim] * 4, embed_dim
        self.upsample_4x = None
        for k in rescales:
            if k == 4:
                self.upsample_4x = nn.Sequential(
                    nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2),
                    build_norm_layer(norm_cfg, embed_dim)[1], nn.GELU(),
                    nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2))
            elif k == 2:
                self.upsample_2x = nn.Sequential(nn.ConvTranspose2d(embed_dim, embed_dim, kernel_size=2, stride=2))
            elif k == 1:
                self.identity = nn.Identity()
            elif k == 0.5:
                self.downsample_2x = nn.MaxPool2d(kernel_size=2, stride=2)
            else:
                self.downsample_4x = nn.MaxPool2d(kernel_size=4, stride=4)

    def forward(self, inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.rescales):
            raise ValueError(f"Feature2Pyramid: got {len(inputs)} inputs for {len(self.rescales)} rescales")
        if self.upsample_4x is not None:
            ops = [self.upsample_4x, self.upsample_2x, self.identity, self.downsample_2x]
        else:
            ops = [self.upsample_2x, self.identity, self.downsample_2x, self.downsample_4x]
        return tuple(op(x) for op, x in zip(ops, inputs))
