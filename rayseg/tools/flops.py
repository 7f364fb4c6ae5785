"""Parameters and FLOPs of a segmentor's inference, total and per module (MMSeg's ``get_flops.py``).

FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` over one whole-image ``encode_decode``
(backbone, neck, decode head and the final resize; auxiliary heads do not run at inference), whatever
``test_cfg.mode`` says, as MMSeg's tool measures. torch counts a multiply-add as 2 FLOPs (convolutions,
matrix products, attention); MMSeg's tool (mmcv / mmengine / fvcore) counts it as 1, so its "Flops"
are the MACs printed beside them here. Element-wise operations, pooling, normalisation and resizing
are not counted (nor are they by MMSeg).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
import torch.nn as nn

from rayseg.tools.model import run_checked


@dataclass
class ModuleStat:
    """One module of the model: dotted name (``""`` for the model), class, depth, parameters, FLOPs."""

    name: str
    type: str
    depth: int
    params: int
    flops: int


@dataclass
class FlopsReport:
    """What :func:`count_flops` measured; :meth:`format` prints it as MMSeg's tool does, plus a table."""

    shape: Tuple[int, int]
    flops: int  # torch's count: 2 per multiply-add
    params: int  # every parameter, auxiliary heads included (what training updates)
    inference_params: int  # without auxiliary heads (what inference and an export hold)
    modules: List[ModuleStat] = field(default_factory=list)

    @property
    def macs(self) -> int:
        """Multiply-adds: MMSeg's "Flops"."""
        return self.flops // 2

    def to_dict(self) -> Dict[str, object]:
        return {"shape": list(self.shape), "flops": self.flops, "macs": self.macs, "params": self.params,
                "inference_params": self.inference_params,
                "modules": [vars(m) for m in self.modules]}

    def table(self, depth: int = 2) -> str:
        """Per-module rows down to ``depth`` (0: the model only), indented by depth; modules with
        neither parameters nor FLOPs are left out."""
        rows = [m for m in self.modules if m.depth <= depth and (m.params or m.flops)]
        header = ("module", "type", "params", "%", "FLOPs", "%")
        lines = [[("  " * m.depth) + (m.name or "model"), m.type, human(m.params), _percent(m.params, self.params),
                  human(m.flops), _percent(m.flops, self.flops)] for m in rows]
        widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
        fmt = "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
        out = [fmt.format(*header), fmt.format(*("-" * w for w in widths))]
        out += [fmt.format(*row) for row in lines]
        return "\n".join(out)

    def format(self, depth: int = 2) -> str:
        h, w = self.shape
        bar = "=" * 60
        return "\n".join([
            bar,
            f"Input shape: (1, 3, {h}, {w})",
            f"Flops: {human(self.macs)}MACs (MMSeg's count)  =  {human(self.flops)}FLOPs (torch.utils.flop_counter)",
            f"Params: {human(self.params)} ({human(self.inference_params)} at inference, without auxiliary heads)",
            bar,
            "",
            self.table(depth),
        ])


def human(n: int) -> str:
    """``1234567`` → ``'1.235 M'``: three decimals and an SI prefix, as mmcv prints FLOPs and params."""
    for div, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3f} {prefix}"
    return f"{n} "


def _fill_uncalled(modules: List[ModuleStat]) -> None:
    """FLOPs for modules the counter never saw called (``decode_head`` runs through ``forward_test``,
    not ``__call__``): the sum of their direct children's, deepest first."""
    for i in range(len(modules) - 1, -1, -1):
        parent = modules[i]
        if parent.flops == 0:
            prefix = parent.name + "." if parent.name else ""
            parent.flops = sum(m.flops for m in modules if m.depth == parent.depth + 1 and m.name.startswith(prefix))


def _percent(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}" if whole else "-"


def _aux_params(model: nn.Module) -> int:
    aux = getattr(model, "auxiliary_head", None)
    return sum(p.numel() for p in aux.parameters()) if isinstance(aux, nn.Module) else 0


def count_flops(model: nn.Module, shape: Tuple[int, int] = (512, 1024)) -> FlopsReport:
    """FLOPs of ``model(img)`` (``{"out": encode_decode(img)}``) on one (1, 3, H, W) image, and parameters,
    per module.

    ``model`` is a segmentor (``EncoderDecoder``), evaluated as it is (put it in eval mode first). A
    module called several times has its FLOPs summed.
    """
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.zeros(1, 3, *shape, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        run_checked(model, x, shape=shape)
    # The counter keys a module by the root's class name and its dotted path: "EncoderDecoder.backbone.stem".
    root = type(model).__name__
    counts = {key: int(sum(ops.values())) for key, ops in counter.get_flop_counts().items()}
    modules = [ModuleStat(name=name, type=type(module).__name__, depth=name.count(".") + 1 if name else 0,
                          params=sum(p.numel() for p in module.parameters()),
                          flops=counts.get(f"{root}.{name}" if name else root, 0))
               for name, module in model.named_modules()]
    _fill_uncalled(modules)
    params = sum(p.numel() for p in model.parameters())
    return FlopsReport(shape=tuple(shape), flops=int(counter.get_total_flops()), params=params,
                       inference_params=params - _aux_params(model), modules=modules)
