"""The training driver: run spec → checks → datasets → Ray Train ``TorchTrainer`` → latest.pth, log.jsonl, MLflow.

Order matters for the user: the config is resolved and everything it names is built and listed *before* Ray
starts, the work dir is created or an MLflow run is opened, so a mistake costs seconds and leaves nothing
behind. An error a worker or actor raises (bad data, a corrupt checkpoint) comes back from ``fit`` as the
rayseg exception itself, not as Ray's wrapping of it.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from rayseg.config import dump_config
from rayseg.datasets.ray_data_warmup import warm_up_ray_data
from rayseg.engine.interrupt import RunInterrupted, interruptible, stop_signals_raise
from rayseg.engine.progress import WORKER_STDERR_LOG, TrainingConsole
from rayseg.engine.storage import check_storage_for_cluster
from rayseg.engine.storage import join as storage_join
from rayseg.engine.workdir_lock import WorkDirLock
from rayseg.errors import ConfigError
from rayseg.spec.sections import RunSpec
from rayseg.utils.ray_session import connect_ray, quiet_ray_data, user_error
from rayseg.utils.files import write_text_atomic

# Fraction of a CPU each decode/augment actor asks Ray for; the actors mostly wait on I/O and OpenCV,
# and asking for whole CPUs would starve the training workers on small machines.
INGEST_ACTOR_CPUS = 0.5


def num_ingest_actors(spec: RunSpec) -> int:
    """Decode/augment actors for the training stream: ``data.workers_per_gpu`` per training worker."""
    return spec.data.workers_per_gpu * spec.scaling.num_workers


def cpus_needed(spec: RunSpec) -> float:
    """Logical CPUs the job asks Ray for: the training workers plus the train and val ingest actors."""
    return spec.scaling.num_workers * spec.scaling.cpus_per_worker + 2 * num_ingest_actors(spec) * INGEST_ACTOR_CPUS


# Ray Data's read tasks (ReadRange, then the file reads fused into it) ask for one whole CPU each. At least
# one must fit beside the training workers and the actor pools, or the stream never starts ("Cluster
# resources are not enough to run any task from TaskPoolMapOperator[ReadRange]") and training waits forever.
READ_TASK_CPUS = 1.0


def num_val_actors(spec: RunSpec) -> int:
    """Decode actors of the validation stream (0 without validation)."""
    return max(1, num_ingest_actors(spec) // 2) if spec.evaluation.interval and spec.data.val else 0


def cluster_cpus_needed(spec: RunSpec, validation: bool = False) -> float:
    """CPUs the cluster must have for training to start: the workers, the training stream's decode actors and
    one read task; with ``validation`` also the validation stream's actors, which run beside them."""
    actors = num_ingest_actors(spec) + (num_val_actors(spec) if validation else 0)
    return spec.scaling.num_workers * spec.scaling.cpus_per_worker + actors * INGEST_ACTOR_CPUS + READ_TASK_CPUS


