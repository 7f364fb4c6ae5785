"""A Ray Train callback that runs in the controller and writes every report to log.jsonl and MLflow."""
from __future__ import annotations

import json
import math
import os
import time
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ray.train import UserCallback

from rayseg.engine.reporting import logged_records
from rayseg.evaluation.report import summary_columns, tracked_name


def scalar_metrics(metrics: Dict[str, Any]) -> Dict[str, Any]:
    """The JSON-able scalars of a report (NaN → None); nested per-class tables are left out."""
    out: Dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        out[k] = None if isinstance(v, float) and math.isnan(v) else v
    return out


def last_logged_iter(log_path: str) -> int:
    """The highest ``iter`` in an existing log.jsonl (0 when there is none)."""
    if not os.path.isfile(log_path):
        return 0
    last = 0
    with open(log_path) as f:
        for line in f:
            try:
                last = max(last, int(json.loads(line).get("iter", 0)))
            except (ValueError, AttributeError):
                continue  # a line cut short by a crash; the rest of the log is still good
    return last


def text_log_lines(record: Dict[str, Any], max_iters: int, metrics: Sequence[str] = ("mIoU",)) -> List[str]:
    """MMSeg-style text lines for one report: the training line, and a validation line if it has one.

    ``metrics`` (``evaluation.metric``) selects the validation line's summary columns, as MMSeg's table does.
    """
    it = record.get("iter", 0)
    parts = [f"lr: {record['lr']:.3e}"] if "lr" in record else []
    if record.get("time"):
        eta = int(record["time"] * max(0, max_iters - it))
        parts.append(f"eta: {eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d}")
        parts.append(f"time: {record['time']:.3f}")
    if record.get("data_time") is not None:
        parts.append(f"data_time: {record['data_time']:.3f}")
    parts += [f"{k}: {v:.4f}" for k, v in record.items() if ("loss" in k or "acc_seg" in k) and v is not None]
    lines = [f"Iter [{it}/{max_iters}]\t" + ", ".join(parts)]
    if "mIoU" in record:
        val = [f"{k}: {record[k]:.2f}" for k in summary_columns(metrics) if record.get(k) is not None]
        lines.append(f"Iter(val) [{it}]\t" + ", ".join(val))
    return lines


