"""One trial of a sweep: a Ray Tune function that builds and fits a ``TorchTrainer`` (Ray 2.60's Train-in-Tune).

The trial trains with ``rayseg.engine.trainer.train`` in a thread of its own, in its own work dir
(``<sweep>/trials/<trial id>``) and MLflow child run, while this function forwards each validation report to
Tune through a queue the Train controller's ``TrialReportCallback`` fills. Only reports carrying the sweep's
metric reach Tune, so ASHA and PBT compare trials at validation iterations; under PBT each one carries the
trial's newest checkpoint, which is what another trial copies when it exploits this one.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from ray.train import UserCallback

from rayseg.engine.reporting import HELD_KEY
from rayseg.tune.space import Domain, decode_sample, describe_value

DONE = "__rayseg_trial_done__"
ORIGIN_FILE = "rayseg_trial.json"  # in a Tune checkpoint: which trial wrote it, at which iteration
RUN_ID_KEY = "rayseg_run_id"
WORK_DIR_KEY = "rayseg_work_dir"
MAX_ITERS_KEY = "rayseg_max_iters"  # the trial's own runner.max_iters (a sweep may search over it)


class TrialReportCallback(UserCallback):
    """Runs in the Train controller: hands rank 0's metrics and the checkpoint path of every report to the trial.

    The queue holds one item, so training waits for the trial to take a report before making the next one:
    a checkpoint the trial is about to hand to Tune cannot be deleted by ``max_keep_ckpts`` meanwhile.
    """

    def __init__(self, queue):
        self.queue = queue

    def after_report(self, run_context, metrics: List[Dict[str, Any]], checkpoint) -> None:
        if not metrics:
            return
        record = {k: v for k, v in metrics[0].items() if k not in ("per_class", "replica", HELD_KEY)}
        self.queue.put({"metrics": record, "checkpoint": checkpoint})


@dataclass(frozen=True)
class TrialContext:
    """What every trial needs from the driver (pickled once into the trainable by ``tune.with_parameters``)."""

    sweep: Any  # SweepSpec
    parent_run_id: Optional[str]
    tracking_uri: str
    experiment_name: str
    pbt: bool


def _trial_cfg(context: TrialContext, values: Dict[str, Any], trial_id: str, origin: Optional[dict],
               run_name: str) -> Dict[str, Any]:
    from rayseg.tune.sweep import trial_config

    cfg = trial_config(context.sweep, values)
    mlflow = dict(cfg.get("mlflow") or {})
    tags = dict(mlflow.get("tags") or {})
    tags.update({"rayseg.trial_id": trial_id, "rayseg.sweep": context.sweep.path})
    tags.update({f"sampled.{k}": describe_value(v) for k, v in values.items()})
    if context.parent_run_id:
        tags["mlflow.parentRunId"] = context.parent_run_id
    if origin:
        tags["rayseg.exploited_from"] = f"{origin['trial_id']} at iteration {origin['iter']}"
    mlflow.update({"tags": tags, "tracking_uri": context.tracking_uri, "experiment_name": context.experiment_name,
                   "run_name": run_name})
    cfg["mlflow"] = mlflow
    if context.pbt:
        # Each validation report must carry a checkpoint for PBT to copy.
        ckpt = dict(cfg.get("checkpoint_config") or {})
        ckpt["interval"] = int(cfg["evaluation"]["interval"])
        if ckpt.get("max_keep_ckpts") is not None:
            ckpt["max_keep_ckpts"] = max(3, int(ckpt["max_keep_ckpts"]))
        cfg["checkpoint_config"] = ckpt
    return cfg


def _restored_origin(trial_root: str, trial_id: str) -> Optional[Dict[str, Any]]:
    """The Tune checkpoint this trial (re)starts from, copied under ``trial_root``: ``{trial_id, iter, path}``."""
    import ray.tune

    checkpoint = ray.tune.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as folder:
        with open(os.path.join(folder, ORIGIN_FILE)) as f:
            origin = json.load(f)
        if origin["trial_id"] == trial_id:
            return origin  # paused and resumed: the trial's own Train run holds this and newer checkpoints
        target = os.path.join(trial_root, "restored", f"{trial_id}-from-{origin['trial_id']}-iter{origin['iter']}")
        if not os.path.isdir(target):
            shutil.copytree(folder, target)
    origin["path"] = target
    return origin


def _tune_checkpoint(train_checkpoint, trial_id: str, iteration: int):
    """A Tune checkpoint of a Train checkpoint (any storage), marked with the trial and iteration it came from."""
    import tempfile

    import ray.tune

    staging = tempfile.mkdtemp(prefix="rayseg-tune-ckpt-")
    train_checkpoint.to_directory(staging)
    with open(os.path.join(staging, ORIGIN_FILE), "w") as f:
        json.dump({"trial_id": trial_id, "iter": iteration}, f)
    return ray.tune.Checkpoint.from_directory(staging), staging


def _end_previous_run(work_dir: str, tracking_uri: str, reason: str) -> None:
    """Mark the MLflow run a trial's earlier incarnation left in ``work_dir`` (e.g. before an exploit)."""
    from rayseg.engine.resume import read_run_state
    from rayseg.tracking import MlflowRun

    run_id = read_run_state(work_dir).get("mlflow_run_id") if os.path.isdir(work_dir) else None
    if run_id:
        run = MlflowRun(tracking_uri, run_id)
        run.set_tag("rayseg.end_reason", reason)
        run.finish("KILLED")