def check_cluster_room(spec: RunSpec, total: Dict[str, float], autoscaler_max: Optional[Dict[str, float]],
                       address: str = "") -> Optional[str]:
    """Refuse, in one line saying what to change, a job the cluster can never start (it would hang, not fail).

    ``total``: ``ray.cluster_resources()``; ``autoscaler_max``: the most the cluster's autoscaler could provide
    (Ray's ``get_max_resources_from_cluster_config()``; None on a fixed cluster such as ``ray start --head``).
    A cluster that merely is busy now is not refused: other jobs finish (the first-batch timeout covers the
    rest). Returns a warning when training can start but validation's decode actors would have to wait for
    the training stream to finish (a short stream finishes first; a long one makes validation wait).
    """
    def capacity(resource: str) -> float:
        return max(float(total.get(resource, 0)), float((autoscaler_max or {}).get(resource, 0)))

    sc = spec.scaling
    where = f" at {address}" if address else ""
    need, full = cluster_cpus_needed(spec), cluster_cpus_needed(spec, validation=True)
    enough = f"{math.ceil(full):d} CPUs (`ray start --head --num-cpus {math.ceil(full):d}` on one machine, or more nodes)"
    if capacity("CPU") + 1e-9 < need:
        fits = next((n for n in range(sc.num_workers - 1, 0, -1) if cluster_cpus_needed(
            dataclasses.replace(spec, scaling=dataclasses.replace(sc, num_workers=n))) <= capacity("CPU")), 0)
        fewer = f"use scaling.num_workers={fits} or a smaller " if fits else "lower "
        raise ConfigError(
            f"the Ray cluster{where} has {capacity('CPU'):g} CPUs but this job needs {need:g} to start: "
            f"scaling.num_workers ({sc.num_workers}) x scaling.resources_per_worker.CPU ({sc.cpus_per_worker:g}) "
            f"for training, {num_ingest_actors(spec)} decode/augment actors x {INGEST_ACTOR_CPUS:g} "
            f"(data.workers_per_gpu {spec.data.workers_per_gpu} per worker) and {READ_TASK_CPUS:g} for Ray Data's "
            f"read tasks, without which training would wait forever for its first batch; {fewer}"
            f"scaling.resources_per_worker.CPU, or give the cluster {enough}")
    wanted = dict(sc.resources_per_worker or {})
    if sc.use_gpu:
        wanted.setdefault("GPU", 1)
    for resource, amount in wanted.items():
        if resource != "CPU" and amount and capacity(resource) + 1e-9 < amount * sc.num_workers:
            raise ConfigError(f"the Ray cluster{where} has {capacity(resource):g} {resource} but scaling.num_workers "
                              f"({sc.num_workers}) x {amount:g} {resource} per worker needs "
                              f"{amount * sc.num_workers:g}; lower scaling.num_workers or add nodes with {resource}")
    if capacity("CPU") + 1e-9 < full:
        return (f"the Ray cluster{where} has {capacity('CPU'):g} CPUs; validation's decode actors need "
                f"{full:g} in all, so each validation may wait for the training stream to finish; give the "
                f"cluster {enough}")
    return None


def _smallest(spec: RunSpec) -> RunSpec:
    """The run at the fewest workers it may start with: MIN when elastic, else itself."""
    if not spec.scaling.elastic:
        return spec
    return dataclasses.replace(spec, scaling=dataclasses.replace(spec.scaling, num_workers=spec.scaling.min_workers,
                                                                 min_workers=None))


def _check_cluster_room(spec: RunSpec, address: Optional[str]) -> None:
    import ray

    try:
        from ray._private.state import state as ray_state  # what Ray Train's own resource check reads

        autoscaler_max = ray_state.get_max_resources_from_cluster_config()
    except Exception:  # a private API: without it, judge by the nodes that are there
        autoscaler_max = None
    warning = check_cluster_room(_smallest(spec), ray.cluster_resources(), autoscaler_max,
                                 address or os.environ.get("RAY_ADDRESS", ""))
    if warning:
        logging.getLogger(__name__).warning(warning)


