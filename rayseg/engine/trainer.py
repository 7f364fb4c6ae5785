"""The training driver: run spec → checks → datasets → Ray Train ``TorchTrainer`` → latest.pth, log.jsonl, MLflow.

Order matters for the user: the config is resolved and everything it names is built and listed *before* Ray
starts, the work dir is created or an MLflow run is opened, so a mistake costs seconds and leaves nothing
behind. An error a worker or actor raises (bad data, a corrupt checkpoint) comes back from ``fit`` as the
rayseg exception itself, not as Ray's wrapping of it.
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Any, Dict, Iterator, Optional, Tuple, Union

from rayseg.config import dump_config
from rayseg.engine.storage import check_storage_for_cluster
from rayseg.engine.storage import join as storage_join
from rayseg.errors import ConfigError
from rayseg.spec.sections import RunSpec
from rayseg.utils.ray_session import connect_ray, quiet_ray_data, user_error

# Fraction of a CPU each decode/augment actor asks Ray for; the actors mostly wait on I/O and OpenCV,
# and asking for whole CPUs would starve the training workers on small machines.
INGEST_ACTOR_CPUS = 0.5


def num_ingest_actors(spec: RunSpec) -> int:
    """Decode/augment actors for the training stream: ``data.workers_per_gpu`` per training worker."""
    return spec.data.workers_per_gpu * spec.scaling.num_workers


def cpus_needed(spec: RunSpec) -> float:
    """Logical CPUs the job asks Ray for: the training workers plus the train and val ingest actors."""
    return spec.scaling.num_workers * spec.scaling.cpus_per_worker + 2 * num_ingest_actors(spec) * INGEST_ACTOR_CPUS


class TrainStreamFactory:
    """Builds the training stream from where the run stands when Ray Train (re)starts the workers.

    Ray Train calls it at every worker-group start, so after a failure the stream resumes at the
    latest checkpoint's position instead of replaying the job's data from the beginning.
    """

    def __init__(self, dataset, spec: RunSpec, run_dir: str, fallback_iter: int):
        self.dataset, self.spec, self.run_dir, self.fallback_iter = dataset, spec, run_dir, fallback_iter

    def __call__(self):
        import ray.data

        from rayseg.datasets.ray_data import build_train_stream
        from rayseg.engine.resume import latest_checkpoint

        quiet_ray_data()  # this runs in Ray Train's controller, whose DataContext is its own
        if self.spec.deterministic:
            # Keeping block order fixes which rows each worker's shard gets (else whichever block is ready first).
            ray.data.DataContext.get_current().execution_options.preserve_order = True
        found = latest_checkpoint(self.run_dir)
        start_iter = found[1] if found else self.fallback_iter
        per_iter = self.spec.data.samples_per_gpu * self.spec.scaling.num_workers
        # One extra batch per worker: Ray's equal split may trim a few rows.
        rows = (self.spec.max_iters - start_iter + 1) * per_iter
        stream = build_train_stream(self.dataset, rows, seed=self.spec.seed, start_position=start_iter * per_iter,
                                    num_actors=num_ingest_actors(self.spec), actor_num_cpus=INGEST_ACTOR_CPUS)
        return keep_original_errors(stream)


def keep_original_errors(dataset):
    """Let a decode/augment error (``DataError`` naming the file) reach the training worker as itself.

    Ray Data otherwise wraps it in ``UserCodeException``, whose ``__cause__`` does not survive the trip
    through the split coordinator, so the driver could only show Ray's text. Set on the dataset's own
    context, not the process-wide one.
    """
    dataset.context.raise_original_map_exception = True
    return dataset


WORKER_STDERR_LOG = "ray_workers.log"


@contextlib.contextmanager
def worker_stderr_to_file(path: str) -> Iterator[None]:
    """Send what Ray forwards from the workers' and actors' *stderr* to ``path`` instead of this console.

    When a worker fails, every Ray process that saw it (train workers, Ray Data's split coordinator and
    actors) prints its own traceback, about 200 lines that bury the one ``error:`` line. The progress line is
    written to stdout and still reaches the console. This swaps Ray's log-forwarding handler, a private
    API; if it is not there, nothing changes.
    """
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        handlers = list(dispatcher.handlers)
    except (ImportError, AttributeError):
        yield
        return

    def wrap(forward):
        def handler(data):
            if not data.get("is_err"):
                return forward(data)
            who = data.get("actor_name") or data.get("task_name") or ""
            with open(path, "a") as f:
                for line in data.get("lines", []):
                    f.write(f"({who} pid={data.get('pid')}) {line}\n")
        return handler

    dispatcher.handlers = [(name, wrap(fn) if name == "ray_print_logs" else fn) for name, fn in handlers]
    try:
        yield
    finally:
        dispatcher.handlers = handlers


def _check_cluster_storage(storage: str) -> None:
    """Refuse a head-local storage path before any worker starts, if the cluster spans several machines."""
    import ray

    addresses = [n.get("NodeManagerAddress", "") for n in ray.nodes() if n.get("Alive")]
    check_storage_for_cluster(storage, addresses)


def _start_point(spec: RunSpec, run_dir: str) -> Tuple[int, Optional[str]]:
    """(iteration to start from, checkpoint folder to resume from or None), MMSeg's resume semantics."""
    from rayseg.engine.resume import checkpoint_iteration, latest_checkpoint

    previous = latest_checkpoint(run_dir)
    if spec.resume_from:
        if previous:
            raise ConfigError(f"resume_from={spec.resume_from} but {spec.work_dir} already holds its own run "
                              f"(latest checkpoint {previous[0]}); use --resume for that run or another --work-dir")
        return checkpoint_iteration(spec.resume_from), spec.resume_from
    if previous and not spec.resume:
        raise ConfigError(f"{spec.work_dir} already holds a run that reached iteration {previous[1]} "
                          f"({previous[0]}); pass --resume to continue it, or choose another --work-dir")
    return (previous[1], None) if previous else (0, None)


