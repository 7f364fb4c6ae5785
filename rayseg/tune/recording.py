"""What a sweep records: one MLflow parent run, each trial's end reason, the sorted trial table, best_config.yaml.

Each trial's own child run (its resolved config as params, sampled values as ``sampled.*`` tags, metrics by
iteration) is made by the trial's training job; here the driver opens the parent, marks how each child ended
(``rayseg.end_reason``: completed, stopped_early, failed; exploited is set by the trial that was exploited)
and, at the end, writes the table and the best trial into the parent.
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Dict, List, Optional

from ray.tune import Callback

from rayseg.config import dump_config
from rayseg.tracking import MlflowRun, describe_store, server_reachable
from rayseg.tune.space import describe_value
from rayseg.tune.trial import MAX_ITERS_KEY, RUN_ID_KEY, WORK_DIR_KEY

TABLE_FILE = "trials.csv"
BEST_CONFIG_FILE = "best_config.yaml"


def start_parent_run(sweep, tracking_uri: str, artifact_root: Optional[str], experiment_name: str,
                     run_id: Optional[str] = None) -> Optional[MlflowRun]:
    """The sweep's parent run (reopened by ``run_id`` on ``--resume``); None, after a warning, without MLflow."""
    import warnings

    from mlflow.tracking import MlflowClient

    from rayseg.tracking_store import open_experiment

    if server_reachable(tracking_uri):
        warnings.warn(f"MLflow tracking server {tracking_uri} is unreachable; the sweep runs without MLflow",
                      RuntimeWarning, stacklevel=2)
        return None
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        if run_id:
            run = client.get_run(run_id)
            client.update_run(run_id, status="RUNNING")
            return MlflowRun(tracking_uri, run_id, run.info.experiment_id)
        client, exp_id = open_experiment(tracking_uri, experiment_name,
                                         f"{artifact_root}/{experiment_name}" if artifact_root else None)
        name = f"sweep {os.path.splitext(os.path.basename(sweep.path))[0]}"
        run = client.create_run(exp_id, run_name=name, tags={"rayseg.sweep": sweep.path,
                                                             "rayseg.work_dir": sweep.work_dir})
    except Exception as exc:
        warnings.warn(f"MLflow tracking at {tracking_uri} is unavailable ({exc}); the sweep runs without MLflow",
                      RuntimeWarning, stacklevel=2)
        return None
    handle = MlflowRun(tracking_uri, run.info.run_id, exp_id)
    settings = sweep.tune
    params = {"base_config": sweep.base_config_path, "metric": settings.metric, "mode": settings.mode,
              "num_samples": settings.num_samples, "scheduler": json.dumps(settings.scheduler),
              "search_alg": json.dumps(settings.search_alg),
              "resources_per_trial": json.dumps(settings.resources_per_trial)}
    params.update({f"space.{key}": json.dumps({d.kind: list(d.args)}) for key, d in sweep.space.items()})
    from mlflow.entities import Param

    handle._guard("log_params", client.log_batch, handle.run_id,
                  params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    print(f"{describe_store(tracking_uri)}; sweep run '{name}' ({handle.run_id})", flush=True)
    return handle


class TrialEndRecorder(Callback):
    """Runs in the driver: remembers each trial's last result and marks its MLflow run when the trial ends."""

    def __init__(self, tracking_uri: str, max_iters: int):
        self.tracking_uri = tracking_uri
        self.max_iters = max_iters
        self.last: Dict[str, Dict[str, Any]] = {}
        self.reasons: Dict[str, str] = {}
        self.ended: Dict[str, tuple] = {}  # trial id -> (run id, status) of the runs this recorder ended

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        self.last[trial.trial_id] = dict(result)

    def _mark(self, trial, reason: str, status: str) -> None:
        self.reasons[trial.trial_id] = reason
        run_id = self.last.get(trial.trial_id, {}).get(RUN_ID_KEY)
        if not run_id:
            return
        run = MlflowRun(self.tracking_uri, run_id)
        run.set_tag("rayseg.end_reason", reason)
        if status != "FINISHED":  # a finished training job has already closed its run
            run.finish(status)
            self.ended[trial.trial_id] = (run_id, status)

    def reassert_ends(self) -> None:
        """Mark again the runs of the trials the sweep stopped or lost, once Tune has torn every trial down.

        A stopped trial's actor goes down after ``on_trial_complete``; its training job sees its Ray Train run
        die and may end its MLflow run FAILED after this recorder marked it KILLED."""
        for run_id, status in self.ended.values():
            MlflowRun(self.tracking_uri, run_id).finish(status)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        last = self.last.get(trial.trial_id, {})
        if int(last.get("iter", 0)) >= int(last.get(MAX_ITERS_KEY, self.max_iters)):
            self._mark(trial, "completed", "FINISHED")
        else:
            self._mark(trial, "stopped_early", "KILLED")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._mark(trial, "failed", "FAILED")


def _best_of(history, metric: str, mode: str) -> Optional[float]:
    if history is None or metric not in getattr(history, "columns", []):
        return None
    values = [float(v) for v in history[metric].tolist() if v is not None and not math.isnan(float(v))]
    if not values:
        return None
    return max(values) if mode == "max" else min(values)


def trial_rows(result_grid, sweep, reasons: Dict[str, str]) -> List[Dict[str, Any]]:
    """One row per trial, sorted best first by the sweep's metric (its best value over the trial's reports)."""
    from rayseg.tune.space import decode_sample

    metric, mode = sweep.tune.metric, sweep.tune.mode
    rows = []
    for result in result_grid:
        metrics = result.metrics or {}
        trial_id = metrics.get("trial_id") or os.path.basename(str(result.path))
        values = decode_sample(sweep.space, result.config) if result.config else {}
        status = reasons.get(trial_id) or ("failed" if result.error else
                                          "completed" if int(metrics.get("iter", 0)) >= int(
                                              metrics.get(MAX_ITERS_KEY, sweep.max_iters)) else
                                          "stopped_early")
        row = {"trial": trial_id, "end": status, "iter": metrics.get("iter"),
               f"best_{metric}": _best_of(result.metrics_dataframe, metric, mode),
               f"last_{metric}": metrics.get(metric), "mlflow_run": metrics.get(RUN_ID_KEY, ""),
               "work_dir": metrics.get(WORK_DIR_KEY, "")}
        row.update({key: describe_value(value) for key, value in values.items()})
        row["_values"] = values
        rows.append(row)
    sign = -1 if mode == "max" else 1
    rows.sort(key=lambda r: (r[f"best_{metric}"] is None, sign * (r[f"best_{metric}"] or 0.0)))
    return rows


def format_table(rows: List[Dict[str, Any]], sweep) -> str:
    """The trial table as text, best first."""
    metric = sweep.tune.metric
    columns = ["trial", "end", "iter", f"best_{metric}", *sweep.space.keys()]
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def write_table(rows: List[Dict[str, Any]], path: str) -> None:
    """``trials.csv``: the sorted table with every column."""
    columns: List[str] = []
    for row in rows:
        columns += [k for k in row if not k.startswith("_") and k not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k) for k in columns})