class TrainStreamFactory:
    """Builds the training stream from where the run stands when Ray Train (re)starts the workers.

    Ray Train calls it at every worker-group start, so after a failure the stream resumes at the
    latest checkpoint's position instead of replaying the job's data from the beginning.
    ``bad_samples``: the run's ``BadSamplePolicy`` (None: stop at the first bad sample).
    """

    def __init__(self, dataset, spec: RunSpec, run_dir: str, fallback_iter: int, bad_samples=None):
        self.dataset, self.spec, self.run_dir, self.fallback_iter = dataset, spec, run_dir, fallback_iter
        self.bad_samples = bad_samples

    def __call__(self):
        import ray.data

        from rayseg.datasets.ray_data import build_train_stream
        from rayseg.engine.resume import latest_checkpoint

        quiet_ray_data()  # this runs in Ray Train's controller, whose DataContext is its own
        if self.spec.deterministic:
            # Keeping block order fixes which rows each worker's shard gets (else whichever block is ready first).
            ray.data.DataContext.get_current().execution_options.preserve_order = True
        found = latest_checkpoint(self.run_dir, intact=True)  # where the workers' restore starts, too
        start_iter = found[1] if found else self.fallback_iter
        per_iter = self.spec.data.samples_per_gpu * self.spec.scaling.num_workers
        # One extra batch per worker: Ray's equal split may trim a few rows. Elastic: one more, since below
        # MAX workers the workers' shares of an iteration differ by a row or two (rayseg.engine.elastic).
        rows = (self.spec.max_iters - start_iter + (2 if self.spec.scaling.elastic else 1)) * per_iter
        if self.bad_samples is not None:  # skipped samples leave no row: ask for enough to cover them
            rows = self.bad_samples.stream_rows(rows, len(self.dataset.samples))  # files, not RepeatDataset's times
        stream = build_train_stream(self.dataset, rows, seed=self.spec.seed, start_position=start_iter * per_iter,
                                    num_actors=num_ingest_actors(self.spec), actor_num_cpus=INGEST_ACTOR_CPUS,
                                    # elastic: start with the actors that fit, up to MAX workers' worth
                                    min_actors=num_ingest_actors(_smallest(self.spec)),
                                    bad_samples=self.bad_samples,
                                    # decoded once into the object store when the split fits (data.cache_decoded)
                                    cache_decoded=self.spec.data.cache_decoded)
        return keep_original_errors(stream)


def keep_original_errors(dataset):
    """Let a decode/augment error (``DataError`` naming the file) reach the training worker as itself.

    Ray Data otherwise wraps it in ``UserCodeException``, whose ``__cause__`` does not survive the trip
    through the split coordinator, so the driver could only show Ray's text. Set on the dataset's own
    context, not the process-wide one.
    """
    dataset.context.raise_original_map_exception = True
    return dataset


def _check_cluster_storage(storage: str) -> None:
    """Refuse a head-local storage path before any worker starts, if the cluster spans several machines."""
    import ray

    addresses = [n.get("NodeManagerAddress", "") for n in ray.nodes() if n.get("Alive")]
    check_storage_for_cluster(storage, addresses)


def _start_point(spec: RunSpec, run_dir: str) -> Tuple[int, Optional[str]]:
    """(iteration to start from, checkpoint folder to resume from or None), MMSeg's resume semantics.

    A damaged newest checkpoint (``checkpoint_problem``) is skipped, with a warning naming it, for the newest
    intact one; that folder is then handed to the workers, since Ray Train would hand them the damaged one.
    """
    from rayseg.engine.resume import checkpoint_iteration, latest_checkpoint

    skipped: List[Tuple[str, str]] = []
    previous = latest_checkpoint(run_dir, intact=True, skipped=skipped)
    if skipped and spec.resume:
        for folder, problem in skipped:
            logging.getLogger(__name__).warning(
                f"skipping checkpoint {folder}: {problem}; "
                + (f"resuming from {previous[0]} (iteration {previous[1]})" if previous else "no older one"))
        if previous is None:
            raise ConfigError(f"{spec.work_dir}: no intact checkpoint to resume from in {run_dir} (skipped "
                              f"{', '.join(folder for folder, _ in skipped)}); start again with another --work-dir")
        return previous[1], previous[0]
    if spec.resume_from:
        if previous:
            raise ConfigError(f"resume_from={spec.resume_from} but {spec.work_dir} already holds its own run "
                              f"(latest checkpoint {previous[0]}); use --resume for that run or another --work-dir")
        return checkpoint_iteration(spec.resume_from), spec.resume_from
    if previous and not spec.resume:
        raise ConfigError(f"{spec.work_dir} already holds a run that reached iteration {previous[1]} "
                          f"({previous[0]}); pass --resume to continue it, or choose another --work-dir")
    if previous:
        print(f"resuming from {previous[0]} (iteration {previous[1]} of {spec.max_iters})", flush=True)
    return (previous[1], None) if previous else (0, None)


