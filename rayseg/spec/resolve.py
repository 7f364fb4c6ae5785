"""``resolve_run``: a loaded config dict (plus the command line's choices) → one typed ``RunSpec``.

This is the only place that reads run-level keys out of the config dict. It builds nothing and touches
no file or service (one exception: a schedule that counts epochs, ``by_epoch``, lists the training set for its
length); ``rayseg.spec.check`` then builds everything the spec names.
"""
from __future__ import annotations

import copy
import inspect
import os
from typing import Any, Dict, List, Optional, Tuple

from rayseg.errors import ConfigError, DataError
from rayseg.spec.policy import apply_key_policy, iters_per_epoch
from rayseg.spec.sections import (CheckpointSpec, DataSpec, EvalSpec, LogSpec, ModelSpec, OptimSpec, RunSpec,
                                  ScalingSpec, TrackingSpec)

# Without lr_config: MMSeg's poly schedule (kept in the resolved config, so print_config shows what runs).
DEFAULT_LR_CONFIG: Dict[str, Any] = {"policy": "poly", "power": 0.9, "min_lr": 1e-4, "by_epoch": False}
PLACEMENT_STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")
# Ray Data start-up is 8–12 s on 2 cores; object-storage reads can be slower. Five minutes without a
# first batch means the stream cannot run, not that it is slow.
DEFAULT_FIRST_BATCH_TIMEOUT_S = 300.0


def resolve_work_dir(cfg: Dict[str, Any], work_dir: Optional[str], config_path: Optional[str]) -> str:
    """``--work-dir`` beats ``work_dir`` in the config, which beats ``./work_dirs/<config name>``."""
    chosen = work_dir or cfg.get("work_dir")
    if not chosen:
        stem = os.path.splitext(os.path.basename(config_path or "rayseg"))[0]
        chosen = os.path.join("work_dirs", stem)
    return os.path.abspath(chosen)


def _section(cfg: Dict[str, Any], key: str) -> Dict[str, Any]:
    value = cfg.get(key)
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{key}: this section is required")
    return value


def _dataset_ignore_index(dataset_cfg: Dict[str, Any], where: str) -> int:
    """The dataset's ``ignore_index``: its config's, else its class's default (what ``jobs/test.py`` uses)."""
    from rayseg.datasets import CustomDataset  # noqa: F401  (registers the datasets)
    from rayseg.registry import DATASETS

    from rayseg.datasets.dataset_wrappers import leaf_dataset_cfgs

    where, dataset_cfg = leaf_dataset_cfgs(dataset_cfg, where)[0]  # a wrapper's parts share it (ConcatDataset checks)
    if dataset_cfg.get("ignore_index") is not None:
        return int(dataset_cfg["ignore_index"])
    try:
        cls = DATASETS.get(dataset_cfg.get("type"))
    except ConfigError as exc:
        raise ConfigError(f"{where}.type: {exc}") from exc
    if getattr(cls, "IGNORE_INDEX", None) is not None:  # the class's own default (e.g. a dataset using 0)
        return int(cls.IGNORE_INDEX)
    param = inspect.signature(cls).parameters.get("ignore_index")
    default = param.default if param is not None else None
    return int(default) if isinstance(default, int) else 255