def best_checkpoint(work_dir: str, metric: str) -> Optional[str]:
    """The best trial's best checkpoint: its ``best_<metric>_iter_N.pth``, else its best Ray checkpoint folder."""
    if not work_dir or not os.path.isdir(work_dir):
        return None
    files = sorted(n for n in os.listdir(work_dir) if n.startswith(f"best_{metric}_iter_") and n.endswith(".pth"))
    if files:
        return os.path.join(work_dir, files[-1])
    folder = os.path.join(work_dir, "ray_results", os.path.basename(work_dir), f"best_{metric}")
    return folder if os.path.isdir(folder) else None


def write_best_config(sweep, row: Dict[str, Any], path: str) -> Optional[str]:
    """``best_config.yaml``: the best trial's training config (base config, trial resources, its values),
    which ``jobs/train.py`` runs as is; a header names the trial, its score and its best checkpoint."""
    from rayseg.tune.sweep import trial_config

    cfg = trial_config(sweep, row["_values"])
    checkpoint = best_checkpoint(row.get("work_dir", ""), sweep.tune.metric)
    metric = sweep.tune.metric
    score = row.get(f"best_{metric}")
    header = [f"# The best trial of the sweep {sweep.path}: {row['trial']}, "
              f"{metric} {score:.2f}" if isinstance(score, float) else f"# The best trial of {sweep.path}",
              f"# its best checkpoint: {checkpoint or 'none kept'}",
              "# train it again with: python jobs/train.py " + path]
    header += [f"#   {key} = {describe_value(value)}" for key, value in row["_values"].items()]
    with open(path, "w") as f:
        f.write("\n".join(header) + "\n" + dump_config(cfg))
    return checkpoint


def finish_parent_run(parent: Optional[MlflowRun], rows: List[Dict[str, Any]], sweep, table_path: str,
                      best_config_path: Optional[str], checkpoint: Optional[str], status: str = "FINISHED") -> None:
    """Log the table, the best trial and ``best_config.yaml`` into the parent run and close it."""
    if parent is None:
        return
    metric = sweep.tune.metric
    parent.log_artifact(table_path)
    if best_config_path:
        parent.log_artifact(best_config_path)
    if rows:
        best = rows[0]
        parent.set_tag("best_trial", best["trial"])
        if best.get("mlflow_run"):
            parent.set_tag("best_run_id", best["mlflow_run"])
        if checkpoint:
            parent.set_tag("best_checkpoint", checkpoint)
        for key, value in best["_values"].items():
            parent.set_tag(f"best.{key}", describe_value(value))
        if isinstance(best.get(f"best_{metric}"), float):
            parent.log_metrics({f"best/{metric}": best[f"best_{metric}"]}, step=0)
    parent.log_metrics({"trials": len(rows)}, step=0)
    parent.finish(status)