def run_trial(config: Dict[str, Any], context: TrialContext) -> None:
    """The Tune trainable: train one sampled config, reporting validation metrics to Tune as they come."""
    import ray.tune
    from ray.util.queue import Queue

    from rayseg.engine.resume import latest_checkpoint, read_run_state
    from rayseg.engine.storage import join as storage_join
    from rayseg.engine.trainer import train
    from rayseg.spec.resolve import resolve_run

    # Tune moves each trial into its own folder; relative paths in the config (data roots, load_from) mean
    # what they mean for jobs/train.py: relative to where the job runs (Ray's working dir under ray job submit).
    original = os.environ.get("TUNE_ORIG_WORKING_DIR")
    if original and os.path.isdir(original):
        os.chdir(original)
    sweep = context.sweep
    tune_context = ray.tune.get_context()
    trial_id = tune_context.get_trial_id()
    space: Dict[str, Domain] = sweep.space
    values = decode_sample(space, config)
    trial_root = os.path.join(sweep.work_dir, "trials")
    os.makedirs(trial_root, exist_ok=True)
    origin = _restored_origin(trial_root, trial_id)
    work_dir = os.path.join(trial_root, trial_id)
    exploit = origin if origin is not None and origin["trial_id"] != trial_id else None
    if exploit is not None:
        # PBT exploit: this trial continues from another trial's weights with mutated values, in a work dir
        # (and MLflow run) of its own; the same exploit restored again (after a pause) re-enters that dir.
        work_dir = os.path.join(trial_root, f"{trial_id}-from-{exploit['trial_id']}-iter{exploit['iter']}")
        if not os.path.isdir(work_dir):
            _end_previous_run(_latest_incarnation(trial_root, trial_id), context.tracking_uri, "exploited")
    elif origin is not None:
        work_dir = _latest_incarnation(trial_root, trial_id)  # paused or a restored sweep: continue it
    shown = " ".join(f"{k.rsplit('.', 1)[-1]}={describe_value(v)}" for k, v in values.items())
    cfg = _trial_cfg(context, values, trial_id, exploit, f"{trial_id} {shown}")
    # The incarnation's own latest checkpoint when it has one (--resume semantics), else the donor's.
    spec = resolve_run(cfg, work_dir=work_dir, config_path=sweep.base_config_path, resume=True)
    if exploit is not None and latest_checkpoint(storage_join(spec.checkpoint.storage, spec.run_name)) is None:
        spec = resolve_run({**cfg, "resume_from": exploit["path"]}, work_dir=work_dir,
                           config_path=sweep.base_config_path)

    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    outcome: Dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["summary"] = train(spec, callbacks=[TrialReportCallback(queue)], show_progress=False)
        except BaseException as exc:  # handed to the trial's thread below, which raises it to Tune
            outcome["error"] = exc
        finally:
            queue.put(DONE)

    worker = threading.Thread(target=fit, name="rayseg-trial-fit", daemon=True)
    worker.start()
    metric = sweep.tune.metric
    newest_checkpoint = None
    run_id: Optional[str] = None
    staged: List[str] = []
    final: Optional[Dict[str, Any]] = None
    while True:
        item = queue.get()
        if item == DONE:
            break
        if item["checkpoint"]:
            newest_checkpoint = item["checkpoint"]
        record = item["metrics"]
        if metric not in record:
            continue
        run_id = run_id or read_run_state(work_dir).get("mlflow_run_id")
        record = {k: v for k, v in record.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        record.update({RUN_ID_KEY: run_id or "", WORK_DIR_KEY: work_dir, MAX_ITERS_KEY: spec.max_iters})
        if int(record.get("iter", 0)) >= spec.max_iters:
            # Schedulers stop a trial that reaches max_t; reported only once the training job has written
            # latest.pth, the best weights and the tables, so stopping it then loses nothing.
            final = record
            continue
        checkpoint = None
        if context.pbt and newest_checkpoint:
            checkpoint, folder = _tune_checkpoint(newest_checkpoint, trial_id, int(record["iter"]))
            staged.append(folder)
            newest_checkpoint = None
        ray.tune.report(record, checkpoint=checkpoint)
        for folder in staged[:-1]:
            shutil.rmtree(folder, ignore_errors=True)
        del staged[:-1]
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    if final is None and (outcome.get("summary") or {}).get("already_finished"):
        # A restored sweep restarted a trial whose training had finished: its log has the final metrics.
        final = _last_logged(spec.log_path, metric)
        if final is not None:
            final.update({RUN_ID_KEY: read_run_state(work_dir).get("mlflow_run_id") or "", WORK_DIR_KEY: work_dir,
                          MAX_ITERS_KEY: spec.max_iters})
    if final is not None:
        ray.tune.report(final)


def _last_logged(log_path: str, metric: str) -> Optional[Dict[str, Any]]:
    """The last record of ``log.jsonl`` that holds ``metric``."""
    last = None
    if os.path.isfile(log_path):
        with open(log_path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get(metric) is not None:
                    last = record
    return last


def _latest_incarnation(trial_root: str, trial_id: str) -> str:
    """The work dir of the trial's newest incarnation (the trial's own, or the last one after an exploit)."""
    names = [n for n in os.listdir(trial_root) if n == trial_id or n.startswith(trial_id + "-from-")]
    if not names:
        return os.path.join(trial_root, trial_id)
    return max((os.path.join(trial_root, n) for n in names), key=os.path.getmtime)