def _data(cfg: Dict[str, Any], eval_interval: int) -> DataSpec:
    from rayseg.datasets import bad_samples, decoded_cache

    data = _section(cfg, "data")
    for key in ("samples_per_gpu", "train"):
        if key not in data:
            raise ConfigError(f"data.{key} is required")
    if data["samples_per_gpu"] < 1:
        raise ConfigError(f"data.samples_per_gpu must be at least 1, got {data['samples_per_gpu']}")
    workers = data.get("workers_per_gpu", 1)
    if workers < 0:
        raise ConfigError(f"data.workers_per_gpu must be 0 or more, got {workers}")
    if eval_interval and not data.get("val"):
        raise ConfigError(f"evaluation.interval is {eval_interval} but data.val is not set; add data.val or set "
                          "evaluation.interval: 0")
    first_batch_timeout = float(data.get("first_batch_timeout_s", DEFAULT_FIRST_BATCH_TIMEOUT_S))
    if first_batch_timeout <= 0:
        raise ConfigError(f"data.first_batch_timeout_s must be > 0 seconds, got {first_batch_timeout}")
    on_bad_sample = data.get("on_bad_sample", bad_samples.DEFAULT_MODE)
    if on_bad_sample not in bad_samples.MODES:
        raise ConfigError(f"data.on_bad_sample must be one of {', '.join(bad_samples.MODES)}, got {on_bad_sample!r}")
    max_bad = data.get("max_bad_samples", bad_samples.DEFAULT_MAX_BAD_SAMPLES)
    if max_bad < 0:
        raise ConfigError(f"data.max_bad_samples must be 0 or more, got {max_bad}")
    cache_decoded = decoded_cache.normalise_mode(data.get("cache_decoded", decoded_cache.DEFAULT_MODE))
    # workers_per_gpu: 0 means "load in the training process" in MMSeg; under Ray one actor per worker decodes.
    return DataSpec(samples_per_gpu=int(data["samples_per_gpu"]), workers_per_gpu=max(1, int(workers)),
                    train=data["train"], val=data.get("val") or None, test=data.get("test") or None,
                    first_batch_timeout_s=first_batch_timeout, on_bad_sample=on_bad_sample,
                    max_bad_samples=int(max_bad), cache_decoded=cache_decoded)


def _epoch_keys(lr_config: Dict[str, Any], momentum_config: Optional[Dict[str, Any]]) -> List[str]:
    """The keys that make a schedule count epochs of the training set."""
    keys = [f"lr_config.{k}" for k in ("by_epoch", "warmup_by_epoch") if lr_config.get(k)]
    if isinstance(momentum_config, dict) and momentum_config.get("by_epoch"):
        keys.append("momentum_config.by_epoch")
    return keys


def _train_set_size(data: DataSpec) -> int:
    """The number of training samples (the dataset is listed: only schedules that count epochs need this)."""
    from rayseg.datasets import build_dataset

    try:
        return len(build_dataset(data.train))
    except (ConfigError, DataError) as exc:
        if str(exc).startswith(("data.train:", "data.train.")):
            raise
        raise type(exc)(f"data.train: {exc}") from exc


def _optim(cfg: Dict[str, Any], data: DataSpec, num_workers: int) -> OptimSpec:
    optimizer = _section(cfg, "optimizer")
    if "lr" not in optimizer:
        raise ConfigError("optimizer.lr is required")
    lr_config = cfg.get("lr_config") or dict(DEFAULT_LR_CONFIG)
    cfg["lr_config"] = lr_config  # print_config and MLflow show the schedule that runs
    momentum_config = cfg.get("momentum_config") or None
    epoch_keys = _epoch_keys(lr_config, momentum_config)
    # by_epoch means epochs of the training set, resolved here once (rayseg.spec.policy.iters_per_epoch).
    epoch = (iters_per_epoch(_train_set_size(data), data.samples_per_gpu, num_workers, epoch_keys[0])
             if epoch_keys else None)
    opt_cfg = cfg.get("optimizer_config") or {}
    return OptimSpec(optimizer=optimizer, base_lr=float(optimizer["lr"]), lr_config=lr_config,
                     grad_clip=opt_cfg.get("grad_clip") or None, skip_nonfinite=bool(opt_cfg.get("skip_nonfinite")),
                     momentum_config=momentum_config, iters_per_epoch=epoch)


def _evaluation(cfg: Dict[str, Any], data_val: Optional[Dict[str, Any]]) -> EvalSpec:
    from rayseg.engine.best import resolve_save_best
    from rayseg.evaluation.report import per_class_columns

    ev = cfg.get("evaluation") or {}
    interval = int(ev.get("interval") or 0)
    if interval < 0:
        raise ConfigError(f"evaluation.interval must be 0 (no validation) or more, got {interval}")
    metric = ev.get("metric", "mIoU")
    metrics = tuple([metric] if isinstance(metric, str) else metric)
    try:
        per_class_columns(metrics)
    except ValueError as exc:
        raise ConfigError(f"evaluation.metric: {exc}") from exc
    save_best = resolve_save_best(ev.get("save_best"), metrics, interval)
    ignore_index = _dataset_ignore_index(data_val, "data.val") if data_val else 255
    return EvalSpec(interval=interval, metrics=metrics, save_best=save_best, ignore_index=ignore_index)


