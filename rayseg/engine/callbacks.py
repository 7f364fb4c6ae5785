"""A Ray Train callback that runs in the controller and writes every report to log.jsonl and MLflow."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional

from ray.train import UserCallback


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


class TrainLogCallback(UserCallback):
    """Appends rank 0's metrics of every ``ray.train.report`` to ``log.jsonl`` and logs them to MLflow."""

    def __init__(self, log_path: str, tracking_uri: Optional[str] = None, run_id: Optional[str] = None):
        self.log_path = log_path
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self._run = None
        # After a resume or a worker-group restart, iterations up to the last one already written are
        # replayed; skipping them keeps log.jsonl and the MLflow history free of duplicate steps.
        self.last_iter = last_logged_iter(log_path)

    def _mlflow(self):
        if self._run is None and self.run_id:
            from rayseg.tracking import MlflowRun

            self._run = MlflowRun(self.tracking_uri, self.run_id)
        return self._run

    def after_report(self, run_context, metrics: List[Dict[str, Any]], checkpoint) -> None:
        if not metrics:
            return
        record = scalar_metrics(metrics[0])
        if record.get("iter", 0) <= self.last_iter:
            return
        self.last_iter = record.get("iter", self.last_iter)
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        run = self._mlflow()
        if run is not None and "iter" in record:
            run.log_metrics({k: v for k, v in record.items() if k != "iter" and v is not None}, step=record["iter"])
