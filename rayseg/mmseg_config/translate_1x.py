"""MMSeg 1.x (MMEngine) config keys → rayseg's MMSeg 0.x vocabulary.

The dataloaders (``dataset_1x``), the optimizer and schedule (``schedule_1x``) and the pipelines
(``pipeline_1x``) have their own modules; this one handles the rest and puts the sections together:
``train_cfg`` (``IterBasedTrainLoop``: ``max_iters`` → ``runner``, ``val_interval`` → ``evaluation.interval``),
``default_hooks`` (``logger.interval`` → ``log_config.interval``, ``checkpoint`` → ``checkpoint_config``, its
``save_best`` → ``evaluation.save_best``), ``val_evaluator`` (``IoUMetric.iou_metrics`` → ``evaluation.metric``),
``env_cfg.cudnn_benchmark``, ``randomness`` (``seed``, ``deterministic``), and the keys with no meaning under
rayseg, reported as ignored with their reason.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional, Set, Tuple

from rayseg.mmseg_config.dataset_1x import translate_dataloader
from rayseg.mmseg_config.pipeline_1x import preprocessor_steps
from rayseg.mmseg_config.report import Report
from rayseg.mmseg_config.schedule_1x import translate_optim_wrapper, translate_param_scheduler

# Keys with no meaning under rayseg, whatever their value, and why.
IGNORED_1X = {
    "default_scope": "rayseg has one registry per kind of part",
    "visualizer": "rayseg draws predictions with jobs/predict.py --overlay",
    "vis_backends": "every scalar goes to MLflow (the mlflow section)",
    "log_processor": "rayseg logs by iteration, smoothed over log_config.interval",
    "launcher": "Ray Train starts the workers (scaling.num_workers)",
    "tta_model": "test-time augmentation is jobs/test.py --aug-test",
    "tta_pipeline": "test-time augmentation is jobs/test.py --aug-test (it scales the test pipeline)",
    "val_cfg": "rayseg validates every evaluation.interval iterations",
    "test_cfg": "jobs/test.py evaluates the test split",
}
_HOOKS_IGNORED = {
    "timer": "rayseg times every iteration itself", "param_scheduler": "rayseg steps the lr every iteration",
    "sampler_seed": "the data stream is seeded by each sample's position",
}
# MMEngine's hooks a config may list in custom_hooks, and why rayseg has none of them.
_MMENGINE_HOOKS = {
    "EMAHook": "rayseg keeps no exponential moving average of the weights",
    "EmptyCacheHook": "rayseg does not empty the CUDA cache between iterations",
    "SyncBuffersHook": "buffers are synchronised by SyncBN (norm_cfg type SyncBN)",
    "ProfilerHook": "profile with bench/train_step.py",
    "NaiveVisualizationHook": "rayseg draws predictions with jobs/predict.py --overlay",
    "SegVisualizationHook": "rayseg draws predictions with jobs/predict.py --overlay",
    "RuntimeInfoHook": "rayseg logs the lr and iteration itself", "IterTimerHook": "rayseg times every iteration",
    "LoggerHook": "set log_config.interval", "CheckpointHook": "set checkpoint_config",
    "ParamSchedulerHook": "rayseg steps the lr every iteration", "DistSamplerSeedHook": "the data stream is seeded",
}
# Every 1.x top-level key this module reads (the classifier treats them as config keys, not helpers).
KEYS_1X = frozenset({"train_dataloader", "val_dataloader", "test_dataloader", "optim_wrapper", "param_scheduler",
                     "train_cfg", "default_hooks", "val_evaluator", "test_evaluator", "env_cfg", "randomness",
                     "resume", "custom_hooks", "auto_scale_lr", "custom_imports", *IGNORED_1X})


def _loop(train_cfg: Any, report: Report) -> Tuple[Optional[int], Optional[int]]:
    """(max_iters, val_interval) of an ``IterBasedTrainLoop``."""
    if not isinstance(train_cfg, dict) or train_cfg.get("type", "IterBasedTrainLoop") != "IterBasedTrainLoop":
        report.refuse("train_cfg", f"{train_cfg!r}: rayseg trains by iteration; use "
                                   "dict(type='IterBasedTrainLoop', max_iters=N, val_interval=M)")
        return None, None
    for key in sorted(set(train_cfg) - {"type", "max_iters", "val_interval", "val_begin"}):
        report.refuse(f"train_cfg.{key}", "has no rayseg equivalent")
    if train_cfg.get("val_begin", 1) not in (0, 1):
        report.refuse("train_cfg.val_begin", "rayseg validates from the first interval on")
    return train_cfg.get("max_iters"), train_cfg.get("val_interval", 1000)


def _hooks(hooks: Any, out: Dict[str, Any], report: Report) -> None:
    if not isinstance(hooks, dict):
        report.refuse("default_hooks", f"expected a dict of hooks, got {hooks!r}")
        return
    for name, hook in hooks.items():
        where = f"default_hooks.{name}"
        if hook is None:
            continue
        if name in _HOOKS_IGNORED:
            report.ignore(where, _HOOKS_IGNORED[name])
        elif name == "logger":
            if "interval" in hook:
                out.setdefault("log_config", {})["interval"] = hook["interval"]
            for key in sorted(set(hook) - {"type", "interval", "log_metric_by_epoch", "ignore_last"}):
                report.refuse(f"{where}.{key}", "has no rayseg equivalent")
        elif name == "checkpoint":
            _checkpoint(hook, where, out, report)
        elif name == "visualization":
            if hook.get("draw"):
                report.refuse(f"{where}.draw", "rayseg does not draw during validation; use jobs/predict.py "
                                               "--overlay")
            else:
                report.ignore(where, "draw is off: the hook does nothing")
        else:
            report.refuse(where, f"hook {hook.get('type', name)!r} has no rayseg equivalent")


def _checkpoint(hook: Dict[str, Any], where: str, out: Dict[str, Any], report: Report) -> None:
    ckpt = out.setdefault("checkpoint_config", {"by_epoch": False})
    for key, value in hook.items():
        if key == "type":
            continue
        if key == "by_epoch":
            if value:
                report.refuse(f"{where}.by_epoch", "rayseg checkpoints by iteration: set by_epoch=False")
        elif key in ("interval", "max_keep_ckpts"):
            ckpt[key] = None if key == "max_keep_ckpts" and value == -1 else value
        elif key == "save_best":
            out.setdefault("evaluation", {})["save_best"] = value
        elif key == "rule" and value in (None, "greater"):
            continue
        elif key == "save_last" and value:
            continue
        else:
            report.refuse(f"{where}.{key}", "has no rayseg equivalent")


def _evaluator(ev: Any, where: str, report: Report) -> Optional[Any]:
    """``evaluation.metric`` for an ``IoUMetric`` (or a list of them)."""
    evs = ev if isinstance(ev, (list, tuple)) else [ev]
    metrics = []
    for i, e in enumerate(evs):
        at = f"{where}.{i}" if isinstance(ev, (list, tuple)) else where
        if not isinstance(e, dict) or e.get("type") != "IoUMetric":
            report.refuse(at, f"{e!r}: only IoUMetric is translated (rayseg computes aAcc, IoU, Dice, Fscore)")
            continue
        for key in sorted(set(e) - {"type", "iou_metrics", "nan_to_num", "beta", "collect_device", "prefix"}):
            report.refuse(f"{at}.{key}", "has no rayseg equivalent")
        if e.get("nan_to_num") is not None or e.get("beta", 1) != 1:
            report.refuse(at, "nan_to_num and beta other than the defaults have no rayseg equivalent")
        metrics.extend(m for m in e.get("iou_metrics", ["mIoU"]) if m not in metrics)
    return metrics[0] if len(metrics) == 1 else (metrics or None)


def _custom_hooks(hooks: Any, out: Dict[str, Any], report: Report) -> None:
    """The user's hooks carry over (registered through ``custom_imports``, checked when the run resolves);
    MMEngine's own hooks have no rayseg equivalent and are refused by index."""
    if not hooks:
        return
    if not isinstance(hooks, list):
        report.refuse("custom_hooks", f"expected a list of hooks, got {hooks!r}")
        return
    kept = []
    for i, hook in enumerate(hooks):
        kind = hook.get("type") if isinstance(hook, dict) else None
        if kind in _MMENGINE_HOOKS:
            report.refuse(f"custom_hooks.{i}", f"{kind!r} is MMEngine's: {_MMENGINE_HOOKS[kind]}")
        else:
            kept.append(copy.deepcopy(hook))
    if kept:
        out["custom_hooks"] = kept