def _scaling(cfg: Dict[str, Any]) -> ScalingSpec:
    sc = cfg.get("scaling") or {}
    min_workers, num_workers = _worker_range(sc.get("num_workers", 1))
    strategy = sc.get("placement_strategy", "PACK")
    if strategy not in PLACEMENT_STRATEGIES:
        raise ConfigError(f"scaling.placement_strategy: {strategy!r}; use one of {', '.join(PLACEMENT_STRATEGIES)}")
    resources = sc.get("resources_per_worker") or None
    if resources is not None:
        bad = {k: v for k, v in resources.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0}
        if bad:
            raise ConfigError(f"scaling.resources_per_worker: amounts must be numbers >= 0, got {bad}")
    # Elastic training exists to survive lost nodes, which Ray Train reports as failures: retry by default.
    max_failures = (cfg.get("failure") or {}).get("max_failures", -1 if min_workers is not None else 0)
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < -1:
        raise ConfigError(f"failure.max_failures must be an int (-1: retry forever), got {max_failures!r}")
    if min_workers is not None and max_failures == 0:
        raise ConfigError("scaling.num_workers [MIN, MAX] (elastic) continues after a lost node by restarting the "
                          "workers, which Ray Train counts as a failure; failure.max_failures: 0 forbids that. "
                          "Leave failure.max_failures out (-1, retry forever) or give it a positive number")
    interval = sc.get("elastic_resize_monitor_interval_s", 60.0)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval < 0:
        raise ConfigError(f"scaling.elastic_resize_monitor_interval_s must be a number >= 0, got {interval!r}")
    return ScalingSpec(num_workers=num_workers, use_gpu=bool(sc.get("use_gpu", False)),
                       resources_per_worker=dict(resources) if resources else None,
                       placement_strategy=strategy, max_failures=max_failures, min_workers=min_workers,
                       elastic_resize_monitor_interval_s=float(interval))


def _worker_range(value: Any) -> Tuple[Optional[int], int]:
    """``scaling.num_workers``: an int (a fixed size: ``(None, N)``) or ``[MIN, MAX]`` (elastic: ``(MIN, MAX)``)."""
    def count(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"scaling.num_workers: worker counts must be integers >= 1, got {value!r}")
        return v

    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ConfigError(f"scaling.num_workers: give one int or [MIN, MAX], got {value!r}")
        low, high = count(value[0]), count(value[1])
        if low > high:
            raise ConfigError(f"scaling.num_workers: [MIN, MAX] needs MIN <= MAX, got {value!r}")
        return (low, high) if low < high else (None, high)  # [N, N] is simply N workers
    return None, count(value)


def _tracking(cfg: Dict[str, Any], work_dir: str) -> TrackingSpec:
    from rayseg.tracking import tracking_store

    ml = cfg.setdefault("mlflow", {})
    uri, artifact_root = tracking_store(ml.get("tracking_uri"), work_dir)
    # Resolved once, here, and kept in the config: config.yaml and every checkpoint's meta then name the store
    # this run records to, so `jobs/test.py --mlflow-run-id` finds the run wherever it is started.
    ml["tracking_uri"] = uri
    interval = float(ml.get("system_metrics_interval", 10))
    if interval <= 0:
        raise ConfigError(f"mlflow.system_metrics_interval must be > 0 seconds, got {interval}")
    return TrackingSpec(tracking_uri=uri, artifact_root=artifact_root,
                        experiment_name=ml.get("experiment_name") or "rayseg", run_name=ml.get("run_name"),
                        tags={str(k): str(v) for k, v in (ml.get("tags") or {}).items()},
                        system_metrics=bool(ml.get("system_metrics", True)), system_metrics_interval=interval,
                        register_model=_registered_model_name(ml.get("register_model")))


