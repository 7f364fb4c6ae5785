"""DepthwiseSeparableFCNHead (Fast-SCNN's decode head).

Parameter names follow MMSeg/mmcv so checkpoints load: each separable conv has ``depthwise_conv`` and
``pointwise_conv`` ConvModules (``decode_head.convs.0.depthwise_conv.conv.weight``,
``decode_head.convs.0.pointwise_conv.bn.weight``).
"""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Dict, Optional


from rayseg.errors import ConfigError
from rayseg.models.heads.decode_head import BaseDecodeHead
from rayseg.models.heads.fcn_head import FCNHead
from rayseg.models.heads._sep_conv import DepthwiseSeparableConvModule
from rayseg.registry import HEADS


def _accepted_names() -> list:
    """Keyword arguments FCNHead and BaseDecodeHead accept (FCNHead forwards the rest to its base)."""
    names = []
    for cls in (FCNHead, BaseDecodeHead):
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if name != "self" and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY) \
                    and name not in names:
                names.append(name)
    return names


@HEADS.register()
class DepthwiseSeparableFCNHead(FCNHead):
    """FCNHead whose convs (and ``conv_cat``) are depthwise separable; the Fast-SCNN decode head.

    Args:
        dw_act_cfg: activation after each depthwise conv (None, MMSeg's default: none); the pointwise convs
            use ReLU as in MMSeg (the head's ``act_cfg`` is not used by the separable convs).
        **kwargs: FCNHead / BaseDecodeHead arguments; unknown keys are ConfigErrors naming the key.
    """

    def __init__(self, dw_act_cfg: Optional[Dict] = None, **kwargs: Any):
        # The registry cannot see through **kwargs, so check the keys against both parents here.
        accepted = _accepted_names()
        for key in kwargs:
            if key not in accepted:
                close = difflib.get_close_matches(key, accepted, n=3, cutoff=0.5)
                hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
                raise ConfigError(f"head 'DepthwiseSeparableFCNHead': unknown argument {key!r}.{hint} "
                                  f"Accepted: dw_act_cfg, {', '.join(accepted)}")
        if kwargs.get("num_convs", 2) < 1:
            raise ConfigError("DepthwiseSeparableFCNHead: num_convs must be >= 1")
        # Load pretrained weights only after the convs are replaced, or their keys would not match.
        init_cfg = kwargs.pop("init_cfg", None)
        super().__init__(**kwargs)
        self.init_cfg = init_cfg
        k = self.kernel_size
        sep = dict(kernel_size=k, padding=k // 2, norm_cfg=self.norm_cfg, dw_act_cfg=dw_act_cfg)
        self.convs[0] = DepthwiseSeparableConvModule(self.in_channels, self.channels, **sep)
        for i in range(1, self.num_convs):
            self.convs[i] = DepthwiseSeparableConvModule(self.channels, self.channels, **sep)
        if self.concat_input:
            self.conv_cat = DepthwiseSeparableConvModule(self.in_channels + self.channels, self.channels, **sep)
        self.init_weights()
