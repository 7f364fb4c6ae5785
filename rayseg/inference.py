"""The one inference path: a model loaded for inference, and label maps from prepared pipeline results.

Everything that predicts goes through here: validation inside the training workers
(``engine.evaluate.evaluate_shard``), the evaluation actors of ``jobs/test.py``
(``apis.distributed_eval``), the replicas of ``jobs/predict.py`` (``apis.batch_predict``) and the Python
API ``apis.inference.init_model`` / ``inference_model``.

- :func:`load_inference_model` builds the config's segmentor with backbone pretraining switched off
  (the checkpoint overwrites those weights), loads the weights strictly (a classifier of another
  ``num_classes`` is an error, never a silently random layer), and attaches ``cfg``, ``CLASSES`` and
  ``PALETTE``.
- :class:`TestPipeline` runs the config's ``data.test.pipeline`` on the CPU (uint8 out, as the Ray
  ingest does) for a path, a URI or an image array.
- :class:`Predictor` normalises on the model's device and predicts: one uint8 batch, or pipeline results
  (plain ones stacked per size, ``MultiScaleFlipAug`` variants through ``aug_predict``). Whole-image or
  sliding-window inference is the segmentor's ``test_cfg.mode``.
"""
from __future__ import annotations

import copy
import os
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from rayseg.errors import CheckpointError, ConfigError, DataError

ImageInput = Union[str, os.PathLike, np.ndarray]
LOADED_STATE = "<loaded state>"  # how errors name weights handed over already loaded, from no known file


def weights_source(checkpoint: Any) -> str:
    """How errors name ``checkpoint``: its path, or for loaded weights the file ``load_weights_file`` read."""
    if isinstance(checkpoint, dict):
        return str(checkpoint.get("source") or LOADED_STATE)
    return str(checkpoint)


def inference_device(use_gpu: bool) -> torch.device:
    """The device an inference replica runs on: the GPU Ray assigned it, else the CPU."""
    if use_gpu:
        if not torch.cuda.is_available():
            raise ConfigError("use_gpu is set but this worker sees no CUDA device")
        return torch.device("cuda")  # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU
    return torch.device("cpu")


def without_pretrained(model_cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The model config with pretraining switched off (as MMSeg's init_segmentor does): the checkpoint
    overwrites those weights, so fetching them would only cost a download. Every ``pretrained`` and every
    Pretrained ``init_cfg`` goes, at any depth (STDC's and BiSeNetV1's inner ``backbone_cfg`` too)."""
    from rayseg.models.pretrained import strip_pretrained

    return strip_pretrained(copy.deepcopy(model_cfg))


def classes_and_palette(cfg: Dict[str, Any], meta: Dict[str, Any],
                        num_classes: int) -> Tuple[Tuple[str, ...], List[List[int]]]:
    """Class names and RGB palette: the checkpoint's meta first (``load_weights_file`` puts MMSeg 0.x and
    1.x names there too), else the test dataset's class attributes (and its config's ``classes``/
    ``palette`` lists); nothing is read from the data folder."""
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


def load_inference_model(cfg: Dict[str, Any], checkpoint: Union[None, str, os.PathLike, Dict[str, Any]] = None,
                         device: Union[str, torch.device] = "cpu", source: Optional[str] = None) -> torch.nn.Module:
    """The config's segmentor in eval mode on ``device``, ready to predict.

    ``checkpoint``: anything ``load_weights_file`` reads (``latest.pth``, a Ray checkpoint folder, an MMSeg
    ``.pth``, a storage URI or URL), an already loaded ``{"state_dict", "meta"}``, a Ray ``ObjectRef`` of
    one (how inference actors receive weights the driver put once into the object store), or None to
    keep the config's initial (and pretrained) weights. With a checkpoint, backbone pretraining is
    switched off and the weights must fit exactly (``allow_num_classes_change=False``): a classifier
    left at its initialisation would give meaningless labels and metrics. ``source`` names loaded
    weights in errors.
    The model gets ``cfg``, ``CLASSES`` and ``PALETTE`` (see :func:`classes_and_palette`). The config's
    ``custom_imports`` are imported first, so ``init_model`` builds models made of the user's parts.
    """
    from rayseg.custom_imports import import_custom_modules
    from rayseg.engine.checkpoint import load_model_weights, load_weights_file
    from rayseg.models import build_segmentor

    if not isinstance(cfg, dict) or "model" not in cfg:
        raise ConfigError("the config has no 'model' section")
    import_custom_modules(cfg)  # the model may name the user's parts (custom_imports); cheap when done already
    meta: Dict[str, Any] = {}
    if checkpoint is None:
        model = build_segmentor(cfg["model"])
    else:
        if not isinstance(checkpoint, (str, os.PathLike, dict)):
            import ray

            if not isinstance(checkpoint, ray.ObjectRef):
                raise CheckpointError(f"checkpoint must be a path, URI, loaded state dict or ObjectRef, got "
                                      f"{type(checkpoint).__name__}")
            checkpoint = ray.get(checkpoint)
        if isinstance(checkpoint, dict):
            state, source = checkpoint, source or weights_source(checkpoint)
            if not isinstance(state.get("state_dict"), dict):
                raise CheckpointError(f"{source}: a loaded checkpoint must be {{'state_dict', 'meta'}} "
                                      "(as load_weights_file returns)")
        else:
            state, source = load_weights_file(os.fspath(checkpoint)), source or os.fspath(checkpoint)
        model = build_segmentor(without_pretrained(cfg["model"]))
        load_model_weights(model, state["state_dict"], source, allow_num_classes_change=False)
        meta = state.get("meta") or {}
    model.cfg = cfg
    model.CLASSES, model.PALETTE = classes_and_palette(cfg, meta, int(model.num_classes))
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


class TestPipeline:
    """The config's ``data.test.pipeline`` on the CPU, uint8 out (Normalize is the :class:`Predictor`'s).

    Called with a file path, a ``scheme://`` URI or a BGR (or greyscale) uint8 array; ``from_path``
    also takes ``{"img_path", "img_bytes"}`` when the bytes are already read.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, cfg: Dict[str, Any]):
        from rayseg.datasets import Compose, split_device_steps

        try:
            self.pipeline_cfg = cfg["data"]["test"]["pipeline"]
        except (KeyError, TypeError) as exc:
            raise ConfigError("the model's config has no data.test.pipeline to prepare images with") from exc
        cpu_cfgs, _ = split_device_steps(_drop_annotations(self.pipeline_cfg))
        loaders = [i for i, c in enumerate(cpu_cfgs) if isinstance(c, dict) and c.get("type") == "LoadImageFromFile"]
        if loaders != [0]:
            raise ConfigError(f"data.test.pipeline must start with one LoadImageFromFile step, got "
                              f"{[c.get('type') if isinstance(c, dict) else c for c in cpu_cfgs]}")
        self.from_path = Compose(cpu_cfgs)
        self.from_array = Compose([_LoadArray(), *cpu_cfgs[1:]])

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