def _runtime(cfg: Dict[str, Any], out: Dict[str, Any], report: Report) -> None:
    env = cfg.get("env_cfg")
    if isinstance(env, dict):
        for key, value in env.items():
            if key == "cudnn_benchmark":
                out["cudnn_benchmark"] = bool(value)
            else:
                report.ignore(f"env_cfg.{key}", "Ray Train sets up processes and torch.distributed itself")
    rnd = cfg.get("randomness")
    if isinstance(rnd, dict):
        for key, value in rnd.items():
            if key in ("seed", "deterministic"):
                out[key] = value
            elif key == "diff_rank_seed" and not value:
                continue
            else:
                report.refuse(f"randomness.{key}", "has no rayseg equivalent")
    if cfg.get("resume"):
        report.refuse("resume", "use jobs/train.py --resume (continues the run in the work dir)")
    elif "resume" in cfg:
        report.ignore("resume", "False: a new run (jobs/train.py --resume continues one)")
    _custom_hooks(cfg.get("custom_hooks"), out, report)
    scale = cfg.get("auto_scale_lr")
    if isinstance(scale, dict) and scale.get("enable"):
        report.refuse("auto_scale_lr", "rayseg does not rescale the lr; set optimizer.lr for your batch size")
    elif scale is not None:
        report.ignore("auto_scale_lr", "enable=False")
    if cfg.get("custom_imports") is not None:
        out["custom_imports"] = copy.deepcopy(cfg["custom_imports"])  # same key, same meaning in rayseg
    for key, reason in IGNORED_1X.items():
        if key in cfg:
            report.ignore(key, reason)


