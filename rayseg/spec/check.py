"""Build everything a run spec names, on the driver, before Ray starts or any file or MLflow run is made.

The model is built on PyTorch's ``meta`` device with pretrained weights switched off (constructors and
their argument checks run; nothing is allocated or downloaded), then its optimizer and lr and momentum
schedules; every pipeline is built step by step so an error names the step's key path. With ``list_data`` the
train and val datasets are also listed (root exists, split not empty, every image has its mask) and returned,
so the trainer does not list them twice.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

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
    """The model config with pretraining off at every depth (the check must not download or read weights); a
    local pretrained file that does not exist is an error now rather than in every worker later."""
    from rayseg.inference import without_pretrained
    from rayseg.models.pretrained import local_pretrained_hint, pretrained_sources

    for where, source in pretrained_sources(model_cfg):
        if isinstance(source, str) and "://" not in source and not os.path.isfile(os.path.expanduser(source)):
            raise ConfigError(f"{where}: checkpoint file not found: {source}; {local_pretrained_hint(source)}")
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
    from rayseg.datasets.dataset_wrappers import leaf_dataset_cfgs

    cls = _at(f"{where}.type", lambda: DATASETS.get(dataset_cfg["type"]))
    _at(where, lambda: check_kwargs(cls, {k: v for k, v in dataset_cfg.items() if k != "type"},
                                    f"dataset {dataset_cfg['type']!r}"))
    leaves = _at(where, lambda: leaf_dataset_cfgs(dataset_cfg, where))
    if leaves != [(where, dataset_cfg)]:  # a wrapper: its own arguments above, then every dataset inside
        if dataset_cfg["type"] == "MultiImageMixDataset":
            check_pipeline(dataset_cfg.get("pipeline"), f"{where}.pipeline")
        for inner_where, inner in leaves:
            _check_dataset_args(inner, inner_where)
        return
    check_pipeline(dataset_cfg.get("pipeline"), f"{where}.pipeline")


_JOB_COPY = ("this job runs in Ray's temporary copy of the submitted working directory ({pkg}), which holds "
             "only the uploaded files (.rayignore leaves data/ and work_dirs/ out) and is deleted with the Ray "
             "session")


def _local_path_of(uri: str) -> Optional[str]:
    """The local file a tracking URI or storage location points at (None for servers and object stores)."""
    if uri.startswith("sqlite:///"):
        return uri[len("sqlite:///"):]
    for scheme in ("file://", "file:"):
        if uri.startswith(scheme):
            return uri[len(scheme):]
    return None if "://" in uri else uri


def _inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path == folder or path.startswith(folder + os.sep)


def check_job_paths(spec: RunSpec, package_dir: Optional[str]) -> None:
    """Under ``ray job submit --working-dir``, refuse inputs that are not in the job's copy and outputs that
    would land in it (and vanish with it), saying to use an absolute path, a shared mount or a URI.

    ``package_dir``: the copy (``rayseg.utils.ray_session.job_package_dir()``); None outside such a job. A
    relative ``data_root`` that does exist in the copy (data uploaded with the code) is accepted. Where the
    user meant a relative path to point cannot be known from inside the job, so nothing is re-resolved.
    """
    if package_dir is None:
        return
    why = _JOB_COPY.format(pkg=package_dir)
    splits = [("train", spec.data.train)] + ([("val", spec.data.val)] if spec.evaluation.interval else [])
    for split, dataset_cfg in splits:
        if not isinstance(dataset_cfg, dict):
            continue
        root, img_dir = dataset_cfg.get("data_root"), dataset_cfg.get("img_dir") or ""
        key, shown = (f"data.{split}.data_root", root) if root else (f"data.{split}.img_dir", img_dir)
        if not isinstance(shown, str) or not shown or os.path.isabs(shown) or "://" in shown:
            continue
        images = os.path.join(root, img_dir) if root and not os.path.isabs(img_dir) else (img_dir or root)
        if not os.path.isdir(images):
            raise ConfigError(f"{key}: {shown!r} is a relative path and {why}; use an absolute path that exists "
                              f"on every node (a shared mount): --cfg-options {key}=/ABSOLUTE/PATH")
    outputs = [
        ("the work dir (--work-dir, work_dir or the default work_dirs/<config name>)", spec.work_dir,
         "pass --work-dir /ABSOLUTE/PATH on storage the head can write (a shared mount on a multi-node cluster)"),
        ("storage_path", spec.checkpoint.storage, "use an absolute path on a shared mount or a URI (s3://, gs://)"),
        ("mlflow.tracking_uri", _local_path_of(spec.tracking.tracking_uri) or "",
         "use an absolute path or a tracking server (http://...)"),
    ]
    for key, path, fix in outputs:
        if path and _inside(os.path.join(package_dir, path), package_dir):
            raise ConfigError(f"{key}: {path} would be inside the job's working-directory copy: {why}, and "
                              f"the outputs with it; {fix}")


def check_optim(spec: RunSpec, model: torch.nn.Module) -> None:
    """Build the optimizer (its constructor and param groups), the lr schedule and the momentum schedule as the
    training workers will, and check ``optimizer_config.grad_clip``; errors name the key path."""
    from rayseg.optim import build_lr_schedule, build_momentum_schedule, build_optimizer, check_grad_clip

    optim = spec.optim
    optimizer = _at("optimizer", lambda: build_optimizer(model, optim.optimizer))
    _at("lr_config", lambda: build_lr_schedule(optim.lr_config, optim.base_lr, spec.max_iters,
                                               optim.iters_per_epoch))
    momentum = _at("momentum_config", lambda: build_momentum_schedule(optim.momentum_config, spec.max_iters,
                                                                      optim.iters_per_epoch))
    if momentum is not None:
        _at("momentum_config", lambda: momentum.check(optimizer))
    _at("optimizer_config.grad_clip", lambda: check_grad_clip(optim.grad_clip))


def check_run(spec: RunSpec, list_data: bool = True) -> CheckedRun:
    """Build the model (meta device, no pretrained weights), its losses, the optimizer, the lr and momentum
    schedules and every pipeline; with ``list_data`` also list the train and val datasets. Raises
    ConfigError/DataError naming the key path; creates no file and starts nothing. With ``list_data`` (the run is
    about to start), a job submitted with ``--working-dir`` is also checked for paths into its temporary copy."""
    from rayseg.datasets import build_dataset
    from rayseg.utils.ray_session import job_package_dir

    if list_data:
        check_job_paths(spec, job_package_dir())
    model = build_model_checked(spec.model.config)
    check_optim(spec, model)
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