def train(cfg: Union[Dict[str, Any], RunSpec], work_dir: Optional[str] = None, config_path: Optional[str] = None,
          address: Optional[str] = None, resume: bool = False, load_from: Optional[str] = None,
          callbacks: Sequence[Any] = (), show_progress: bool = True) -> Dict[str, Any]:
    """Train the run ``cfg`` describes on Ray; returns paths, final metrics and the MLflow run.

    ``cfg`` is a loaded config dict (resolved here with ``work_dir``, ``config_path``, ``resume`` and
    ``load_from``) or an already resolved ``RunSpec`` (then those arguments must be left out). ``resume``
    continues the run in the work dir (model, optimizer, schedule, iteration, RNG and data position);
    ``load_from`` only initialises the weights and starts at iteration 0, as in MMSeg.

    ``callbacks``: more Ray Train ``UserCallback``s beside rayseg's log/MLflow one (a Tune trial passes the one
    that forwards reports to Tune). ``show_progress=False`` leaves the console alone (no progress bar, Ray's
    output not redirected): rank 0 prints MMSeg-style lines instead, as under a Tune trial.
    """
    from rayseg.spec.check import check_run
    from rayseg.spec.policy import set_log_level
    from rayseg.spec.resolve import resolve_run

    if isinstance(cfg, RunSpec):
        if work_dir or config_path or resume or load_from:
            raise TypeError("train(spec) takes the work dir, resume and load_from from the spec")
        spec = cfg
    else:
        spec = resolve_run(cfg, work_dir=work_dir, config_path=config_path, resume=resume, load_from=load_from)
    set_log_level(spec.log.level)
    checked = check_run(spec, list_data=True)
    run_dir = storage_join(spec.checkpoint.storage, spec.run_name)
    # Held from before the run's state is read until its outputs are written: a second run in this work dir is
    # refused at once; a run that fails before writing anything leaves no work dir behind.
    with WorkDirLock(spec.work_dir) as lock:
        if lock.stale:
            logging.getLogger(__name__).warning(
                f"the previous run in {spec.work_dir} (PID {lock.stale.get('pid')} on {lock.stale.get('host')}) "
                "ended without releasing its lock; taking it over")
        start_iter, resume_from = _start_point(spec, run_dir)
        if start_iter >= spec.max_iters:
            return {"work_dir": spec.work_dir, "log": spec.log_path, "already_finished": True, "iter": start_iter,
                    "latest": os.path.join(spec.work_dir, "latest.pth")}
        init_weights = None
        if spec.load_from and start_iter == 0 and not resume_from:
            init_weights = _checked_init_weights(spec)
        return _run(spec, checked, run_dir, start_iter, resume_from, init_weights, address, list(callbacks),
                    show_progress)


def _register(spec: RunSpec, summary: Dict[str, Any], run) -> Optional[Dict[str, Any]]:
    """``mlflow.register_model``: the best weights (else the final ones) as a new model version. A failure here
    is a warning: the trained weights and the run are already written, and can be registered later."""
    from rayseg.model_registry import register_weights

    weights = summary.get("best") or summary.get("latest")
    try:
        return register_weights(spec.config, weights, spec.tracking.register_model, run.tracking_uri, run.run_id,
                                tags={"rayseg.work_dir": spec.work_dir})
    except Exception as exc:  # noqa: BLE001 - the run itself succeeded; say what did not
        logging.getLogger(__name__).warning(
            f"registering {weights} as model {spec.tracking.register_model!r} failed ({type(exc).__name__}: {exc}); "
            f"the weights and MLflow run {run.run_id} are kept")
        return None


