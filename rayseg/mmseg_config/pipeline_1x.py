"""MMSeg 1.x pipelines → rayseg's (MMSeg 0.x) pipeline steps, and the model's ``data_preprocessor`` → the
``Normalize`` and ``Pad`` steps that MMSeg 0.x pipelines carried.

Step by step: ``Resize(scale=, keep_ratio=)`` → ``Resize(img_scale=, keep_ratio=)`` (1.x's default keep_ratio is
False and is written out, since 0.x's is True); ``RandomResize(scale, ratio_range, keep_ratio)`` →
``Resize(img_scale, ratio_range, keep_ratio)`` (two scales and no ratio_range → ``multiscale_mode: range``);
``LoadImageFromFile``, ``LoadAnnotations``, ``RandomCrop``, ``RandomFlip``, ``PhotoMetricDistortion`` keep their
arguments, and so do ``RandomRotate``, ``RandomCutOut``, ``RandomMosaic``, ``AdjustGamma``, ``CLAHE``,
``RGB2Gray``, ``SegRescale``, ``Rerange``, ``ResizeToMultiple`` (1.x kept 0.x's names); ``BioMedical*`` and
other 1.x-only steps are refused, naming the alternative; ``PackSegInputs`` is dropped (rayseg batches in Ray
Data). A val/test pipeline's ``LoadAnnotations`` is dropped too (rayseg evaluates against the mask read at its
original size, as MMSeg does; its ``reduce_zero_label`` moves to the dataset), and ``Load, Resize(scale)`` becomes 0.x's
``Load, MultiScaleFlipAug(img_scale=scale, flip=False, [Resize, Normalize])`` so ``--aug-test`` works.
Any other step is kept when rayseg registers one of that name, else reported as untranslatable.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Tuple

from rayseg.mmseg_config.report import Report

Step = Dict[str, Any]

# Arguments of 1.x steps that are fine at these values and mean nothing to rayseg otherwise.
_HARMLESS = {"backend_args": None, "ignore_empty": False, "clip_object_border": True, "backend": "cv2",
             "interpolation": "bilinear"}


# 1.x steps that keep 0.x's name and arguments (each registered in rayseg.datasets).
_SAME_ARGS_1X = ("RandomCrop", "PhotoMetricDistortion", "RandomRotate", "RandomCutOut", "RandomMosaic",
                 "AdjustGamma", "CLAHE", "RGB2Gray", "SegRescale", "Rerange", "ResizeToMultiple")
# 1.x-only steps with no rayseg equivalent, and what to use instead.
_REFUSED_1X = {
    "RandomRotFlip": "use RandomRotate(prob, degree) followed by RandomFlip(prob, direction)",
    "GenerateEdge": "boundary labels (edge supervision) have no rayseg equivalent",
    "RandomDepthMix": "depth inputs have no rayseg equivalent",
    "LoadDepthAnnotation": "depth estimation has no rayseg equivalent",
    "LoadMultipleRSImageFromFile": "change-detection image pairs have no rayseg equivalent",
    "ConcatCDInput": "change-detection image pairs have no rayseg equivalent",
    "LoadImageFromNDArray": "rayseg reads images from files (use LoadImageFromFile); for arrays in memory use "
                            "rayseg.apis.inference_model",
    "LoadSingleRSImageFromFile": "GDAL rasters are not read; convert them to PNG/TIFF images that OpenCV reads "
                                 "and use LoadImageFromFile",
}


def _registered(name: str) -> bool:
    from rayseg.datasets import Compose  # noqa: F401  (registers the pipeline steps)
    from rayseg.registry import TRANSFORMS

    return name in TRANSFORMS


def _take(step: Step, keys: Tuple[str, ...], where: str, report: Report) -> Step:
    """The step's ``keys``; harmless 1.x arguments at their defaults are dropped; others are refused."""
    out = {k: step[k] for k in keys if k in step}
    for key, value in step.items():
        if key == "type" or key in keys:
            continue
        if key in _HARMLESS and value == _HARMLESS[key]:
            continue
        report.refuse(f"{where}.{key}", f"{step['type']}'s {key}={value!r} has no rayseg equivalent")
    return out


