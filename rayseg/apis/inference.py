"""MMSeg-style Python inference API: ``init_model`` / ``inference_model`` (and ``show_result``).

``inference_model`` runs the config's test pipeline on the CPU (uint8 out, as the Ray ingest does),
normalises on the model's device, and averages test-time augmentation variants when the pipeline's
MultiScaleFlipAug produces several. Label maps come back at the input image's size.
"""
from __future__ import annotations

import copy
import os
import warnings
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from rayseg.engine.checkpoint import load_model_weights, load_weights_file
from rayseg.errors import ConfigError, DataError
from rayseg.visualization import show_result

ImageInput = Union[str, os.PathLike, np.ndarray]

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


def _without_pretrained(model_cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The model config with backbone pretraining switched off (as MMSeg's init_segmentor does): the
    checkpoint overwrites those weights, so fetching them would only cost a download."""
    model_cfg = copy.deepcopy(model_cfg)
    if "pretrained" in model_cfg:
        model_cfg["pretrained"] = None
    backbone = model_cfg.get("backbone")
    if isinstance(backbone, dict):
        if "pretrained" in backbone:
            backbone["pretrained"] = None
        init_cfg = backbone.get("init_cfg")
        if isinstance(init_cfg, dict) and init_cfg.get("type") == "Pretrained":
            backbone["init_cfg"] = None
    return model_cfg


def _classes_and_palette(cfg: Dict[str, Any], meta: Dict[str, Any],
                         num_classes: int) -> Tuple[Tuple[str, ...], List[List[int]]]:
    """Class names and RGB palette: the checkpoint's meta first, else the test dataset's class
    attributes (and its config's ``classes``/``palette`` lists); nothing is read from the data folder."""
    from rayseg.datasets.custom import _default_palette
    from rayseg.registry import DATASETS

    classes, palette = meta.get("classes"), meta.get("palette")
    test = (cfg.get("data") or {}).get("test") or {}
    dataset_cls = DATASETS.get(test["type"]) if isinstance(test.get("type"), str) else None
    if classes is None:
        # A classes *file* would mean reading from disk: only inline lists are used.
        if isinstance(test.get("classes"), (list, tuple)):
            classes = list(test["classes"])
        elif dataset_cls is not None:
            classes = dataset_cls.CLASSES
    if palette is None:
        if isinstance(test.get("palette"), (list, tuple)):
            palette = test["palette"]
        elif dataset_cls is not None and dataset_cls.PALETTE is not None and classes is not None:
            known = list(dataset_cls.CLASSES or [])
            if all(c in known for c in classes):  # also right for a subset of the dataset's classes
                palette = [dataset_cls.PALETTE[known.index(c)] for c in classes]
    if classes is None or len(classes) != num_classes:
        if classes is not None:
            warnings.warn(f"{len(classes)} class names found for a model with {num_classes} classes; "
                          "using class indices as names", stacklevel=3)
        classes = [str(i) for i in range(num_classes)]
    if palette is None or len(palette) != len(classes):
        palette = _default_palette(len(classes))
    return tuple(str(c) for c in classes), [[int(v) for v in colour] for colour in palette]


def init_model(config: Union[str, os.PathLike, Dict[str, Any]], checkpoint: Optional[str] = None,
               device: Union[str, torch.device] = "cpu", cfg_options: Optional[Iterable[str]] = None):
    """Build the config's segmentor, load ``checkpoint`` and return it in eval mode on ``device``.

    ``config`` is a YAML path or an already-loaded config dict; ``cfg_options`` are ``KEY=VALUE``
    overrides. ``checkpoint`` may be a ``latest.pth``, a Ray checkpoint folder or an MMSeg checkpoint
    (None keeps the initial weights). The model gets ``cfg`` (the config dict), ``CLASSES`` and
    ``PALETTE`` (from the checkpoint's meta, else from the test dataset's class).
    """
    from rayseg.models import build_segmentor

    cfg = _load_cfg(config, cfg_options)
    if "model" not in cfg:
        raise ConfigError("the config has no 'model' section")
    meta: Dict[str, Any] = {}
    if checkpoint is None:
        model = build_segmentor(cfg["model"])
    else:
        model = build_segmentor(_without_pretrained(cfg["model"]))
        state = load_weights_file(checkpoint)
        # Inference with a classifier left at its initialisation would give meaningless labels.
        load_model_weights(model, state["state_dict"], str(checkpoint), allow_num_classes_change=False)
        meta = state.get("meta") or {}
    model.cfg = cfg
    model.CLASSES, model.PALETTE = _classes_and_palette(cfg, meta, model.num_classes)
    return model.to(device).eval()


class _LoadArray:
    """Pipeline step standing in for LoadImageFromFile when the input is already an image array."""

    def __call__(self, results: Dict[str, Any]) -> Dict[str, Any]:
        img = results["img"]
        results.update(filename=None, ori_filename=None, img_shape=img.shape, ori_shape=img.shape,
                       pad_shape=img.shape, scale_factor=1.0)
        return results


def _drop_annotations(cfgs: Sequence[Any]) -> List[Any]:
    """The pipeline without LoadAnnotations (also inside MultiScaleFlipAug): there are no labels."""
    out = []
    for cfg in cfgs:
        if isinstance(cfg, dict) and cfg.get("type") == "LoadAnnotations":
            continue
        if isinstance(cfg, dict) and "transforms" in cfg:
            cfg = dict(cfg, transforms=_drop_annotations(cfg["transforms"]))
        out.append(cfg)
    return out


class _TestPipeline:
    """The config's test pipeline on the CPU (uint8 out) plus the device-side normaliser."""

    def __init__(self, cfg: Dict[str, Any], device: torch.device):
        from rayseg.datasets import Compose, split_device_steps
        from rayseg.datasets.ray_data import DeviceNormalizer

        try:
            pipeline_cfg = cfg["data"]["test"]["pipeline"]
        except (KeyError, TypeError) as exc:
            raise ConfigError("the model's config has no data.test.pipeline to prepare images with") from exc
        cpu_cfgs, _ = split_device_steps(_drop_annotations(pipeline_cfg))
        loaders = [i for i, c in enumerate(cpu_cfgs) if isinstance(c, dict) and c.get("type") == "LoadImageFromFile"]
        if loaders != [0]:
            raise ConfigError(f"data.test.pipeline must start with one LoadImageFromFile step, got "
                              f"{[c.get('type') if isinstance(c, dict) else c for c in cpu_cfgs]}")
        self.from_path = Compose(cpu_cfgs)
        self.from_array = Compose([_LoadArray(), *cpu_cfgs[1:]])
        self.normalizer = DeviceNormalizer.from_pipeline(pipeline_cfg, device=device)
        self.device = device

    def __call__(self, img: ImageInput) -> Dict[str, Any]:
        if isinstance(img, (str, os.PathLike)):
            path = os.fspath(img)
            results: Dict[str, Any] = {"img_path": path}
            if "://" in path:  # object storage: read the bytes here, LoadImageFromFile decodes them
                from rayseg.datasets.ray_data import read_file_bytes

                results["img_bytes"] = read_file_bytes(path)
            return self.from_path(results)
        if isinstance(img, np.ndarray):
            if img.ndim == 2:
                img = np.repeat(img[..., None], 3, axis=2)  # greyscale → 3 equal channels
            if img.ndim != 3 or img.shape[2] != 3 or img.size == 0:
                raise DataError(f"an image array must be BGR (H, W, 3) (or greyscale (H, W)), got shape {img.shape}")
            return self.from_array({"img": img})
        raise DataError(f"expected an image path or a BGR numpy array, got {type(img).__name__}")

    def tensor(self, img: np.ndarray) -> torch.Tensor:
        """One pipeline image (H, W, 3) as a normalised (1, 3, H, W) tensor on the device."""
        batch = torch.from_numpy(np.ascontiguousarray(img))[None].to(self.device)
        return self.normalizer(batch)


def _predict(model, pipeline: _TestPipeline, img: ImageInput) -> np.ndarray:
    results = pipeline(img)
    ori_shape = tuple(int(v) for v in results["ori_shape"][:2])
    variants = results.get("aug_variants") or [results]
    flips = [(bool(v.get("flip", False)), str(v.get("flip_direction", "horizontal"))) for v in variants]
    imgs = [pipeline.tensor(v["img"]) for v in variants]
    if len(imgs) == 1 and not flips[0][0]:
        pred = model.predict(imgs[0], ori_shape=ori_shape)
    else:
        pred = model.aug_predict(imgs, flips, ori_shape)
    return pred[0].cpu().numpy().astype(np.int64, copy=False)


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
    device = next(model.parameters()).device
    pipeline = _TestPipeline(cfg, device)
    if isinstance(imgs, (list, tuple)):
        return [_predict(model, pipeline, img) for img in imgs]
    return _predict(model, pipeline, imgs)
