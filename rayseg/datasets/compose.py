"""Pipelines: ``Compose``, ``build_pipeline``, ``MultiScaleFlipAug`` and ``split_device_steps``."""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from rayseg.errors import ConfigError
from rayseg.registry import TRANSFORMS, build
from rayseg.datasets.transforms import as_scales


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


@TRANSFORMS.register()
class MultiScaleFlipAug:
    """Test-time wrapper (MMSeg name): sets ``scale``/``flip`` in results and runs ``transforms``.

    Only a single variant (one scale or ratio, no flip) is supported for now; more variants raise
    ConfigError. With ``img_scale`` None, ``img_ratios`` scale the image's own size.
    """

    def __init__(self, transforms: Sequence[Dict[str, Any]], img_scale: Any = None,
                 img_ratios: Any = None, flip: bool = False, flip_direction: Any = "horizontal"):
        self.transforms = Compose(transforms)
        if img_ratios is not None and not isinstance(img_ratios, (list, tuple)):
            img_ratios = [img_ratios]
        if img_ratios is not None:
            img_ratios = [float(r) for r in img_ratios]
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
        self.flip_direction = flip_direction if isinstance(flip_direction, list) else [flip_direction]
        n_scales = len(self.img_scale) if self.img_scale is not None else len(self.img_ratios)
        if n_scales != 1 or self.flip:
            raise ConfigError(
                f"MultiScaleFlipAug: multi-scale/flip test-time augmentation ({n_scales} scale(s), "
                f"flip={self.flip}) is not supported by this step yet; use one scale and flip=False"
            )

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        if self.img_scale is None:
            h, w = results["img"].shape[:2]
            scale = (int(w * self.img_ratios[0]), int(h * self.img_ratios[0]))
        else:
            scale = self.img_scale[0]
        results = dict(results)
        results["scale"] = scale
        results["flip"] = False
        results["flip_direction"] = self.flip_direction[0]
        return self.transforms(results)

    def __repr__(self) -> str:
        return f"MultiScaleFlipAug(img_scale={self.img_scale}, img_ratios={self.img_ratios}, flip={self.flip})"


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