def train(cfg: Union[Dict[str, Any], RunSpec], work_dir: Optional[str] = None, config_path: Optional[str] = None,
          address: Optional[str] = None, resume: bool = False, load_from: Optional[str] = None) -> Dict[str, Any]:
    """Train the run ``cfg`` describes on Ray; returns paths, final metrics and the MLflow run.

    ``cfg`` is a loaded config dict (resolved here with ``work_dir``, ``config_path``, ``resume`` and
    ``load_from``) or an already resolved ``RunSpec`` (then those arguments must be left out). ``resume``
    continues the run in the work dir (model, optimizer, schedule, iteration, RNG and data position);
    ``load_from`` only initialises the weights and starts at iteration 0, as in MMSeg.
    """
    from rayseg.engine.checkpoint import load_weights_file
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
    start_iter, resume_from = _start_point(spec, run_dir)
    if start_iter >= spec.max_iters:
        return {"work_dir": spec.work_dir, "log": spec.log_path, "already_finished": True, "iter": start_iter,
                "latest": os.path.join(spec.work_dir, "latest.pth")}
    init_weights = None
    if spec.load_from and start_iter == 0 and not resume_from:
        init_weights = load_weights_file(spec.load_from)["state_dict"]  # fails early, naming the file
    return _run(spec, checked, run_dir, start_iter, resume_from, init_weights, address)


def _run(spec: RunSpec, checked, run_dir: str, start_iter: int, resume_from: Optional[str], init_weights,
         address: Optional[str]) -> Dict[str, Any]:
    """Everything after the checks: work dir, Ray, MLflow run, ``fit``, final outputs."""
    from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from rayseg.datasets.ray_data import build_eval_stream
    from rayseg.engine.callbacks import TrainLogCallback
    from rayseg.engine.data_config import SegDataConfig
    from rayseg.engine.loop import train_loop_per_worker
    from rayseg.engine.outputs import mlflow_summary, write_final_outputs
    from rayseg.engine.resume import read_run_state, write_run_state
    from rayseg.tracking import resume_run, start_run, system_metrics_spec

    os.makedirs(spec.work_dir, exist_ok=True)
    config_file = os.path.join(spec.work_dir, "config.yaml")
    with open(config_file, "w") as f:
        f.write(dump_config(spec.config))
    # The dashboard serves the state API that Ray Train's placement-group cleaner polls.
    connect_ray(address, num_cpus_needed=math.ceil(cpus_needed(spec)), dashboard=True)
    _check_cluster_storage(spec.checkpoint.storage)
    # Block order matters only for the training stream, which the controller builds with its own context;
    # the driver's DataContext is the caller's process-wide one and must not keep preserve_order afterwards.
    quiet_ray_data()
    datasets: Dict[str, Any] = {"train": TrainStreamFactory(checked.train_set, spec, run_dir, start_iter)}
    if checked.val_set is not None:
        datasets["val"] = keep_original_errors(build_eval_stream(
            checked.val_set, num_actors=max(1, num_ingest_actors(spec) // 2), actor_num_cpus=INGEST_ACTOR_CPUS))

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
                                    max_iters=spec.max_iters, run_dir=run_dir, metrics=spec.evaluation.metrics)])
    class_names = list(checked.train_set.CLASSES) if getattr(checked.train_set, "CLASSES", None) else None
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec, "init_weights": init_weights, "class_names": class_names,
                           "system_metrics": system_metrics_spec(spec, run)},
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker=scaling.resources_per_worker,
                                     placement_strategy=scaling.placement_strategy),
        run_config=run_config, datasets=datasets, dataset_config=SegDataConfig(complete=("val",)),
        resume_from_checkpoint=Checkpoint.from_directory(resume_from) if resume_from else None)
    try:
        with worker_stderr_to_file(os.path.join(spec.work_dir, WORKER_STDERR_LOG)):
            result = trainer.fit()
    except BaseException as exc:
        if run is not None:
            run.finish("FAILED")
        cause = user_error(exc)
        if cause is not None:
            # The worker's own error (naming the file, key or value) instead of Ray's wrappers around it.
            raise cause.with_traceback(None) from None
        raise

    summary: Dict[str, Any] = {"work_dir": spec.work_dir, "log": spec.log_path, "start_iter": start_iter}
    summary.update(write_final_outputs(result, spec, checked.train_set, run, run_dir=run_dir))
    if run is not None:
        run.log_artifact(spec.log_path)
        run.finish("FINISHED")
        summary["mlflow"] = mlflow_summary(run)
    return summary