def _scale(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def translate_step(step: Any, where: str, report: Report) -> Optional[List[Step]]:
    """One 1.x step as rayseg steps ([] when dropped by design, None when refused)."""
    if not isinstance(step, dict) or not isinstance(step.get("type"), str):
        report.refuse(where, f"a pipeline step must be a dict with a type, got {step!r}")
        return None
    kind = step["type"]
    if kind == "PackSegInputs":
        return []  # rayseg's Ray Data stream batches the image and mask itself
    if kind == "LoadImageFromFile":
        return [dict(type=kind, **_take(step, ("to_float32", "color_type", "imdecode_backend"), where, report))]
    if kind == "LoadAnnotations":
        args = _take(step, ("reduce_zero_label", "imdecode_backend"), where, report)
        if args.get("reduce_zero_label") is None:
            args.pop("reduce_zero_label", None)  # 1.x's None: the dataset's flag, which rayseg applies too
        return [dict(type=kind, **args)]
    if kind == "Resize":
        if "scale_factor" in step:
            report.refuse(f"{where}.scale_factor", "Resize by scale_factor has no rayseg equivalent; give scale")
            return None
        args = _take(step, ("scale", "keep_ratio"), where, report)
        return [dict(type="Resize", img_scale=_scale(args.get("scale")), keep_ratio=bool(args.get("keep_ratio")))]
    if kind == "RandomResize":
        args = _take(step, ("scale", "ratio_range", "keep_ratio", "resize_type"), where, report)
        if args.get("resize_type", "Resize") != "Resize":
            report.refuse(f"{where}.resize_type", f"{args['resize_type']!r}: rayseg resizes with Resize only")
            return None
        out: Step = dict(type="Resize", img_scale=_scale(args.get("scale")))
        if args.get("ratio_range") is not None:
            out["ratio_range"] = list(args["ratio_range"])
        else:
            out["img_scale"] = [_scale(s) for s in args.get("scale") or []]
            out["multiscale_mode"] = "range"
        out["keep_ratio"] = bool(args.get("keep_ratio"))
        return [out]
    if kind == "RandomFlip":
        args = _take(step, ("prob", "direction"), where, report)
        if isinstance(args.get("prob"), (list, tuple)) or isinstance(args.get("direction"), (list, tuple)):
            report.refuse(where, "RandomFlip with several probabilities or directions has no rayseg equivalent")
            return None
        return [dict(type=kind, **args)]
    if kind in _REFUSED_1X:
        report.refuse(where, f"pipeline step {kind!r}: {_REFUSED_1X[kind]}")
        return None
    if kind.startswith(("BioMedical", "LoadBiomedical")):
        report.refuse(where, f"pipeline step {kind!r}: rayseg trains on 2-D images; store the volumes as 2-D "
                             "slices (PNG) and use LoadImageFromFile/LoadAnnotations with 2-D steps")
        return None
    if kind in _SAME_ARGS_1X or _registered(kind):
        # MMSeg 1.x kept these steps' argument names (RandomRotate, RandomCutOut, RandomMosaic, AdjustGamma,
        # CLAHE, RGB2Gray, SegRescale, Rerange, ResizeToMultiple, ...): rayseg's steps take them as they are.
        return [copy.deepcopy(step)]
    report.refuse(where, f"pipeline step {kind!r} has no rayseg equivalent (rayseg's steps: see docs/datasets.md)")
    return None


def preprocessor_steps(dp: Any, where: str, report: Report) -> Tuple[Optional[Step], Optional[Step]]:
    """The ``Normalize`` and training ``Pad`` steps equivalent to a ``SegDataPreProcessor``.

    MMSeg 1.x normalises first and then pads the batch to ``size`` (or a multiple of ``size_divisor``) with
    ``pad_val``/``seg_pad_val``: exactly 0.x's ``Normalize`` followed by ``Pad``.
    """
    if dp is None:
        report.note(where, "the model has no data_preprocessor: images are not normalised (MMSeg's default)")
        return None, None
    if not isinstance(dp, dict):
        report.refuse(where, f"expected a dict, got {dp!r}")
        return None, None
    known = ("type", "mean", "std", "bgr_to_rgb", "rgb_to_bgr", "pad_val", "seg_pad_val", "size", "size_divisor")
    for key, value in dp.items():
        if key not in known and value is not None:
            report.refuse(f"{where}.{key}", f"SegDataPreProcessor's {key} has no rayseg equivalent")
    if dp.get("type", "SegDataPreProcessor") != "SegDataPreProcessor":
        report.refuse(f"{where}.type", f"{dp['type']!r}: only SegDataPreProcessor is translated")
    if dp.get("rgb_to_bgr"):
        report.refuse(f"{where}.rgb_to_bgr", "rayseg decodes images as BGR; only bgr_to_rgb is translated")
    normalize = None
    to_rgb = bool(dp.get("bgr_to_rgb", False))
    if dp.get("mean") is not None or dp.get("std") is not None or to_rgb:
        n = len(dp.get("mean") or dp.get("std") or [0, 0, 0])
        normalize = dict(type="Normalize", mean=list(dp.get("mean") or [0.0] * n),
                         std=list(dp.get("std") or [1.0] * n), to_rgb=to_rgb)
    pad = None
    if dp.get("size") is not None or dp.get("size_divisor") is not None:
        pad = dict(type="Pad", pad_val=dp.get("pad_val", 0), seg_pad_val=dp.get("seg_pad_val", 255))
        if dp.get("size") is not None:
            # SegDataPreProcessor's size is (h, w), as the crop_size it is set from; so is Pad's.
            pad["size"] = list(dp["size"])
        else:
            pad["size_divisor"] = dp["size_divisor"]
    return normalize, pad


def translate_pipeline(steps: Any, where: str, report: Report, test: bool, normalize: Optional[Step],
                       pad: Optional[Step]) -> Tuple[Optional[List[Step]], Optional[bool]]:
    """A 1.x pipeline as rayseg steps, with the preprocessor's steps added; and, for a test pipeline, the
    ``reduce_zero_label`` its (dropped) ``LoadAnnotations`` asked for (None when it did not say)."""
    if not isinstance(steps, (list, tuple)):
        report.refuse(where, f"a pipeline must be a list of steps, got {steps!r}")
        return None, None
    out: List[Step] = []
    reduce_zero_label = None
    ok = True
    for i, step in enumerate(steps):
        mapped = translate_step(step, f"{where}.{i}", report)
        if mapped is None:
            ok = False
            continue
        for s in mapped:
            if test and s["type"] == "LoadAnnotations":
                reduce_zero_label = s.get("reduce_zero_label", reduce_zero_label)
                continue
            out.append(s)
    if not ok:
        return None, None
    if not test:
        return out + [s for s in (normalize, pad) if s is not None], None
    return _test_form(out, normalize), reduce_zero_label


def _test_form(steps: List[Step], normalize: Optional[Step]) -> List[Step]:
    """``Load, Resize(one scale), ...`` → ``Load, MultiScaleFlipAug(img_scale, flip=False, [Resize, ..., Normalize])``."""
    tail = [normalize] if normalize is not None else []
    if (len(steps) >= 2 and steps[0]["type"] == "LoadImageFromFile" and steps[1]["type"] == "Resize"
            and "ratio_range" not in steps[1] and isinstance(steps[1].get("img_scale"), list)
            and len(steps[1]["img_scale"]) == 2 and all(isinstance(v, (int, float)) for v in steps[1]["img_scale"])):
        resize = {k: v for k, v in steps[1].items() if k != "img_scale"}
        aug = dict(type="MultiScaleFlipAug", img_scale=steps[1]["img_scale"], flip=False,
                   transforms=[resize] + steps[2:] + tail)
        return [steps[0], aug]
    return steps + tail