def _ori_shape(results: Dict[str, Any]) -> Tuple[int, int]:
    return tuple(int(v) for v in results["ori_shape"][:2])  # type: ignore[return-value]


class Predictor:
    """A model in eval mode plus the device-side normaliser of its pipeline: label maps out.

    ``normalizer`` turns uint8 NHWC batches into the model's normalised input (a ``DeviceNormalizer``);
    :meth:`for_pipeline` builds it from a pipeline config's ``Normalize``.
    """

    def __init__(self, model: torch.nn.Module, normalizer: Any):
        self.model = model
        self.normalizer = normalizer
        self.device = next(model.parameters()).device

    @classmethod
    def for_pipeline(cls, model: torch.nn.Module, pipeline_cfg: Sequence[Dict[str, Any]]) -> "Predictor":
        """A predictor normalising as ``pipeline_cfg``'s Normalize step says, on the model's device."""
        from rayseg.datasets.ray_data import DeviceNormalizer

        return cls(model, DeviceNormalizer.from_pipeline(pipeline_cfg, device=next(model.parameters()).device))

    def _tensor(self, imgs: Sequence[np.ndarray]) -> torch.Tensor:
        return torch.from_numpy(np.stack([np.ascontiguousarray(img) for img in imgs])).to(self.device)

    @torch.no_grad()
    def predict_batch(self, imgs: torch.Tensor, ori_shape: Sequence[int]) -> torch.Tensor:
        """Label maps (N, H0, W0) long for a uint8 (N, H, W, 3) batch of one size, at ``ori_shape``."""
        return self.model.predict(self.normalizer(imgs.to(self.device)), ori_shape=tuple(ori_shape[:2]))

    @torch.no_grad()
    def predict(self, results: Sequence[Dict[str, Any]]) -> List[np.ndarray]:
        """Label maps (int64, original size) for test-pipeline results (``prepare_test`` or
        :class:`TestPipeline` outputs), in order.

        Results with ``aug_variants`` (or a flipped image) go through ``aug_predict`` one image at a time.
        Plain results that share the network input size and the original size are stacked into one
        forward pass (the batch a GPU wants); one result per call predicts every image alone, as
        validation does, so integer areas match it bit for bit.
        """
        out: List[Optional[np.ndarray]] = [None] * len(results)
        groups: Dict[Tuple, List[int]] = {}
        for i, res in enumerate(results):
            variants = res.get("aug_variants")
            if variants or res.get("flip", False):
                variants = variants or [res]
                flips = [(bool(v.get("flip", False)), str(v.get("flip_direction", "horizontal"))) for v in variants]
                imgs = [self.normalizer(self._tensor([v["img"]])) for v in variants]
                pred = self.model.aug_predict(imgs, flips, _ori_shape(res))
                out[i] = pred[0].cpu().numpy().astype(np.int64, copy=False)
            else:
                groups.setdefault((res["img"].shape, _ori_shape(res)), []).append(i)
        for (_, ori_shape), members in groups.items():
            preds = self.predict_batch(self._tensor([results[i]["img"] for i in members]), ori_shape)
            for i, pred in zip(members, preds.cpu().numpy().astype(np.int64, copy=False)):
                out[i] = pred
        return out  # type: ignore[return-value]
