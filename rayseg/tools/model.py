"""The model the analysis and deployment tools work on, and their shared argument checks."""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch

from rayseg.errors import ConfigError
from rayseg.inference import load_inference_model, without_pretrained


def parse_shape(shape: Optional[Sequence[int]], default: Tuple[int, int] = (512, 1024),
                option: str = "--shape") -> Tuple[int, int]:
    """``(H, W)`` from a ``--shape`` value: one number (a square) or two; positive ints."""
    if shape is None:
        return default
    values = list(shape)
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(isinstance(v, int) and v > 0 for v in values):
        raise ConfigError(f"{option} takes H W (or one size for a square) as positive integers, got {shape!r}")
    return int(values[0]), int(values[1])


def build_model(cfg: Dict[str, Any], checkpoint: Union[None, str, os.PathLike] = None,
                device: Union[str, torch.device] = "cpu") -> torch.nn.Module:
    """The config's segmentor in eval mode on ``device``: the checkpoint's weights, or random init.

    Without a checkpoint backbone pretraining is switched off too (``without_pretrained``): FLOPs, speed
    and an export's graph do not depend on the weights, so nothing is downloaded for them.
    """
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
        raise ConfigError("the config has no 'model' section")
    if checkpoint is None:
        cfg = dict(cfg, model=without_pretrained(cfg["model"]))
    return load_inference_model(cfg, checkpoint, device)


def run_checked(fn, *args: Any, shape: Tuple[int, int], **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, with a model's refusal of the input size (a ValueError or RuntimeError
    such as UNet's "must be divisible by ...") turned into a ConfigError that names ``--shape``."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, RuntimeError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"the model cannot run on --shape {shape[0]} {shape[1]}: {exc}") from exc
