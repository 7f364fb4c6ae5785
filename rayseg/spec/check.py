"""Build everything a run spec names, on the driver, before Ray starts or any file or MLflow run is made.

The model is built on PyTorch's ``meta`` device with pretrained weights switched off (constructors and
their argument checks run; nothing is allocated or downloaded), then its optimizer and lr schedule; every
pipeline is built step by step so an error names the step's key path. With ``list_data`` the train and val
datasets are also listed (root exists, split not empty, every image has its mask) and returned, so the
trainer does not list them twice.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List

import torch

from rayseg.errors import ConfigError, DataError
from rayseg.spec.sections import RunSpec


@dataclass
class CheckedRun:
    """What the checks built that the run itself uses: the listed datasets (None without ``list_data``)."""

    train_set: Any = None
    val_set: Any = None


def _at(where: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn``; a ConfigError or DataError it raises is re-raised with the key path in front."""
    try:
        return fn()
    except (ConfigError, DataError) as exc:
        if str(exc).startswith((where + ":", where + ".")):  # already names its key path
            raise
        raise type(exc)(f"{where}: {exc}") from exc


def _without_pretrained(model_cfg: Dict[str, Any]) -> Dict[str, Any]:
    """The model config with backbone pretraining off (the check must not download or read weights); a
    local pretrained file that does not exist is an error now rather than in every worker later."""
    from rayseg.inference import without_pretrained

    backbone = model_cfg.get("backbone") if isinstance(model_cfg.get("backbone"), dict) else {}
    init_cfg = backbone.get("init_cfg") if isinstance(backbone.get("init_cfg"), dict) else {}
    sources = [("model.pretrained", model_cfg.get("pretrained")),
               ("model.backbone.pretrained", backbone.get("pretrained"))]
    if init_cfg.get("type") == "Pretrained":
        sources.append(("model.backbone.init_cfg.checkpoint", init_cfg.get("checkpoint")))
    for where, source in sources:
        if isinstance(source, str) and "://" not in source and not os.path.isfile(os.path.expanduser(source)):
            raise ConfigError(f"{where}: checkpoint file not found: {source}")
    return without_pretrained(model_cfg)


def _on_meta(build: Callable[[], Any]) -> Any:
    """Build on the meta device; a constructor that needs real values (e.g. ``linspace().tolist()``) gets CPU."""
    try:
        with torch.device("meta"):
            return build()
    except NotImplementedError:
        return build()


def build_model_checked(model_cfg: Dict[str, Any]) -> torch.nn.Module:
    """Build each part of the model under its key path, then the whole model, on the meta device."""
    from rayseg.registry import BACKBONES, HEADS, NECKS, build
    from rayseg.models import build_segmentor

    model_cfg = _without_pretrained(model_cfg)
    parts = [("backbone", BACKBONES), ("neck", NECKS), ("decode_head", HEADS)]
    for key, registry in parts:
        if isinstance(model_cfg.get(key), dict):
            _at(f"model.{key}", lambda c=model_cfg[key], r=registry: _on_meta(lambda: build(c, r)))
    aux = model_cfg.get("auxiliary_head")
    if isinstance(aux, dict):
        _at("model.auxiliary_head", lambda: _on_meta(lambda: build(aux, HEADS)))
    elif isinstance(aux, list):
        for i, head in enumerate(aux):
            _at(f"model.auxiliary_head.{i}", lambda c=head: _on_meta(lambda: build(c, HEADS)))
    return _at("model", lambda: _on_meta(lambda: build_segmentor(model_cfg)))


def check_pipeline(pipeline: List[Dict[str, Any]], where: str) -> None:
    """Build a pipeline step by step (errors name ``<where>.<index>``), then as a whole."""
    from rayseg.datasets import build_pipeline

    if not isinstance(pipeline, list) or not pipeline:
        raise ConfigError(f"{where}: expected a non-empty list of steps, got {pipeline!r}")
    for i, step in enumerate(pipeline):
        _at(f"{where}.{i}", lambda s=step: build_pipeline([s]))
    _at(where, lambda: build_pipeline(pipeline))


def _check_dataset_args(dataset_cfg: Dict[str, Any], where: str) -> None:
    from rayseg.registry import DATASETS, check_kwargs

    if not isinstance(dataset_cfg, dict) or "type" not in dataset_cfg:
        raise ConfigError(f"{where}: expected a dataset mapping with a type, got {dataset_cfg!r}")
    cls = _at(f"{where}.type", lambda: DATASETS.get(dataset_cfg["type"]))
    _at(where, lambda: check_kwargs(cls, {k: v for k, v in dataset_cfg.items() if k != "type"},
                                    f"dataset {dataset_cfg['type']!r}"))
    check_pipeline(dataset_cfg.get("pipeline"), f"{where}.pipeline")


def check_run(spec: RunSpec, list_data: bool = True) -> CheckedRun:
    """Build the model (meta device, no pretrained weights), its losses, the optimizer, the lr schedule and
    every pipeline; with ``list_data`` also list the train and val datasets. Raises ConfigError/DataError
    naming the key path; creates no file and starts nothing."""
    from rayseg.datasets import build_dataset
    from rayseg.engine.optim import build_lr_schedule, build_optimizer

    model = build_model_checked(spec.model.config)
    _at("optimizer", lambda: build_optimizer(model, spec.optim.optimizer))
    _at("lr_config", lambda: build_lr_schedule(spec.optim.lr_config, spec.optim.base_lr, spec.max_iters))
    splits = {"train": spec.data.train, "val": spec.data.val, "test": spec.data.test}
    for split, dataset_cfg in splits.items():
        if dataset_cfg is not None:
            _check_dataset_args(dataset_cfg, f"data.{split}")
    checked = CheckedRun()
    if list_data:
        checked.train_set = _at("data.train", lambda: build_dataset(spec.data.train))
        if spec.evaluation.interval and spec.data.val is not None:
            checked.val_set = _at("data.val", lambda: build_dataset(spec.data.val))
            _check_classes(checked.train_set, checked.val_set, model)
    return checked


def _check_classes(train_set: Any, val_set: Any, model: torch.nn.Module) -> None:
    """The model's classifier must fit the data's classes: a mismatch would only fail (or mislead) later."""
    num_classes = getattr(model, "num_classes", None)
    for where, dataset in (("data.train", train_set), ("data.val", val_set)):
        n = len(getattr(dataset, "CLASSES", None) or [])
        if num_classes is not None and n and n != num_classes:
            raise ConfigError(f"model.decode_head.num_classes is {num_classes} but {where} "
                              f"({type(dataset).__name__}) has {n} classes")
