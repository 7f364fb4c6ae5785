"""The training driver: datasets → Ray Train ``TorchTrainer`` → latest.pth, log.jsonl and an MLflow run."""
from __future__ import annotations

import math
import os
from typing import Any, Dict, Optional

from rayseg.config import dump_config
from rayseg.engine.best import resolve_save_best
from rayseg.engine.precision import requested_precision
from rayseg.engine.storage import check_storage_for_cluster, storage_root
from rayseg.engine.storage import join as storage_join
from rayseg.errors import ConfigError

# Fraction of a CPU each decode/augment actor asks Ray for; the actors mostly wait on I/O and OpenCV,
# and asking for whole CPUs would starve the training workers on small machines.
INGEST_ACTOR_CPUS = 0.5


def resolve_work_dir(cfg: Dict[str, Any], work_dir: Optional[str], config_path: Optional[str]) -> str:
    """``--work-dir`` beats ``work_dir`` in the config, which beats ``./work_dirs/<config name>``."""
    chosen = work_dir or cfg.get("work_dir")
    if not chosen:
        stem = os.path.splitext(os.path.basename(config_path or "rayseg"))[0]
        chosen = os.path.join("work_dirs", stem)
    return os.path.abspath(chosen)


def _scaling(cfg: Dict[str, Any]):
    from ray.train import ScalingConfig

    sc = dict(cfg.get("scaling") or {})
    resources = sc.get("resources_per_worker") or None
    return ScalingConfig(num_workers=int(sc.get("num_workers", 1)), use_gpu=bool(sc.get("use_gpu", False)),
                         resources_per_worker=resources, placement_strategy=sc.get("placement_strategy", "PACK"))


def ensure_ray(cfg: Dict[str, Any], address: Optional[str] = None) -> None:
    """Connect to the cluster in ``address``/``RAY_ADDRESS``, or start a local one big enough for the job."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    sc = cfg.get("scaling") or {}
    per_worker = float((sc.get("resources_per_worker") or {}).get("CPU", 1))
    actors = _num_ingest_actors(cfg)
    # Logical CPUs: enough for the workers plus the ingest actors, at least the machine's cores.
    needed = math.ceil(int(sc.get("num_workers", 1)) * per_worker + 2 * actors * INGEST_ACTOR_CPUS) + 1
    # The dashboard serves the state API that Ray Train's placement-group cleaner polls.
    # address="local": a cluster someone started with `ray start` on this machine is not ours to join.
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, needed), dashboard_host="127.0.0.1")


def _quiet_ray_data(deterministic: bool = False) -> None:
    """Ray Data's per-operator progress bars would drown the training progress line on the console.

    ``deterministic`` also makes Ray Data keep block order, which fixes which rows each worker's shard
    gets (the split otherwise follows whichever block is ready first).
    """
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    if deterministic:
        ctx.execution_options.preserve_order = True


def _num_ingest_actors(cfg: Dict[str, Any]) -> int:
    data = cfg["data"]
    per_worker = int(data.get("workers_per_gpu", 1) or 1)
    return max(1, per_worker * int((cfg.get("scaling") or {}).get("num_workers", 1)))


class TrainStreamFactory:
    """Builds the training stream from where the run stands when Ray Train (re)starts the workers.

    Ray Train calls it at every worker-group start, so after a failure the stream resumes at the
    latest checkpoint's position instead of replaying the job's data from the beginning.
    """

    def __init__(self, dataset, run_dir: str, fallback_iter: int, max_iters: int, batch: int, world: int,
                 seed: int, actors: int, deterministic: bool = False):
        self.dataset, self.run_dir, self.fallback_iter = dataset, run_dir, fallback_iter
        self.max_iters, self.batch, self.world, self.seed, self.actors = max_iters, batch, world, seed, actors
        self.deterministic = deterministic

    def __call__(self):
        from rayseg.datasets.ray_data import build_train_stream
        from rayseg.engine.resume import latest_checkpoint

        _quiet_ray_data(self.deterministic)  # this runs in Ray Train's controller, whose DataContext is its own
        found = latest_checkpoint(self.run_dir)
        start_iter = found[1] if found else self.fallback_iter
        per_iter = self.batch * self.world
        # One extra batch per worker: Ray's equal split may trim a few rows.
        rows = (self.max_iters - start_iter + 1) * per_iter
        return build_train_stream(self.dataset, rows, seed=self.seed, start_position=start_iter * per_iter,
                                  num_actors=self.actors, actor_num_cpus=INGEST_ACTOR_CPUS)


def _check_cluster_storage(storage: str) -> None:
    """Refuse a head-local storage path before any worker starts, if the cluster spans several machines."""
    import ray

    addresses = [n.get("NodeManagerAddress", "") for n in ray.nodes() if n.get("Alive")]
    check_storage_for_cluster(storage, addresses)


def _system_metrics_spec(cfg: Dict[str, Any], run) -> Optional[Dict[str, Any]]:
    ml = cfg.get("mlflow") or {}
    if run is None or not ml.get("system_metrics", True):
        return None
    return {"tracking_uri": run.tracking_uri, "run_id": run.run_id,
            "interval": float(ml.get("system_metrics_interval", 10))}


def _start_point(cfg: Dict[str, Any], run_dir: str, work_dir: str, resume: bool) -> tuple:
    """(iteration to start from, checkpoint folder to resume from or None), MMSeg's resume semantics."""
    from rayseg.engine.resume import checkpoint_iteration, latest_checkpoint

    previous = latest_checkpoint(run_dir)
    resume_from = cfg.get("resume_from")
    if resume_from:
        if previous:
            raise ConfigError(f"resume_from={resume_from} but {work_dir} already holds its own run (latest "
                              f"checkpoint {previous[0]}); use --resume for that run or another --work-dir")
        return checkpoint_iteration(resume_from), resume_from
    if previous and not resume:
        raise ConfigError(f"{work_dir} already holds a run that reached iteration {previous[1]} ({previous[0]}); "
                          "pass --resume to continue it, or choose another --work-dir")
    return (previous[1], None) if previous else (0, None)


