"""The training driver: datasets → Ray Train ``TorchTrainer`` → latest.pth, log.jsonl and an MLflow run."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, Optional

from rayseg.config import dump_config
from rayseg.engine.evaluate import SUMMARY_KEYS
from rayseg.engine.checkpoint import atomic_torch_save, load_weights_file, weights_file_payload
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
    ray.init(num_cpus=max(os.cpu_count() or 1, needed), dashboard_host="127.0.0.1")


def _quiet_ray_data() -> None:
    """Ray Data's per-operator progress bars would drown the training progress line on the console."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False


def _num_ingest_actors(cfg: Dict[str, Any]) -> int:
    data = cfg["data"]
    per_worker = int(data.get("workers_per_gpu", 1) or 1)
    return max(1, per_worker * int((cfg.get("scaling") or {}).get("num_workers", 1)))


def train(cfg: Dict[str, Any], work_dir: Optional[str] = None, config_path: Optional[str] = None,
          address: Optional[str] = None) -> Dict[str, Any]:
    """Train the model described by ``cfg`` on Ray; returns paths, final metrics and the MLflow run."""
    from ray.train import CheckpointConfig, DataConfig, LoggingConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from rayseg.datasets import build_dataset
    from rayseg.datasets.ray_data import build_eval_stream, build_train_stream
    from rayseg.engine.callbacks import TrainLogCallback
    from rayseg.engine.loop import train_loop_per_worker
    from rayseg.evaluation import format_tables, metrics_to_json, per_class_csv
    from rayseg.tracking import start_run, ui_command, run_url

    work_dir = resolve_work_dir(cfg, work_dir, config_path)
    os.makedirs(work_dir, exist_ok=True)
    cfg = dict(cfg, work_dir=work_dir)
    if (cfg.get("runner") or {}).get("type", "IterBasedRunner") != "IterBasedRunner":
        raise ConfigError(f"runner.type: only IterBasedRunner is supported, got {cfg['runner'].get('type')!r}")
    config_file = os.path.join(work_dir, "config.yaml")
    with open(config_file, "w") as f:
        f.write(dump_config(cfg))

    ensure_ray(cfg, address)
    _quiet_ray_data()
    data = cfg["data"]
    train_set = build_dataset(data["train"])
    eval_interval = int((cfg.get("evaluation") or {}).get("interval") or 0)
    val_set = build_dataset(data["val"]) if eval_interval and data.get("val") else None

    scaling = _scaling(cfg)
    world = scaling.num_workers
    batch = int(data["samples_per_gpu"])
    max_iters = int(cfg["runner"]["max_iters"])
    # One extra batch per worker: Ray's equal split may trim a few rows.
    rows = (max_iters + 1) * batch * world
    actors = _num_ingest_actors(cfg)
    datasets = {"train": build_train_stream(train_set, rows, seed=int(cfg.get("seed") or 0),
                                            num_actors=actors, actor_num_cpus=INGEST_ACTOR_CPUS)}
    if val_set is not None:
        datasets["val"] = build_eval_stream(val_set, num_actors=max(1, actors // 2), actor_num_cpus=INGEST_ACTOR_CPUS)

    run = start_run(cfg, work_dir, config_path)
    if run is not None:
        run.log_artifact(config_file)
    log_path = os.path.join(work_dir, "log.jsonl")
    storage = cfg.get("storage_path") or os.path.join(work_dir, "ray_results")
    ckpt_cfg = cfg.get("checkpoint_config") or {}
    run_config = RunConfig(
        name=os.path.basename(work_dir), storage_path=storage,
        # Ray Train's INFO lines (one per report) would bury the progress line.
        logging_config=LoggingConfig(log_level="WARNING"),
        checkpoint_config=CheckpointConfig(num_to_keep=ckpt_cfg.get("max_keep_ckpts")),
        callbacks=[TrainLogCallback(log_path, run.tracking_uri if run else None, run.run_id if run else None)])
    per_worker_cpus = (cfg.get("scaling") or {}).get("resources_per_worker") or {}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": cfg, "has_val": val_set is not None,
            "val_pipeline": data["val"]["pipeline"] if val_set is not None else None,
            "class_names": list(train_set.CLASSES) if getattr(train_set, "CLASSES", None) else None,
            "torch_threads": max(1, int(per_worker_cpus.get("CPU", 1))),
        },
        scaling_config=scaling, run_config=run_config, datasets=datasets,
        dataset_config=DataConfig(datasets_to_split="all"))
    try:
        result = trainer.fit()
    except BaseException:
        if run is not None:
            run.finish("FAILED")
        raise

    summary: Dict[str, Any] = {"work_dir": work_dir, "log": log_path}
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as folder:
            state = load_weights_file(folder)
        latest = os.path.join(work_dir, "latest.pth")
        atomic_torch_save(weights_file_payload(state["state_dict"], cfg, state["meta"].get("iter", max_iters),
                                               classes=getattr(train_set, "CLASSES", None),
                                               palette=getattr(train_set, "PALETTE", None)), latest)
        summary["latest"] = latest
        if run is not None:
            run.log_artifact(latest, "weights")
    final = dict(result.metrics or {})
    names = list(getattr(train_set, "CLASSES", None) or [])
    if "per_class" in final and "mIoU" in final:
        results = {k: final[k] for k in SUMMARY_KEYS}
        results.update(final["per_class"])
        table = format_tables(results, names)
        summary["table"] = table
        summary["metrics"] = metrics_to_json(results, names)
        for name, text in (("val_table.txt", table), ("per_class.csv", per_class_csv(results, names)),
                           ("val_metrics.json", json.dumps(summary["metrics"], indent=2))):
            path = os.path.join(work_dir, name)
            with open(path, "w") as f:
                f.write(text)
            if run is not None:
                run.log_artifact(path, "evaluation")
    if run is not None:
        run.log_artifact(log_path)
        run.finish("FINISHED")
        summary["mlflow"] = {"tracking_uri": run.tracking_uri, "run_id": run.run_id,
                             "ui": ui_command(run.tracking_uri),
                             "url": run_url(run.tracking_uri, run.experiment_id, run.run_id)}
    return summary