def translate(cfg: Dict[str, Any], report: Report) -> Tuple[Dict[str, Any], Set[str]]:
    """The rayseg sections for a 1.x config, and the top-level keys they were made from."""
    out: Dict[str, Any] = {}
    model = copy.deepcopy(cfg.get("model"))
    dp = model.pop("data_preprocessor", None) if isinstance(model, dict) else None
    if model is not None:
        out["model"] = model
    normalize, pad = preprocessor_steps(dp, "model.data_preprocessor", report)
    max_iters, val_interval = (_loop(cfg["train_cfg"], report) if "train_cfg" in cfg else (None, None))
    if max_iters is not None:
        out["runner"] = {"type": "IterBasedRunner", "max_iters": max_iters}

    data: Dict[str, Any] = {}
    for split, key in (("train", "train_dataloader"), ("val", "val_dataloader"), ("test", "test_dataloader")):
        if key not in cfg:
            continue
        if split == "test" and "val" in data and cfg[key] == cfg.get("val_dataloader"):
            data["test"] = copy.deepcopy(data["val"])  # test_dataloader = val_dataloader: reported once
            continue
        dataset, sizes = translate_dataloader(cfg[key], key, report, split != "train", normalize, pad)
        if dataset is not None:
            data[split] = dataset
        if split == "train":
            if "batch_size" in sizes:
                data["samples_per_gpu"] = sizes["batch_size"]
            if "num_workers" in sizes:
                data["workers_per_gpu"] = sizes["num_workers"]
        else:
            for name, value in sizes.items():
                report.ignore(f"{key}.{name}", f"{value}: rayseg evaluates with the model replicas of its "
                                               "training workers (jobs/test.py: --num-workers)")
    if data:
        out["data"] = {k: data[k] for k in ("samples_per_gpu", "workers_per_gpu", "train", "val", "test") if k in data}

    if "optim_wrapper" in cfg:
        out.update(translate_optim_wrapper(cfg["optim_wrapper"], report))
    if "param_scheduler" in cfg:
        lr = translate_param_scheduler(cfg["param_scheduler"], max_iters, report)
        if lr is not None:
            out["lr_config"] = lr
    if "default_hooks" in cfg:
        _hooks(cfg["default_hooks"], out, report)
    if val_interval is not None:
        interval = val_interval if "val" in data else 0
        if "val_dataloader" not in cfg:
            report.note("train_cfg.val_interval", "no val_dataloader: no validation (evaluation.interval: 0)")
        out.setdefault("evaluation", {})["interval"] = interval
    if "val_evaluator" in cfg:
        metric = _evaluator(cfg["val_evaluator"], "val_evaluator", report)
        if metric is not None:
            out.setdefault("evaluation", {})["metric"] = metric
    if "test_evaluator" in cfg and cfg["test_evaluator"] != cfg.get("val_evaluator"):
        _evaluator(cfg["test_evaluator"], "test_evaluator", report)
        report.ignore("test_evaluator", "jobs/test.py reports every metric (evaluation.metric picks the columns)")
    _runtime(cfg, out, report)
    order = ("model", "data", "optimizer", "optimizer_config", "lr_config", "runner", "checkpoint_config",
             "evaluation", "log_config")
    out = {**{k: out[k] for k in order if k in out}, **{k: v for k, v in out.items() if k not in order}}
    return out, set(KEYS_1X) | {"model"}
