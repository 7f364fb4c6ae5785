"""Pipelines: ``Compose``, ``build_pipeline``, ``MultiScaleFlipAug`` (+ ``enable_aug_test``), ``split_device_steps``."""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from rayseg.datasets.transforms import as_scales
from rayseg.errors import ConfigError
from rayseg.registry import TRANSFORMS, build


class Compose:
    """Run pipeline steps in order on a results dict."""

    def __init__(self, transforms: Sequence[Any]):
        if not isinstance(transforms, (list, tuple)):
            raise ConfigError(f"a pipeline must be a list of step configs, got {transforms!r}")
        self.transforms: List[Callable] = [
            build(t, TRANSFORMS) if isinstance(t, dict) else t for t in transforms
        ]
        for t in self.transforms:
            if not callable(t):
                raise ConfigError(f"pipeline step {t!r} is neither a config dict nor callable")

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        for t in self.transforms:
            results = t(results)
        return results

    def __len__(self) -> int:
        return len(self.transforms)

    def __repr__(self) -> str:
        inner = "".join(f"\n    {t!r}," for t in self.transforms)
        return f"Compose([{inner}\n])"


def build_pipeline(cfgs: Sequence[Dict[str, Any]]) -> Compose:
    """Build a ``Compose`` from a list of step configs (``{"type": name, **args}``)."""
    return Compose(cfgs)


_FLIP_DIRECTIONS = ("horizontal", "vertical", "diagonal")
# MMSeg's tools/test.py --aug-test ratios.
AUG_TEST_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


def _has_step(cfgs: Sequence[Any], name: str) -> bool:
    return any((isinstance(c, dict) and c.get("type") == name) or type(c).__name__ == name for c in cfgs)


@TRANSFORMS.register()
class MultiScaleFlipAug:
    """Test-time augmentation (MMSeg 0.x): run ``transforms`` once per (scale, flip, direction) variant.

    Scales are ``img_scale`` (one pair or a list), ``img_scale`` × each of ``img_ratios``, or, with
    ``img_scale`` None, the image's own (w, h) × each ratio. Flips are [False, True] with ``flip`` else
    [False], crossed with every ``flip_direction`` as MMSeg does. Each variant gets ``scale``, ``flip``
    and ``flip_direction`` preset in its results, which ``Resize`` and ``RandomFlip`` obey.

    Output: with one variant, that variant's results dict (as a plain pipeline). With several, the first
    variant's results plus ``"aug_variants"``: the list of every variant's results dict, in order.
    """

    def __init__(self, transforms: Sequence[Dict[str, Any]], img_scale: Any = None,
                 img_ratios: Any = None, flip: bool = False, flip_direction: Any = "horizontal"):
        self.transforms = Compose(transforms)
        if img_ratios is not None and not isinstance(img_ratios, (list, tuple)):
            img_ratios = [img_ratios]
        if img_ratios is not None:
            img_ratios = [float(r) for r in img_ratios]
            if not img_ratios or any(r <= 0 for r in img_ratios):
                raise ConfigError(f"MultiScaleFlipAug: img_ratios must be positive numbers, got {img_ratios!r}")
        if img_scale is None:
            if not img_ratios:
                raise ConfigError("MultiScaleFlipAug: give img_scale, img_ratios or both")
            self.img_scale = None
        else:
            scales = as_scales(img_scale, "MultiScaleFlipAug")
            if img_ratios is not None:
                if len(scales) != 1:
                    raise ConfigError("MultiScaleFlipAug: img_ratios need a single img_scale")
                scales = [(int(scales[0][0] * r), int(scales[0][1] * r)) for r in img_ratios]
            self.img_scale = scales
        self.img_ratios = img_ratios
        self.flip = bool(flip)
        directions = list(flip_direction) if isinstance(flip_direction, (list, tuple)) else [flip_direction]
        bad = [d for d in directions if d not in _FLIP_DIRECTIONS]
        if not directions or bad:
            raise ConfigError(f"MultiScaleFlipAug: flip_direction must be one or more of {list(_FLIP_DIRECTIONS)}, "
                              f"got {flip_direction!r}")
        self.flip_direction = directions
        if self.flip and not _has_step(self.transforms.transforms, "RandomFlip"):
            # MMSeg only warns here; but aug_test would then un-flip predictions of unflipped images.
            raise ConfigError("MultiScaleFlipAug: flip=True needs a RandomFlip step in its transforms "
                              "(it does the flipping)")

    def _scales(self, results: Dict[str, Any]) -> List[Tuple[int, int]]:
        if self.img_scale is not None:
            return list(self.img_scale)
        h, w = results["img"].shape[:2]
        return [(int(w * r), int(h * r)) for r in self.img_ratios]

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        variants = []
        for scale in self._scales(results):
            for flip in ([False, True] if self.flip else [False]):
                for direction in self.flip_direction:
                    # A shallow copy per variant, as MMSeg: steps assign new arrays, never edit in place.
                    variant = dict(results)
                    variant["scale"] = scale
                    variant["flip"] = flip
                    variant["flip_direction"] = direction
                    variants.append(self.transforms(variant))
        if len(variants) == 1:
            return variants[0]
        # A copy of the first variant, so the returned dict does not contain itself.
        out = dict(variants[0])
        out["aug_variants"] = variants
        return out

    def __repr__(self) -> str:
        return (f"MultiScaleFlipAug(img_scale={self.img_scale}, img_ratios={self.img_ratios}, flip={self.flip}, "
                f"flip_direction={self.flip_direction})")