def _registered_model_name(name: Optional[str]) -> Optional[str]:
    """``mlflow.register_model`` checked: MLflow's registry refuses names with '/' or ':' only after training."""
    if name is None:
        return None
    if not name.strip() or any(c in name for c in "/:%?#"):
        raise ConfigError(f"mlflow.register_model: {name!r} is not a registered model name (no '/', ':', '%', "
                          "'?' or '#', not empty)")
    return name


def resolve_run(cfg: Dict[str, Any], work_dir: Optional[str] = None, config_path: Optional[str] = None,
                resume: bool = False, load_from: Optional[str] = None, seed: Optional[int] = None,
                deterministic: bool = False) -> RunSpec:
    """Resolve a loaded config and the command line's choices into a ``RunSpec``; ``cfg`` is not changed.

    ``work_dir``/``load_from``/``seed`` override the config's keys; ``deterministic`` only switches it on.
    Raises ``ConfigError`` naming the key for anything rayseg would refuse or could not honour.
    """
    from rayseg.engine.precision import resolve_precision
    from rayseg.custom_imports import import_custom_modules, resolve_custom_imports
    from rayseg.engine.hooks import resolve_custom_hooks
    from rayseg.engine.storage import storage_root
    from rayseg.models import uses_sync_bn

    cfg = copy.deepcopy(cfg)
    # First: the user's modules register the parts that every later step looks up by name.
    custom_imports = import_custom_modules(resolve_custom_imports(cfg.get("custom_imports")))
    custom_hooks = resolve_custom_hooks(cfg.get("custom_hooks"))
    notes = apply_key_policy(cfg)
    work_dir = resolve_work_dir(cfg, work_dir, config_path)
    seed = seed if seed is not None else cfg.get("seed")
    resolved = {
        "work_dir": work_dir,
        "load_from": load_from or cfg.get("load_from"),
        # MMSeg draws a random seed for seed: null; rayseg runs are reproducible by default, so null means 0.
        "seed": int(seed or 0),
        "deterministic": bool(deterministic or cfg.get("deterministic")),
    }
    cfg.update(resolved)
    if cfg.get("resume_from") and resume:
        raise ConfigError("resume_from and --resume both given: --resume continues the run in the work dir, "
                          "resume_from starts this work dir from another run's checkpoint; choose one")
    max_iters = int(cfg["runner"]["max_iters"])
    evaluation = _evaluation(cfg, (cfg.get("data") or {}).get("val") or None)
    data = _data(cfg, evaluation.interval)
    model = _section(cfg, "model")
    ckpt = cfg.get("checkpoint_config") or {}
    interval = int(ckpt.get("interval") or max_iters)
    max_keep = ckpt.get("max_keep_ckpts")
    if interval < 1 or (max_keep is not None and max_keep < 1):
        raise ConfigError(f"checkpoint_config: interval must be >= 1 and max_keep_ckpts >= 1 or null, got "
                          f"{interval} and {max_keep}")
    log_cfg = cfg.get("log_config") or {}
    log_interval = int(log_cfg.get("interval", 50))
    if log_interval < 1:
        raise ConfigError(f"log_config.interval must be at least 1, got {log_interval}")
    scaling = _scaling(cfg)
    return RunSpec(
        config=cfg, work_dir=work_dir, run_name=os.path.basename(work_dir), max_iters=max_iters,
        seed=resolved["seed"], deterministic=resolved["deterministic"], data=data,
        model=ModelSpec(config=model, sync_bn=uses_sync_bn(model)), optim=_optim(cfg, data, scaling.num_workers),
        evaluation=evaluation,
        checkpoint=CheckpointSpec(interval=interval, max_keep=max_keep,
                                  storage=storage_root(cfg.get("storage_path"), work_dir)),
        scaling=scaling, precision=resolve_precision(cfg), tracking=_tracking(cfg, work_dir),
        log=LogSpec(interval=log_interval, level=str(cfg.get("log_level", "INFO")).upper()),
        config_path=config_path, resume=bool(resume),
        load_from=resolved["load_from"], resume_from=cfg.get("resume_from"), notes=tuple(notes),
        custom_imports=custom_imports, custom_hooks=custom_hooks)
