"""Run a sweep on Ray Tune: scheduler and search algorithm from the sweep config, one Train run per trial.

``run_sweep`` is what ``jobs/tune.py`` calls. The sweep's own Tune state lives in
``<tune.storage_path or WORK_DIR/ray_results>/sweep``; ``--resume`` restores it (finished trials are not run
again, unfinished ones continue from their own latest checkpoint).
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Optional

from rayseg.datasets.ray_data_warmup import warm_up_ray_data
from rayseg.errors import ConfigError
from rayseg.tune.recording import (BEST_CONFIG_FILE, TABLE_FILE, TrialEndRecorder, finish_parent_run,
                                   format_table, start_parent_run, trial_rows, write_best_config, write_table)
from rayseg.tune.sweep import SweepSpec, trial_config
from rayseg.tune.trial import TrialContext, run_trial

# The trial function only waits on its Train run, whose workers and actors ask for the real resources; Tune
# refuses an empty request, so it asks for a sliver of a CPU.
TRIAL_DRIVER_CPUS = 0.01
SWEEP_NAME = "sweep"  # Tune's experiment folder under the storage path
STATE_FILE = "sweep_state.json"


def build_scheduler(sweep: SweepSpec):
    """The Tune scheduler of ``tune.scheduler``; its time attribute is the training iteration (``iter``)."""
    from ray.tune.schedulers import (ASHAScheduler, FIFOScheduler, HyperBandScheduler,
                                     PopulationBasedTraining)

    args = {k: v for k, v in sweep.tune.scheduler.items() if k != "type"}
    kind = sweep.tune.scheduler_type
    if kind == "fifo":
        return FIFOScheduler()
    args.setdefault("max_t", sweep.max_iters) if kind in ("asha", "hyperband") else None
    if kind == "asha":
        args.setdefault("grace_period", int((sweep.base_cfg.get("evaluation") or {}).get("interval") or 1))
        return ASHAScheduler(time_attr="iter", **args)
    if kind == "hyperband":
        return HyperBandScheduler(time_attr="iter", **args)
    # PBT mutates the search space's own domains unless the config names its mutations.
    args.setdefault("perturbation_interval", int((sweep.base_cfg.get("evaluation") or {}).get("interval") or 1))
    args.setdefault("hyperparam_mutations", {d.param_name: d.to_tune() for d in sweep.space.values()})
    return PopulationBasedTraining(time_attr="iter", **args)


def build_search_alg(sweep: SweepSpec):
    """The search algorithm of ``tune.search_alg`` (None: Tune's random/grid variant generator)."""
    args = {k: v for k, v in sweep.tune.search_alg.items() if k != "type"}
    kind = sweep.tune.search_alg_type
    if kind == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(**args)
    if kind == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch(**args)
    if args:
        raise ConfigError(f"tune.search_alg: random takes no arguments, got {sorted(args)}")
    return None


def trial_cpus_and_gpus(sweep: SweepSpec) -> tuple:
    """(CPUs, GPUs) one trial takes on the cluster: its training workers, decode actors and a read task."""
    from rayseg.engine.trainer import cluster_cpus_needed
    from rayseg.spec.resolve import resolve_run

    values = {key: domain.probe_values()[0] for key, domain in sweep.space.items()}
    spec = resolve_run(trial_config(sweep, values), work_dir=os.path.join(sweep.work_dir, "trials", "check"),
                       config_path=sweep.base_config_path)
    gpus = float((spec.scaling.resources_per_worker or {}).get("GPU", 1 if spec.scaling.use_gpu else 0))
    return cluster_cpus_needed(spec, validation=True) + TRIAL_DRIVER_CPUS, gpus * spec.scaling.num_workers


def concurrent_trials(sweep: SweepSpec, cluster: Dict[str, float]) -> int:
    """``tune.max_concurrent_trials``, else as many trials as the cluster's CPUs (and GPUs) hold at once."""
    if sweep.tune.max_concurrent_trials:
        return int(sweep.tune.max_concurrent_trials)
    cpus, gpus = trial_cpus_and_gpus(sweep)
    fit = math.floor(float(cluster.get("CPU", 0)) / cpus + 1e-9) if cpus else 1
    if gpus:
        fit = min(fit, math.floor(float(cluster.get("GPU", 0)) / gpus + 1e-9))
    if fit < 1:
        raise ConfigError(f"one trial needs {cpus:g} CPUs and {gpus:g} GPUs but the Ray cluster has "
                          f"{cluster.get('CPU', 0):g} CPUs and {cluster.get('GPU', 0):g} GPUs; lower "
                          "tune.resources_per_trial or give the cluster more")
    return fit


def _read_state(work_dir: str) -> Dict[str, Any]:
    path = os.path.join(work_dir, STATE_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def run_sweep(sweep: SweepSpec, address: Optional[str] = None, resume: bool = False) -> Dict[str, Any]:
    """Run ``sweep`` to the end and return the table, the best trial, ``best_config.yaml`` and the MLflow runs."""
    from ray import tune

    from rayseg.engine.storage import storage_root
    from rayseg.tracking import tracking_store
    from rayseg.utils.ray_session import connect_ray

    cpus, _ = trial_cpus_and_gpus(sweep)
    storage = storage_root(sweep.tune.storage_path, sweep.work_dir)
    experiment_path = os.path.join(storage, SWEEP_NAME)
    restorable = tune.Tuner.can_restore(experiment_path)
    if restorable and not resume:
        raise ConfigError(f"{sweep.work_dir} already holds a sweep ({experiment_path}); pass --resume to continue "
                          "it, or choose another --work-dir")
    if resume and not restorable:
        raise ConfigError(f"--resume: no sweep to continue in {experiment_path}")
    connect_ray(address, num_cpus_needed=math.ceil(cpus), dashboard=True)
    warm_up_ray_data()  # Ray Data's cluster actors start now, off the first trial's first batch
    import ray

    max_concurrent = concurrent_trials(sweep, ray.cluster_resources())
    os.makedirs(sweep.work_dir, exist_ok=True)
    mlflow_cfg = sweep.base_cfg.get("mlflow") or {}
    tracking_uri, artifact_root = tracking_store(mlflow_cfg.get("tracking_uri"), sweep.work_dir)
    experiment = str(mlflow_cfg.get("experiment_name") or "rayseg")
    scheduler, search_alg = build_scheduler(sweep), build_search_alg(sweep)
    state = _read_state(sweep.work_dir) if resume else {}
    parent = start_parent_run(sweep, tracking_uri, artifact_root, experiment, run_id=state.get("parent_run_id"))
    with open(os.path.join(sweep.work_dir, STATE_FILE), "w") as f:
        json.dump({"parent_run_id": parent.run_id if parent else None}, f)
    try:
        grid, recorder = _fit(sweep, parent, tracking_uri, experiment, storage, experiment_path, max_concurrent,
                              scheduler, search_alg, resume)
    except BaseException:
        if parent is not None:
            parent.finish("KILLED")
        raise
    return _finish(sweep, grid, recorder, parent, tracking_uri, experiment_path)


def _fit(sweep: SweepSpec, parent, tracking_uri: str, experiment: str, storage: str, experiment_path: str,
         max_concurrent: int, scheduler, search_alg, resume: bool):
    from ray import tune

    context = TrialContext(sweep=sweep, parent_run_id=parent.run_id if parent else None,
                           tracking_uri=tracking_uri, experiment_name=experiment,
                           pbt=sweep.tune.scheduler_type == "pbt")
    trainable = tune.with_resources(tune.with_parameters(run_trial, context=context), {"CPU": TRIAL_DRIVER_CPUS})
    recorder = TrialEndRecorder(tracking_uri, sweep.max_iters)
    if resume:
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
        # The restored run config holds the callbacks pickled with the sweep; use a fresh recorder to read from.
        local = getattr(tuner, "_local_tuner", None)
        if local is not None:
            local._run_config.callbacks = [recorder]
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={d.param_name: d.to_tune() for d in sweep.space.values()},
            tune_config=tune.TuneConfig(
                metric=sweep.tune.metric, mode=sweep.tune.mode, num_samples=sweep.tune.num_samples,
                max_concurrent_trials=max_concurrent, scheduler=scheduler,
                search_alg=search_alg, time_budget_s=sweep.tune.time_budget_s,
                trial_dirname_creator=lambda trial: trial.trial_id),
            run_config=tune.RunConfig(name=SWEEP_NAME, storage_path=storage, callbacks=[recorder], verbose=1,
                                      failure_config=tune.FailureConfig(max_failures=sweep.tune.max_failures)))
    return tuner.fit(), recorder


def _register_best(sweep: SweepSpec, best: Dict[str, Any], checkpoint: str, tracking_uri: str, parent):
    """``tune.register_model``: the best trial's best weights as a model version, logged into that trial's run
    (else the sweep's parent run). A failure is a warning: the sweep's results are all written already."""
    import logging

    from rayseg.model_registry import register_weights
    from rayseg.tune.sweep import trial_config

    run_id = best.get("mlflow_run") or (parent.run_id if parent else None)
    try:
        if run_id is None:
            raise RuntimeError("neither the best trial nor the sweep has an MLflow run")
        registered = register_weights(trial_config(sweep, best["_values"]), checkpoint, sweep.tune.register_model, tracking_uri, run_id,
                                      tags={"rayseg.sweep": sweep.path, "rayseg.trial": str(best["trial"])})
    except Exception as exc:  # noqa: BLE001
        logging.getLogger(__name__).warning(f"registering the best trial's {checkpoint} as model "
                                            f"{sweep.tune.register_model!r} failed ({type(exc).__name__}: {exc})")
        return None
    if parent is not None:
        parent.set_tag("registered_model", registered["uri"])
    return registered


def _finish(sweep: SweepSpec, grid, recorder: TrialEndRecorder, parent, tracking_uri: str,
            experiment_path: str) -> Dict[str, Any]:
    from rayseg.utils.ray_session import user_error

    recorder.reassert_ends()
    rows = trial_rows(grid, sweep, recorder.reasons)
    table_path = os.path.join(sweep.work_dir, TABLE_FILE)
    write_table(rows, table_path)
    best_config = checkpoint = None
    if rows and rows[0][f"best_{sweep.tune.metric}"] is not None:
        best_config = os.path.join(sweep.work_dir, BEST_CONFIG_FILE)
        checkpoint = write_best_config(sweep, rows[0], best_config)
    registered = None
    if best_config and checkpoint and sweep.tune.register_model:
        registered = _register_best(sweep, rows[0], checkpoint, tracking_uri, parent)
    finish_parent_run(parent, rows, sweep, table_path, best_config, checkpoint,
                      status="FINISHED" if best_config else "FAILED")
    if best_config is None:
        errors = [r.error for r in grid if r.error is not None]
        cause = user_error(errors[0]) if errors else None
        if cause is not None:
            raise cause.with_traceback(None) from None
        raise RuntimeError(f"no trial of {sweep.path} reported {sweep.tune.metric}; see {table_path}"
                           + (f" (first error: {errors[0]})" if errors else ""))
    return {"work_dir": sweep.work_dir, "table": format_table(rows, sweep), "table_path": table_path,
            "rows": rows, "best_config": best_config, "best_checkpoint": checkpoint, "registered": registered,
            "parent_run_id": parent.run_id if parent else None, "tracking_uri": tracking_uri,
            "experiment_path": experiment_path}