def _checked_init_weights(spec: RunSpec) -> Dict[str, Any]:
    """The ``load_from`` state dict, loaded into the config's model here first: a file that is unreadable or
    does not fit the model fails now, naming the file, before Ray starts or the work dir holds anything."""
    from rayseg.engine.checkpoint import load_model_weights, load_weights_file
    from rayseg.models import build_segmentor
    from rayseg.inference import without_pretrained

    state_dict = load_weights_file(spec.load_from)["state_dict"]
    load_model_weights(build_segmentor(without_pretrained(spec.model.config)), state_dict, str(spec.load_from))
    return state_dict


def _run(spec: RunSpec, checked, run_dir: str, start_iter: int, resume_from: Optional[str], init_weights,
         address: Optional[str], callbacks: List[Any], show_progress: bool) -> Dict[str, Any]:
    """Everything after the checks: Ray, then (``_fit``) work dir, MLflow run, ``fit``, final outputs; a stop
    signal (``RunInterrupted``) comes back saying where the run stood."""
    # The dashboard serves the state API that Ray Train's placement-group cleaner polls.
    connect_ray(address, num_cpus_needed=math.ceil(cpus_needed(spec)), dashboard=True)
    warm_up_ray_data()  # Ray Data's cluster actors start while this driver sets up, off the first batch's path
    with stop_signals_raise():  # after ray.init, which installs a SIGTERM handler of its own
        try:
            return _fit(spec, checked, run_dir, start_iter, resume_from, init_weights, address, callbacks,
                        show_progress)
        except RunInterrupted as stop:
            _where_stopped(stop, spec, run_dir)
            raise


def _where_stopped(stop: RunInterrupted, spec: RunSpec, run_dir: str) -> None:
    """Fill in where an interrupted run stood: the last logged iteration and the checkpoint ``--resume`` uses."""
    import json

    from rayseg.engine.resume import latest_checkpoint

    stop.work_dir, stop.max_iters = spec.work_dir, spec.max_iters
    try:
        with open(spec.log_path) as f:
            iters = [json.loads(line).get("iter") for line in f if line.strip()]
        stop.iteration = max((i for i in iters if isinstance(i, int)), default=None)
    except (OSError, ValueError):
        pass
    try:
        found = latest_checkpoint(run_dir, intact=True)
        stop.checkpoint_iteration = found[1] if found else None
    except Exception:  # the message is a courtesy; the storage may be what failed
        pass


