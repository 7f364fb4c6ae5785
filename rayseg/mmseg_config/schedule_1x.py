"""MMSeg 1.x ``optim_wrapper`` and ``param_scheduler`` → rayseg's ``optimizer``, ``optimizer_config``, ``amp`` and
``lr_config`` (MMCV 0.x policies).

``optim_wrapper.optimizer`` → ``optimizer``; ``paramwise_cfg`` and ``constructor`` move into it
(``DefaultOptimWrapperConstructor`` → ``DefaultOptimizerConstructor``); ``clip_grad=dict(max_norm, norm_type)`` →
``optimizer_config.grad_clip``; ``AmpOptimWrapper`` → ``amp: {enabled: true, dtype: fp16|bf16, loss_scale}``.

``param_scheduler``: one main lr scheduler, optionally after a warmup. ``PolyLR(eta_min, power)`` → ``poly``
(``min_lr``, ``power``), ``CosineAnnealingLR(eta_min)`` → ``CosineAnnealing``, ``MultiStepLR(milestones, gamma)``
/ ``StepLR(step_size, gamma)`` → ``step``. A warmup ``LinearLR(start_factor)`` / ``ConstantLR(factor)`` from
iteration 0 → ``warmup: linear|constant``, ``warmup_iters`` = its end, ``warmup_ratio`` = the factor. The main
scheduler must end at ``train_cfg.max_iters``; when it begins after the warmup (SegFormer's ``begin=1500``) the
decay is stretched over the whole run, as in MMCV 0.x, and a note gives the largest lr difference.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional

from rayseg.mmseg_config.report import Report

_CONSTRUCTORS = {"DefaultOptimWrapperConstructor": "DefaultOptimizerConstructor"}
_AMP_DTYPES = {None: "fp16", "float16": "fp16", "fp16": "fp16", "bfloat16": "bf16", "bf16": "bf16"}
_WARMUPS = {"LinearLR": "linear", "ConstantLR": "constant"}


def translate_optim_wrapper(ow: Any, report: Report) -> Dict[str, Any]:
    """The rayseg sections for an ``optim_wrapper`` dict (``optimizer``, ``optimizer_config``, maybe ``amp``)."""
    where = "optim_wrapper"
    out: Dict[str, Any] = {"optimizer_config": {}}
    if not isinstance(ow, dict):
        report.refuse(where, f"expected a dict, got {ow!r}")
        return out
    kind = ow.get("type", "OptimWrapper")
    if kind == "AmpOptimWrapper":
        dtype = ow.get("dtype")
        if dtype not in _AMP_DTYPES:
            report.refuse(f"{where}.dtype", f"{dtype!r}: rayseg's amp takes float16 or bfloat16")
        else:
            out["amp"] = {"enabled": True, "dtype": _AMP_DTYPES[dtype]}
            if _AMP_DTYPES[dtype] == "fp16":
                out["amp"]["loss_scale"] = ow.get("loss_scale", "dynamic")
    elif kind != "OptimWrapper":
        report.refuse(f"{where}.type", f"{kind!r}: only OptimWrapper and AmpOptimWrapper are translated")
    optimizer = ow.get("optimizer")
    if not isinstance(optimizer, dict):
        report.refuse(f"{where}.optimizer", f"expected the optimizer dict, got {optimizer!r}")
    else:
        out["optimizer"] = copy.deepcopy(optimizer)
    for key, value in ow.items():
        if key in ("type", "optimizer", "dtype", "loss_scale"):
            continue
        if key == "paramwise_cfg" and isinstance(optimizer, dict):
            out["optimizer"]["paramwise_cfg"] = copy.deepcopy(value)
        elif key == "constructor" and isinstance(optimizer, dict):
            out["optimizer"]["constructor"] = _CONSTRUCTORS.get(value, value)
        elif key == "clip_grad":
            if value is None:
                continue
            if not isinstance(value, dict) or value.get("type", "norm") != "norm" or "max_norm" not in value:
                report.refuse(f"{where}.clip_grad", f"{value!r}: only clipping by norm (max_norm, norm_type) "
                                                    "is translated")
            else:
                out["optimizer_config"]["grad_clip"] = {k: v for k, v in value.items() if k != "type"}
        elif key == "accumulative_counts" and value == 1:
            continue
        else:
            report.refuse(f"{where}.{key}", f"optim_wrapper's {key}={value!r} has no rayseg equivalent")
    return out


def _span(s: Dict[str, Any], where: str, report: Report, max_iters: Optional[int]) -> Optional[tuple]:
    """(begin, end) of a scheduler counted in iterations, or None when refused."""
    if s.get("by_epoch", True):
        report.refuse(f"{where}.by_epoch", "a scheduler counting epochs (by_epoch=True, MMEngine's default) has "
                                           "no rayseg equivalent; rayseg counts iterations: set by_epoch=False")
        return None
    begin, end = s.get("begin", 0), s.get("end")
    if end is None and s["type"] in ("MultiStepLR", "StepLR"):
        end = max_iters  # their milestones count from 0 whatever the end
    if not isinstance(begin, int) or not isinstance(end, int):
        # MMEngine's default end is infinity: a PolyLR or warmup without one never completes.
        report.refuse(where, f"begin and end must be iterations, got {begin!r} and {end!r}")
        return None
    return begin, end


def _main(s: Dict[str, Any], where: str, report: Report) -> Optional[Dict[str, Any]]:
    kind = s["type"]
    if kind == "PolyLR":
        return {"policy": "poly", "power": s.get("power", 1.0), "min_lr": s.get("eta_min", 0.0)}
    if kind == "CosineAnnealingLR":
        if s.get("eta_min_ratio") is not None:
            return {"policy": "CosineAnnealing", "min_lr_ratio": s["eta_min_ratio"]}
        return {"policy": "CosineAnnealing", "min_lr": s.get("eta_min", 0.0)}
    if kind == "MultiStepLR":
        return {"policy": "step", "step": list(s.get("milestones", [])), "gamma": s.get("gamma", 0.1)}
    if kind == "StepLR":
        return {"policy": "step", "step": s.get("step_size"), "gamma": s.get("gamma", 0.1)}
    report.refuse(f"{where}.type", f"{kind!r} is translated as a warmup only (before the main scheduler)")
    return None


_KNOWN_TYPES = ("PolyLR", "CosineAnnealingLR", "MultiStepLR", "StepLR", *_WARMUPS)
_KNOWN_ARGS = {"type", "begin", "end", "by_epoch", "convert_to_iter_based", "verbose", "eta_min", "power",
               "eta_min_ratio", "T_max", "milestones", "gamma", "step_size", "start_factor", "end_factor", "factor"}


def translate_param_scheduler(ps: Any, max_iters: Optional[int], report: Report) -> Optional[Dict[str, Any]]:
    """The ``lr_config`` for a ``param_scheduler`` (a dict or a list), or None when it cannot be translated."""
    steps: List[Any] = list(ps) if isinstance(ps, (list, tuple)) else [ps]
    if not all(isinstance(s, dict) and isinstance(s.get("type"), str) for s in steps) or not steps:
        report.refuse("param_scheduler", f"expected scheduler dicts with a type, got {ps!r}")
        return None
    where = [f"param_scheduler.{i}" if isinstance(ps, (list, tuple)) else "param_scheduler" for i in range(len(steps))]
    for s, w in zip(steps, where):
        if s["type"] not in _KNOWN_TYPES:
            report.refuse(f"{w}.type", f"{s['type']!r} has no rayseg lr policy equivalent (PolyLR, CosineAnnealingLR, "
                                       "MultiStepLR, StepLR, with a LinearLR/ConstantLR warmup, are translated)")
            return None
        for key in sorted(set(s) - _KNOWN_ARGS):
            report.refuse(f"{w}.{key}", f"{s['type']}'s {key} has no rayseg equivalent")
    spans = [_span(s, w, report, max_iters) for s, w in zip(steps, where)]
    if any(sp is None for sp in spans):
        return None
    warm = None
    if len(steps) == 2 and steps[0]["type"] in _WARMUPS:
        warm, steps, spans, where = (steps[0], spans[0]), steps[1:], spans[1:], where[1:]
    if len(steps) != 1:
        report.refuse("param_scheduler", "only one lr scheduler, optionally after one LinearLR/ConstantLR warmup, "
                                         "is translated")
        return None
    lr = _main(steps[0], where[0], report)
    if lr is None:
        return None
    (begin, end), total = spans[0], max_iters
    if total is not None and end != total:
        report.refuse(f"{where[0]}.end", f"the schedule ends at {end} but train_cfg.max_iters is {total}: rayseg's "
                                         "policies span the whole run")
        return None
    if steps[0]["type"] == "CosineAnnealingLR" and steps[0].get("T_max", end - begin) != end - begin:
        report.refuse(f"{where[0]}.T_max", "T_max other than end - begin has no rayseg equivalent")
        return None
    lr["by_epoch"] = False
    if warm is not None:
        (w, (w_begin, w_end)) = warm
        if w_begin != 0 or w.get("end_factor", 1.0) != 1.0 or begin not in (0, w_end):
            report.refuse(where[0].rsplit(".", 1)[0] + ".0", "a warmup must run from iteration 0 up to the factor 1.0, "
                          "before or under the main scheduler")
            return None
        lr.update(warmup=_WARMUPS[w["type"]], warmup_iters=w_end,
                  warmup_ratio=w.get("start_factor" if w["type"] == "LinearLR" else "factor", 1.0 / 3))
    if begin and (warm is None or lr["policy"] != "poly"):
        report.refuse(f"{where[0]}.begin", "a main scheduler starting after iteration 0 is translated only for "
                                           "PolyLR after a warmup")
        return None
    if begin:
        lower = 1.0 - ((end - begin) / end) ** float(lr["power"])
        report.note(where[0], f"PolyLR decays over iterations {begin}..{end}; rayseg (as MMCV 0.x) decays over "
                              f"0..{end} with the warmup on top: after the warmup the lr is lower by at most "
                              f"{100 * lower:.2f}%")
    return lr
