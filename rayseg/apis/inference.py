"""MMSeg-style Python inference API: ``init_model`` / ``inference_model`` (and ``show_result``).

A thin layer over :mod:`rayseg.inference`, the path every prediction in rayseg takes: the config's test
pipeline on the CPU (uint8 out, as the Ray ingest does), normalisation on the model's device, and
test-time augmentation averaged when the pipeline's MultiScaleFlipAug produces several variants. Label
maps come back at the input image's size.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import numpy as np
import torch

from rayseg.errors import ConfigError
from rayseg.inference import ImageInput, Predictor, TestPipeline, load_inference_model
from rayseg.visualization import show_result

__all__ = ["inference_model", "init_model", "show_result"]


def _load_cfg(config: Union[str, os.PathLike, Dict[str, Any]], cfg_options: Optional[Iterable[str]]) -> Dict[str, Any]:
    """A config dict from a path (``load_config``) or a copy of an already-loaded dict, with overrides."""
    from rayseg.config import _set_override, load_config

    if isinstance(config, (str, os.PathLike)):
        return load_config(os.fspath(config), cfg_options or ())
    if not isinstance(config, dict):
        raise ConfigError(f"config must be a file path or a config dict, got {type(config).__name__}")
    cfg = copy.deepcopy(config)
    options = [cfg_options] if isinstance(cfg_options, str) else list(cfg_options or ())
    for option in options:  # the same KEY=VALUE syntax as --cfg-options on a path
        _set_override(cfg, option)
    return cfg


def init_model(config: Union[str, os.PathLike, Dict[str, Any]], checkpoint: Optional[str] = None,
               device: Union[str, torch.device] = "cpu", cfg_options: Optional[Iterable[str]] = None):
    """Build the config's segmentor, load ``checkpoint`` and return it in eval mode on ``device``.

    ``config`` is a YAML path or an already-loaded config dict; ``cfg_options`` are ``KEY=VALUE``
    overrides. ``checkpoint`` may be a ``latest.pth``, a Ray checkpoint folder, an MMSeg 0.x/1.x
    checkpoint, a storage URI or a URL (None keeps the initial weights). The model gets ``cfg`` (the
    config dict), ``CLASSES`` and ``PALETTE`` (from the checkpoint's meta, else from the test dataset's
    class).
    """
    return load_inference_model(_load_cfg(config, cfg_options), checkpoint, device)


@torch.no_grad()
def inference_model(model, imgs: Union[ImageInput, Sequence[ImageInput]]) -> Union[np.ndarray, List[np.ndarray]]:
    """Label maps for one image or a list: int64 (H, W) arrays at each input image's size.

    An image is a file path (local or ``scheme://`` object storage) or a BGR uint8 array. The model
    must come from ``init_model`` (it reads ``model.cfg``'s test pipeline). A path that cannot be read
    or decoded raises DataError naming it.
    """
    cfg = getattr(model, "cfg", None)
    if not isinstance(cfg, dict):
        raise ConfigError("the model has no .cfg config dict; build it with rayseg.apis.init_model")
    pipeline = TestPipeline(cfg)
    predictor = Predictor.for_pipeline(model, pipeline.pipeline_cfg)
    if isinstance(imgs, (list, tuple)):
        return [predictor.predict([pipeline(img)])[0] for img in imgs]
    return predictor.predict([pipeline(imgs)])[0]
