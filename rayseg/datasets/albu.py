"""``Albu``: any albumentations (2.x) transforms, named by class in the config, on image + masks."""
from __future__ import annotations

import os
import random
from typing import Any, Dict, List, Sequence

import cv2
import numpy as np

from rayseg.errors import ConfigError
from rayseg.registry import TRANSFORMS, check_kwargs

_CONTAINERS = ("Compose", "OneOf", "SomeOf", "OneOrOther", "Sequential", "SelectiveChannelTransform")


def _albumentations():
    """``import albumentations`` without its update check: unless NO_ALBUMENTATIONS_UPDATE is set, every import
    asks PyPI for the latest version (up to 2 s, in every Ray Data actor, on clusters without internet too)."""
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations

    return albumentations


def build_albu(cfg: Dict[str, Any]) -> Any:
    """Build one albumentations transform from ``{"type": ClassName, **args}``; containers recurse."""
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise ConfigError(f"Albu: each transform must be a dict with a 'type' key, got {cfg!r}")
    A = _albumentations()  # here, not at import: it costs every Ray Data actor ~1.8 s of start-up

    args = dict(cfg)
    name = args.pop("type")
    cls = getattr(A, str(name), None)
    if not isinstance(cls, type):
        raise ConfigError(f"Albu: albumentations has no transform {name!r}")
    where = f"Albu transform {name!r}"
    check_kwargs(cls, args, where)  # albumentations only warns on unknown args; we make them errors
    if "transforms" in args and name in _CONTAINERS:
        args["transforms"] = [build_albu(c) for c in args["transforms"]]
    interp = args.get("mask_interpolation", cv2.INTER_NEAREST)
    if interp not in (cv2.INTER_NEAREST, cv2.INTER_NEAREST_EXACT):
        raise ConfigError(f"{where}: mask_interpolation must be nearest (0); label maps are never interpolated")
    try:
        return cls(**args)
    except (TypeError, ValueError) as exc:  # pydantic validation errors are ValueErrors
        raise ConfigError(f"{where}: {exc}") from exc


@TRANSFORMS.register()
class Albu:
    """Apply albumentations transforms (nested Compose/OneOf allowed) to the image and every mask.

    Masks always use nearest-neighbour interpolation. The image is handed to albumentations as RGB (its
    colour transforms assume RGB) and returned as BGR. Each call draws a seed from ``np.random`` so that
    seeding the worker's numpy RNG makes the augmentation reproducible; one generator is shared by all the
    transforms so their random choices are independent of each other.
    """

    def __init__(self, transforms: Sequence[Dict[str, Any]]):
        if not isinstance(transforms, (list, tuple)):
            raise ConfigError(f"Albu: transforms must be a list of dicts, got {transforms!r}")
        self.transforms_cfg: List[Dict[str, Any]] = [dict(t) for t in transforms]
        A = _albumentations()
        self.aug = A.Compose([build_albu(c) for c in transforms], mask_interpolation=cv2.INTER_NEAREST)

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        seed = int(np.random.randint(0, 2**31 - 1))
        self.aug.set_random_state(np.random.default_rng(seed), random.Random(seed))
        img = results["img"]
        rgb = img.ndim == 3 and img.shape[2] == 3
        if rgb:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        keys = list(results.get("seg_fields", []))
        data = {"image": img}
        if keys:
            data["masks"] = [results[k] for k in keys]
        out = self.aug(**data)
        img = out["image"]
        results["img"] = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if rgb and img.ndim == 3 else img
        for key, mask in zip(keys, out.get("masks", [])):
            results[key] = np.asarray(mask)
        results["img_shape"] = results["img"].shape
        results["pad_shape"] = results["img"].shape
        return results

    def __repr__(self) -> str:
        return f"Albu(transforms={self.transforms_cfg})"
