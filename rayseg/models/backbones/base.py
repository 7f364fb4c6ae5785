"""``BaseBackbone``: what every backbone shares — pretrained/init_cfg loading, MMSeg's default init,
``frozen_stages`` and ``norm_eval`` kept across ``train()``."""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models.utils import constant_init, kaiming_init, load_init_weights


class BaseBackbone(nn.Module):
    """Base class of the registered backbones.

    Args:
        norm_eval: keep every BatchNorm in eval mode while training (frozen running statistics, as for
            a fine-tuned pretrained backbone at small batch sizes).
        pretrained: checkpoint (path, URL or model-zoo name) loaded by ``init_weights``.
        init_cfg: ``{type: Pretrained, checkpoint, prefix}``, the MMSeg 1.x spelling of ``pretrained``.

    A subclass builds its layers, then calls ``self.init_weights()``; it overrides ``_init_layers`` for
    a different default initialisation and ``_freeze_stages`` to freeze its first stages.
    """

    def __init__(self, norm_eval: bool = False, pretrained: Optional[str] = None,
                 init_cfg: Optional[Dict[str, Any]] = None):
        super().__init__()
        if pretrained is not None and init_cfg is not None:
            raise ConfigError(f"{type(self).__name__}: give either pretrained or init_cfg, not both")
        self.norm_eval = bool(norm_eval)
        self.pretrained, self.init_cfg = pretrained, init_cfg

    def _init_layers(self) -> None:
        """MMSeg's default: Kaiming-normal convs (fan_out), norm layers weight 1 / bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                kaiming_init(m)
            elif isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)):
                constant_init(m, 1)

    def init_weights(self) -> None:
        """Default-initialise every layer, then load ``pretrained`` / ``init_cfg`` when given."""
        self._init_layers()
        load_init_weights(self, self.pretrained, self.init_cfg)

    def _freeze_stages(self) -> None:
        """Put frozen stages in eval mode and stop their gradients; nothing to freeze by default."""

    @staticmethod
    def _freeze(*modules: nn.Module) -> None:
        """Eval mode and no gradients for ``modules`` (what freezing a stage means in MMSeg)."""
        for module in modules:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def _forward_stages(self, x: torch.Tensor, stage_names: Sequence[str]) -> Tuple[torch.Tensor, ...]:
        """Run the stages named ``stage_names`` in order; return the outputs of those in ``out_indices``."""
        outs = []
        for i, name in enumerate(stage_names):
            x = getattr(self, name)(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def train(self, mode: bool = True) -> "BaseBackbone":
        """Switch mode, keeping frozen stages (and, with ``norm_eval``, all BatchNorms) in eval mode."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self