class TrainLogCallback(UserCallback):
    """Writes rank 0's metrics of every ``ray.train.report`` to ``log.jsonl``, a human-readable
    ``train.log`` beside it (like MMSeg's text logger), and MLflow."""

    def __init__(self, log_path: str, tracking_uri: Optional[str] = None, run_id: Optional[str] = None,
                 max_iters: int = 0, run_dir: Optional[str] = None, metrics: Sequence[str] = ("mIoU",),
                 worker_range: Optional[Tuple[int, int]] = None):
        self.log_path = log_path
        # Elastic runs ((MIN, MAX)): every change of the worker count becomes an event (WorkerCountEvents).
        self.resizes = WorkerCountEvents(os.path.join(os.path.dirname(log_path), "events.jsonl"), worker_range) \
            if worker_range else None
        self.metrics = tuple(metrics)
        self.run_dir = run_dir
        self.text_log_path = os.path.join(os.path.dirname(log_path), "train.log")
        self.max_iters = max_iters
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self._run = None
        # After a resume or a worker-group restart, iterations up to the last one already written are
        # replayed; skipping them keeps log.jsonl and the MLflow history free of duplicate steps.
        self.last_iter = last_logged_iter(log_path)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        # Unpickled in the Train controller while the worker group starts. Opening MLflow here, on a
        # background thread, keeps its import and store set-up (1.5-2.5 CPU-s) off the first training
        # iterations: the first report used to pay it on the controller while training shared the CPUs.
        self.__dict__.update(state)
        run = self._mlflow()
        self._warm_up = run.warm_up_in_background() if run is not None else None

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_warm_up", None)  # a thread of the process that unpickled it
        return state

    def _mlflow(self):
        if self._run is None and self.run_id:
            from rayseg.tracking import MlflowRun

            self._run = MlflowRun(self.tracking_uri, self.run_id)
        return self._run

    def after_exception(self, run_context, worker_exceptions: Dict[int, Exception]) -> None:
        if self.resizes is not None:
            self.resizes.failed(worker_exceptions)

    def after_report(self, run_context, metrics: List[Dict[str, Any]], checkpoint) -> None:
        if not metrics:
            return
        if self.resizes is not None:
            event = self.resizes.reported(len(metrics), metrics[0].get("iter", 0))
            if event is not None:
                self._record_event(event)
        if checkpoint is not None and metrics[0].get("saved_best") and self.run_dir:
            self._keep_best(checkpoint, metrics[0]["saved_best"])
        if all("replica" in m for m in metrics):
            self._write_replicas([m["replica"] for m in metrics])
        for logged_at, logged in logged_records(metrics[0]):
            self._write_record(scalar_metrics(logged), logged_at)

    def _write_record(self, record: Dict[str, Any], logged_at: float) -> None:
        """One log record into log.jsonl, train.log (stamped when the worker logged it) and MLflow."""
        if record.get("iter", 0) <= self.last_iter:
            return
        self.last_iter = record.get("iter", self.last_iter)
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(logged_at))
        with open(self.text_log_path, "a") as f:
            for line in text_log_lines(record, self.max_iters, self.metrics):
                f.write(f"{stamp} - rayseg - INFO - {line}\n")
        run = self._mlflow()
        if run is not None and "iter" in record:
            # log.jsonl keeps MMSeg's keys; MLflow gets the one naming scheme (train/lr, val/mIoU, ...) that
            # jobs/test.py also logs, so validation and a later evaluation of the val split are one series.
            run.log_metrics({tracked_name(k): v for k, v in record.items() if k != "iter" and v is not None},
                            step=record["iter"], timestamp=logged_at)

    def _record_event(self, event: Dict[str, Any]) -> None:
        """A resize: a line in train.log, and in MLflow the events file and a tag with the current size."""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        with open(self.text_log_path, "a") as f:
            f.write(f"{stamp} - rayseg - INFO - {event['message']}\n")
        run = self._mlflow()
        if run is not None:
            run.log_artifact(self.resizes.path)
            run.set_tag("rayseg.workers", str(event["workers"]))
            run.set_tag("rayseg.resizes", str(self.resizes.count))

    def _keep_best(self, checkpoint, key: str) -> None:
        """Copy the just-persisted checkpoint to ``<run_dir>/best_<key>``, out of ``max_keep_ckpts``' reach."""
        from rayseg.engine import storage
        from rayseg.engine.best import BEST_DIR_PREFIX

        target = storage.join(self.run_dir, BEST_DIR_PREFIX + key)
        try:
            storage.replace_dir(checkpoint.filesystem, checkpoint.path, target)
        except Exception as exc:  # losing the best copy must not kill the training run
            warnings.warn(f"could not copy the best checkpoint {checkpoint.path} to {target} ({exc}); training "
                          "continues", RuntimeWarning, stacklevel=2)

    def _write_replicas(self, replicas: List[Dict[str, Any]]) -> None:
        """``replicas.json``: each worker's node and weights digest at the end, to show the replicas agree."""
        path = os.path.join(os.path.dirname(self.log_path), "replicas.json")
        with open(path, "w") as f:
            json.dump(replicas, f, indent=2)
        run = self._mlflow()
        if run is not None:
            run.log_artifact(path)


class WorkerCountEvents:
    """The worker count of an elastic run over time, as events with their reasons, in ``events.jsonl``.

    The controller sees every report (one metrics dict per worker, so their number is the current size) and
    every failure; a report at another size than the last one is a resize. Its reason: the failure that
    preceded it when the group shrank (a lost node shows as the workers on it dying), Ray Train's elastic
    policy finding room when it grew.
    """

    def __init__(self, path: str, worker_range: Tuple[int, int]):
        self.path = path
        self.min_workers, self.max_workers = worker_range
        self.workers: Optional[int] = None
        self.count = 0  # resizes so far, in this driver
        self._failure: Optional[str] = None

    def failed(self, worker_exceptions: Dict[int, Exception]) -> None:
        """Remember why the worker group stopped (ranks and the first lines of their errors)."""
        parts = []
        for rank, exc in sorted(worker_exceptions.items()):
            text = str(exc).strip().splitlines()
            parts.append(f"rank {rank}: {type(exc).__name__}" + (f" ({text[-1][:200]})" if text else ""))
        self._failure = "; ".join(parts) or "the worker group failed"

    def reported(self, workers: int, iteration: int) -> Optional[Dict[str, Any]]:
        """Account a report from ``workers`` workers; returns the event it makes, if any (also written)."""
        if workers == self.workers:
            return None
        previous, self.workers = self.workers, workers
        if previous is None:
            kind, reason = "start", (f"{workers} of [{self.min_workers}, {self.max_workers}] workers fit "
                                     "when the worker group started")
        elif workers < previous:
            self.count += 1
            kind, reason = "shrink", f"workers lost: {self._failure or 'Ray Train restarted the worker group'}"
        else:
            self.count += 1
            kind, reason = "grow", "capacity returned: Ray Train's elastic policy found room for more workers"
        self._failure = None
        sizes = f"{previous} -> {workers}" if previous is not None else f"{workers}"
        event = {"event": kind, "iter": iteration, "workers": workers, "previous": previous, "reason": reason,
                 "time": time.time(),
                 "message": f"workers: {sizes} of [{self.min_workers}, {self.max_workers}] at iteration "
                            f"{iteration} ({reason})"}
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(event) + "\n")
        return event