def train(cfg: Dict[str, Any], work_dir: Optional[str] = None, config_path: Optional[str] = None,
          address: Optional[str] = None, resume: bool = False, load_from: Optional[str] = None) -> Dict[str, Any]:
    """Train the model described by ``cfg`` on Ray; returns paths, final metrics and the MLflow run.

    ``resume`` continues the run already in the work dir (model, optimizer, schedule, iteration, RNG
    and data position); ``load_from`` (or ``cfg['load_from']``) only initialises the weights and starts
    at iteration 0, as in MMSeg.
    """
    from ray.train import Checkpoint, CheckpointConfig, FailureConfig, LoggingConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from rayseg.datasets import build_dataset
    from rayseg.datasets.ray_data import build_eval_stream
    from rayseg.engine.callbacks import TrainLogCallback
    from rayseg.engine.data_config import SegDataConfig
    from rayseg.engine.checkpoint import load_weights_file
    from rayseg.engine.loop import train_loop_per_worker
    from rayseg.engine.outputs import mlflow_summary, write_final_outputs
    from rayseg.engine.resume import read_run_state, write_run_state
    from rayseg.tracking import resume_run, start_run

    work_dir = resolve_work_dir(cfg, work_dir, config_path)
    os.makedirs(work_dir, exist_ok=True)
    load_from = load_from or cfg.get("load_from")
    cfg = dict(cfg, work_dir=work_dir, load_from=load_from)
    if (cfg.get("runner") or {}).get("type", "IterBasedRunner") != "IterBasedRunner":
        raise ConfigError(f"runner.type: only IterBasedRunner is supported, got {cfg['runner'].get('type')!r}")
    # Config mistakes the workers would only hit after start-up are caught here, before anything starts.
    resolve_save_best(cfg.get("evaluation"))
    requested_precision(cfg)
    max_iters = int(cfg["runner"]["max_iters"])
    storage = storage_root(cfg.get("storage_path"), work_dir)
    name = os.path.basename(work_dir)
    run_dir = storage_join(storage, name)
    start_iter, resume_from = _start_point(cfg, run_dir, work_dir, resume)
    log_path = os.path.join(work_dir, "log.jsonl")
    if start_iter >= max_iters:
        return {"work_dir": work_dir, "log": log_path, "already_finished": True, "iter": start_iter,
                "latest": os.path.join(work_dir, "latest.pth")}
    init_weights = None
    if load_from and start_iter == 0 and not resume_from:
        init_weights = load_weights_file(load_from)["state_dict"]  # fails early, naming the file

    config_file = os.path.join(work_dir, "config.yaml")
    with open(config_file, "w") as f:
        f.write(dump_config(cfg))
    ensure_ray(cfg, address)
    _check_cluster_storage(storage)
    deterministic = bool(cfg.get("deterministic"))
    # Block order matters only for the training stream, which the controller builds with its own context;
    # the driver's DataContext is the caller's process-wide one and must not keep preserve_order afterwards.
    _quiet_ray_data()
    data = cfg["data"]
    train_set = build_dataset(data["train"])
    eval_interval = int((cfg.get("evaluation") or {}).get("interval") or 0)
    val_set = build_dataset(data["val"]) if eval_interval and data.get("val") else None

    scaling = _scaling(cfg)
    actors = _num_ingest_actors(cfg)
    datasets: Dict[str, Any] = {"train": TrainStreamFactory(
        train_set, run_dir, start_iter, max_iters, int(data["samples_per_gpu"]), scaling.num_workers,
        int(cfg.get("seed") or 0), actors, deterministic)}
    if val_set is not None:
        datasets["val"] = build_eval_stream(val_set, num_actors=max(1, actors // 2), actor_num_cpus=INGEST_ACTOR_CPUS)

    state = read_run_state(work_dir)
    run = resume_run(cfg, work_dir, state.get("mlflow_run_id")) if start_iter and state.get("mlflow_run_id") \
        else start_run(cfg, work_dir, config_path)
    if run is not None:
        write_run_state(work_dir, {"mlflow_run_id": run.run_id})
        run.log_artifact(config_file)
    ckpt_cfg = cfg.get("checkpoint_config") or {}
    failure = cfg.get("failure") or {}
    run_config = RunConfig(
        name=name, storage_path=storage,
        # Ray Train's INFO lines (one per report) would bury the progress line.
        logging_config=LoggingConfig(log_level="WARNING"),
        failure_config=FailureConfig(max_failures=int(failure.get("max_failures", 0))),
        checkpoint_config=CheckpointConfig(num_to_keep=ckpt_cfg.get("max_keep_ckpts")),
        callbacks=[TrainLogCallback(log_path, run.tracking_uri if run else None, run.run_id if run else None,
                                    max_iters=max_iters, run_dir=run_dir)])
    per_worker_cpus = (cfg.get("scaling") or {}).get("resources_per_worker") or {}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg, "has_val": val_set is not None, "init_weights": init_weights,
            "val_pipeline": data["val"]["pipeline"] if val_set is not None else None,
            "class_names": list(train_set.CLASSES) if getattr(train_set, "CLASSES", None) else None,
            "torch_threads": max(1, int(per_worker_cpus.get("CPU", 1))),
            "system_metrics": _system_metrics_spec(cfg, run),
        },
        scaling_config=scaling, run_config=run_config, datasets=datasets,
        dataset_config=SegDataConfig(complete=("val",)),
        resume_from_checkpoint=Checkpoint.from_directory(resume_from) if resume_from else None)
    try:
        result = trainer.fit()
    except BaseException:
        if run is not None:
            run.finish("FAILED")
        raise

    summary: Dict[str, Any] = {"work_dir": work_dir, "log": log_path, "start_iter": start_iter}
    summary.update(write_final_outputs(result, cfg, work_dir, train_set, run, run_dir=run_dir))
    if run is not None:
        run.log_artifact(log_path)
        run.finish("FINISHED")
        summary["mlflow"] = mlflow_summary(run)
    return summary