def _fit(spec: RunSpec, checked, run_dir: str, start_iter: int, resume_from: Optional[str], init_weights,
         address: Optional[str], callbacks: List[Any], show_progress: bool) -> Dict[str, Any]:
    """Work dir, datasets, MLflow run, ``fit`` and final outputs, on a connected Ray."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from rayseg.datasets.bad_samples import BadSamplePolicy
    from rayseg.datasets.ray_data import build_eval_stream
    from rayseg.engine.callbacks import TrainLogCallback
    from rayseg.engine.data_config import SegDataConfig
    from rayseg.engine.loop import train_loop_per_worker
    from rayseg.engine.outputs import mlflow_summary, write_final_outputs
    from rayseg.engine.process_group import BoundStoreTorchConfig
    from rayseg.engine.resume import read_run_state, write_run_state
    from rayseg.tracking import resume_run, start_run, system_metrics_spec

    _check_cluster_storage(spec.checkpoint.storage)
    _check_cluster_room(spec, address)  # before the work dir exists: a refused job leaves nothing behind
    os.makedirs(spec.work_dir, exist_ok=True)
    config_file = os.path.join(spec.work_dir, "config.yaml")
    write_text_atomic(config_file, dump_config(spec.config))
    # Block order matters only for the training stream, which the controller builds with its own context;
    # the driver's DataContext is the caller's process-wide one and must not keep preserve_order afterwards.
    quiet_ray_data()
    # data.on_bad_sample; under skip it starts the run's ledger actor, which lives as long as this call.
    bad_samples = BadSamplePolicy.start(spec.data.on_bad_sample, spec.data.max_bad_samples)
    datasets: Dict[str, Any] = {"train": TrainStreamFactory(checked.train_set, spec, run_dir, start_iter,
                                                            bad_samples=bad_samples)}
    if checked.val_set is not None:
        datasets["val"] = keep_original_errors(build_eval_stream(
            checked.val_set, num_actors=max(1, num_val_actors(spec)), actor_num_cpus=INGEST_ACTOR_CPUS,
            bad_samples=bad_samples, min_actors=1 if spec.scaling.elastic else None))

    state = read_run_state(spec.work_dir)
    run = resume_run(spec, state["mlflow_run_id"]) if start_iter and state.get("mlflow_run_id") else start_run(spec)
    if run is not None:
        write_run_state(spec.work_dir, {"mlflow_run_id": run.run_id})
        run.log_artifact(config_file)
    scaling = spec.scaling
    run_config = RunConfig(
        name=spec.run_name, storage_path=spec.checkpoint.storage,
        # Ray Train's INFO lines (one per report) would bury the progress line.
        logging_config=LoggingConfig(log_level="WARNING"),
        failure_config=FailureConfig(max_failures=scaling.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=spec.checkpoint.max_keep),
        callbacks=[TrainLogCallback(spec.log_path, run.tracking_uri if run else None, run.run_id if run else None,
                                    max_iters=spec.max_iters, run_dir=run_dir, metrics=spec.evaluation.metrics,
                                    worker_range=(scaling.min_workers, scaling.num_workers) if scaling.elastic
                                    else None),
                   *callbacks])
    class_names = list(checked.train_set.CLASSES) if getattr(checked.train_set, "CLASSES", None) else None
    console = TrainingConsole(spec.max_iters, start_iter, spec.data.samples_per_gpu * scaling.num_workers,
                              log_file=os.path.join(spec.work_dir, WORKER_STDERR_LOG),
                              max_workers=scaling.num_workers if scaling.elastic else None) if show_progress else None
    trainer = interruptible(TorchTrainer, on_stop=(lambda: run.finish("KILLED")) if run is not None else None)(
        train_loop_per_worker,
        torch_config=BoundStoreTorchConfig(),  # its rendezvous store listens on loopback on one node
        train_loop_config={"spec": spec, "init_weights": init_weights, "class_names": class_names,
                           "system_metrics": system_metrics_spec(spec, run),
                           "progress": console.events if console else None,
                           # Train V2 refuses resume_from_checkpoint; the workers read it when Ray Train hands
                           # them no checkpoint of the run's own (which wins after a worker-group restart).
                           "resume_from": resume_from,
                           "bad_samples": bad_samples},  # rank 0 reports its count as a metric
        scaling_config=ScalingConfig(
            num_workers=(scaling.min_workers, scaling.num_workers) if scaling.elastic else scaling.num_workers,
            use_gpu=scaling.use_gpu, resources_per_worker=scaling.resources_per_worker,
            placement_strategy=scaling.placement_strategy,
            elastic_resize_monitor_interval_s=scaling.elastic_resize_monitor_interval_s),
        run_config=run_config, datasets=datasets, dataset_config=SegDataConfig(complete=("val",)),
)
    try:
        with console or contextlib.nullcontext():  # the progress bar; Ray's stderr to ray_workers.log
            result = trainer.fit()
    except BaseException as exc:
        if run is not None:
            run.finish_unless_ended("KILLED" if isinstance(exc, RunInterrupted) else "FAILED")
        if isinstance(exc, RunInterrupted):
            raise
        cause = user_error(exc)
        if cause is not None:
            # The worker's own error (naming the file, key or value) instead of Ray's wrappers around it.
            raise cause.with_traceback(None) from None
        raise

    summary: Dict[str, Any] = {"work_dir": spec.work_dir, "log": spec.log_path, "start_iter": start_iter}
    summary.update(write_final_outputs(result, spec, checked.train_set, run, run_dir=run_dir))
    if run is not None and spec.tracking.register_model:
        summary["registered"] = _register(spec, summary, run)
    if run is not None:
        run.log_artifact(spec.log_path)
        run.finish("FINISHED")
        summary["mlflow"] = mlflow_summary(run)
    return summary
