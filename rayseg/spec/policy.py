"""MMSeg keys whose meaning changes under Ray: each one either does what an MMSeg user expects, or is refused
with what to use instead, or (when it has no meaning under Ray at all) is accepted with one printed note.

docs/configs.md lists the same rules for users. ``apply_key_policy`` runs on a copy of the loaded config
during ``resolve_run``; it may rewrite keys into rayseg's spelling (``MlflowLoggerHook``'s ``exp_name`` →
``mlflow.experiment_name``), and returns the notes to print.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List

from rayseg.errors import ConfigError

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SUPPORTED_HOOKS = ("TextLoggerHook", "MlflowLoggerHook")
OPTIMIZER_HOOKS = ("OptimizerHook", "Fp16OptimizerHook")

DIST_PARAMS_NOTE = ("dist_params is not used: Ray Train sets up torch.distributed itself "
                    "(gloo on CPU workers, NCCL on GPU workers)")
PRE_EVAL_NOTE = ("evaluation.pre_eval has no effect: rayseg always accumulates per-class areas image by image "
                 "(MMSeg's pre_eval: true), which gives the same metrics with flat memory")


def _check_runner(cfg: Dict[str, Any]) -> None:
    runner = cfg.get("runner") or {}
    kind = runner.get("type", "IterBasedRunner")
    if kind != "IterBasedRunner":
        raise ConfigError(f"runner.type: only IterBasedRunner is supported, got {kind!r}; rayseg trains by "
                          "iteration: set runner: {type: IterBasedRunner, max_iters: N}")
    if not isinstance(runner.get("max_iters"), int) or runner["max_iters"] < 1:
        raise ConfigError(f"runner.max_iters: a positive number of iterations is required, got "
                          f"{runner.get('max_iters')!r}")


def _check_workflow(cfg: Dict[str, Any]) -> None:
    if "workflow" not in cfg:
        return
    flow = cfg["workflow"]
    ok = (isinstance(flow, list) and len(flow) == 1 and isinstance(flow[0], list) and len(flow[0]) == 2
          and flow[0][0] == "train" and isinstance(flow[0][1], int) and not isinstance(flow[0][1], bool)
          and flow[0][1] >= 1)
    if not ok:
        raise ConfigError(f"workflow: {flow!r} is not supported; rayseg runs one training phase "
                          "(workflow: [[train, 1]], or leave it out) and validates every evaluation.interval "
                          "iterations")


def _hook_interval(hook: Dict[str, Any], where: str, cfg: Dict[str, Any]) -> None:
    interval = (cfg.get("log_config") or {}).get("interval")
    if "interval" in hook and hook["interval"] != interval:
        raise ConfigError(f"{where}.interval: {hook['interval']!r} differs from log_config.interval "
                          f"({interval!r}); every logger writes at log_config.interval, set that instead")
    if hook.get("by_epoch", False):
        raise ConfigError(f"{where}.by_epoch: rayseg logs by iteration; set by_epoch: false or leave it out")


def _check_log_hooks(cfg: Dict[str, Any]) -> None:
    """TextLoggerHook is train.log (always written); MlflowLoggerHook maps onto the ``mlflow`` section."""
    hooks = (cfg.get("log_config") or {}).get("hooks") or []
    for i, hook in enumerate(hooks):
        where = f"log_config.hooks.{i}"
        if not isinstance(hook, dict) or "type" not in hook:
            raise ConfigError(f"{where}: expected a mapping with a type, got {hook!r}")
        kind = hook["type"]
        if kind not in SUPPORTED_HOOKS:
            raise ConfigError(f"{where}.type: {kind!r} is not supported; rayseg writes train.log "
                              "(TextLoggerHook) and records every scalar in MLflow (the mlflow section, "
                              "MlflowLoggerHook); use those")
        _hook_interval(hook, where, cfg)
        allowed = {"type", "interval", "by_epoch"}
        if kind == "MlflowLoggerHook":
            allowed |= {"exp_name", "tags", "log_model"}
            if hook.get("log_model") is False:
                raise ConfigError(f"{where}.log_model: rayseg always logs the final weights to MLflow; "
                                  "remove log_model: false")
            ml = cfg.setdefault("mlflow", {})
            if hook.get("exp_name") is not None:
                ml["experiment_name"] = str(hook["exp_name"])
            if hook.get("tags"):
                if not isinstance(hook["tags"], dict):
                    raise ConfigError(f"{where}.tags: expected a mapping, got {hook['tags']!r}")
                ml["tags"] = {**(ml.get("tags") or {}), **hook["tags"]}
        unknown = sorted(set(hook) - allowed)
        if unknown:
            raise ConfigError(f"{where}: {kind} key(s) {unknown} are not supported; accepted: {sorted(allowed)}")


def _check_optimizer_config(cfg: Dict[str, Any]) -> None:
    opt_cfg = cfg.get("optimizer_config") or {}
    kind = opt_cfg.get("type", "OptimizerHook")
    if kind not in OPTIMIZER_HOOKS:
        raise ConfigError(f"optimizer_config.type: {kind!r} is not supported; use OptimizerHook (the default) "
                          "or Fp16OptimizerHook (fp16 training; or amp: {enabled: true, dtype: fp16})")
    if "loss_scale" in opt_cfg and kind != "Fp16OptimizerHook":
        raise ConfigError("optimizer_config.loss_scale applies only with type: Fp16OptimizerHook; "
                          "for mixed precision use amp: {enabled: true, dtype: fp16, loss_scale: ...}")


def apply_key_policy(cfg: Dict[str, Any]) -> List[str]:
    """Refuse the MMSeg keys rayseg cannot honour, map the ones it can, and return the notes to print.

    ``cfg`` (a private copy) is changed in place where a key maps onto rayseg's own spelling.
    """
    notes: List[str] = []
    _check_runner(cfg)
    _check_workflow(cfg)
    if "tune" in cfg:
        raise ConfigError("tune: a training config takes no tune section; a sweep is a separate sweep config "
                          "(base_config, search_space, tune) run with jobs/tune.py (docs/tune.md)")
    if "dist_params" in cfg:
        notes.append(DIST_PARAMS_NOTE)
    level = cfg.get("log_level", "INFO")
    if str(level).upper() not in LOG_LEVELS:
        raise ConfigError(f"log_level: {level!r} is not a log level; use one of {', '.join(LOG_LEVELS)}")
    _check_log_hooks(cfg)
    if (cfg.get("checkpoint_config") or {}).get("by_epoch"):
        raise ConfigError("checkpoint_config.by_epoch: rayseg checkpoints by iteration; set by_epoch: false "
                          "(checkpoint_config.interval counts iterations)")
    if "pre_eval" in (cfg.get("evaluation") or {}):
        notes.append(PRE_EVAL_NOTE)
    _check_optimizer_config(cfg)
    failure = cfg.get("failure") or {}
    unknown = sorted(set(failure) - {"max_failures"})
    if unknown:
        raise ConfigError(f"failure: unknown key(s) {unknown}; accepted: max_failures")
    return notes


def iters_per_epoch(num_samples: int, samples_per_gpu: int, num_workers: int, key: str) -> int:
    """Iterations in one epoch of the training set, for schedules with ``by_epoch`` (or ``warmup_by_epoch``).

    rayseg's training stream lays the epochs end to end and every iteration takes one full global batch
    (``samples_per_gpu`` per worker, never a partial one), so an epoch is the number of whole global batches in
    the training set: ``num_samples // (samples_per_gpu × num_workers)``, what a ``DataLoader`` with
    ``drop_last=True`` would give. A training set smaller than one global batch has no epoch to count: refused.
    """
    global_batch = samples_per_gpu * num_workers
    epoch = num_samples // global_batch
    if epoch < 1:
        raise ConfigError(f"{key}: the training set ({num_samples} samples) is smaller than one global batch "
                          f"(data.samples_per_gpu {samples_per_gpu} × scaling.num_workers {num_workers}), so an "
                          "epoch has no iteration; count iterations instead (by_epoch: false)")
    return epoch


def set_log_level(level: str) -> None:
    """Set the level of rayseg's Python loggers (``log_level``), in whichever process runs this."""
    logging.getLogger("rayseg").setLevel(str(level).upper())