def enable_aug_test(pipeline_cfgs: Sequence[Dict[str, Any]], ratios: Sequence[float] = AUG_TEST_RATIOS,
                    flip: bool = True) -> List[Dict[str, Any]]:
    """A copy of a test pipeline config whose ``MultiScaleFlipAug`` uses ``ratios`` and ``flip``.

    This is MMSeg's ``tools/test.py --aug-test``: the step keeps its ``img_scale`` (the ratios then scale
    it, or the image's own size when it is None). With ``flip`` and no ``RandomFlip`` among the step's
    transforms, one is added after ``Resize`` so that flipped variants really are flipped. ConfigError
    when the pipeline has no MultiScaleFlipAug. The input is not modified.
    """
    cfgs = copy.deepcopy(list(pipeline_cfgs))
    steps = [c for c in cfgs if isinstance(c, dict) and c.get("type") == "MultiScaleFlipAug"]
    if not steps:
        kinds = [c.get("type") if isinstance(c, dict) else type(c).__name__ for c in cfgs]
        raise ConfigError(f"test-time augmentation needs a MultiScaleFlipAug step in the test pipeline; "
                          f"it has {kinds}")
    for step in steps:
        step["img_ratios"] = [float(r) for r in ratios]
        step["flip"] = bool(flip)
        inner = list(step.get("transforms", []))
        if flip and not _has_step(inner, "RandomFlip"):
            at = next((i + 1 for i, c in enumerate(inner) if isinstance(c, dict) and c.get("type") == "Resize"), 0)
            inner.insert(at, {"type": "RandomFlip"})
        step["transforms"] = inner
    return cfgs


def _pad_val_to_uint8(pad_val: Any, norm: Dict[str, Any]) -> List[int]:
    """The uint8 BGR pixel that ``Normalize(norm)`` maps to the normalised ``pad_val``.

    MMSeg pads after Normalize, so padding 0 means "the mean colour". When Normalize moves to the device the
    CPU pads the uint8 image instead, so we pad with round(v·std + mean) in the CPU image's channel order.
    """
    mean = [float(m) for m in norm["mean"]]
    std = [float(s) for s in norm["std"]]
    n = len(mean)
    vals = list(pad_val) if isinstance(pad_val, (list, tuple)) else [pad_val] * n
    out = [int(min(255, max(0, round(v * s + m)))) for v, s, m in zip(vals, std, mean)]
    if norm.get("to_rgb", True) and n == 3:
        out = out[::-1]  # values were in RGB order; the CPU image is BGR
    return out


def _split(cfgs: Sequence[Dict[str, Any]], found: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    out: List[Dict[str, Any]] = []
    for cfg in cfgs:
        cfg = copy.deepcopy(cfg)
        kind = cfg.get("type") if isinstance(cfg, dict) else None
        if kind == "Normalize":
            found.append(cfg)
            continue
        if kind == "MultiScaleFlipAug" and "transforms" in cfg:
            cfg["transforms"] = _split(cfg["transforms"], found)
        elif kind == "Pad" and found:
            cfg["pad_val"] = _pad_val_to_uint8(cfg.get("pad_val", 0), found[-1])
        out.append(cfg)
    return out


def split_device_steps(pipeline_cfgs: Sequence[Dict[str, Any]]) -> Tuple[List[Dict[str, Any]], Optional[Dict[str, Any]]]:
    """Split a pipeline config into its CPU part (uint8 out) and the ``Normalize`` config for the device.

    Every ``Normalize`` is removed, also inside MultiScaleFlipAug's ``transforms``. A ``Pad`` that came
    after Normalize gets the uint8 ``pad_val`` equivalent to its normalised one (see ``_pad_val_to_uint8``).
    Several Normalize steps with different settings are a ConfigError. The input is not modified.
    """
    found: List[Dict[str, Any]] = []
    cpu = _split(list(pipeline_cfgs), found)
    norm = None
    for cfg in found:
        if norm is not None and cfg != norm:
            raise ConfigError(f"pipeline has differing Normalize steps: {norm} and {cfg}")
        norm = cfg
    return cpu, norm
