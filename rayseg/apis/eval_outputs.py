"""What an evaluation leaves behind: metrics JSON, a normalised confusion-matrix PNG, an MLflow record."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from rayseg.errors import ConfigError

EVALUATION_TAG = ("rayseg.kind", "evaluation")


def confusion_png_path(out: str) -> str:
    """Where the confusion matrix goes for ``--out``: ``<out stem>_confusion.png`` beside it."""
    return os.path.splitext(os.path.abspath(out))[0] + "_confusion.png"


def write_metrics_json(results: Dict[str, Any], path: str) -> str:
    """The metrics JSON (summary + per_class, every metric, NaN as null); folders are created."""
    from rayseg.evaluation import metrics_to_json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(metrics_to_json(results, results["classes"]), f, indent=2)
    return path


def write_confusion_png(results: Dict[str, Any], path: str, title: Optional[str] = None) -> str:
    """Plot the results' confusion matrix, row-normalised (rows ground truth), with class names."""
    from rayseg.visualization import plot_confusion_matrix

    counts = np.asarray(results["confusion"], dtype=np.float64)
    return plot_confusion_matrix(counts, results["classes"], path, title=title, normalize=True)


def flat_metrics(results: Dict[str, Any], prefix: str) -> Dict[str, float]:
    """``<prefix>/<summary>`` and ``<prefix>/IoU.<class>``, ``/Acc.<class>``, ``/Dice.<class>`` scalars
    (NaN dropped later)."""
    from rayseg.evaluation import scalar_metrics

    return scalar_metrics(results, results["classes"], per_class=("IoU", "Acc", "Dice"), prefix=prefix)


def evaluation_store(cfg: Dict[str, Any], meta: Dict[str, Any]) -> tuple:
    """(tracking URI, artifact root or None): ``mlflow.tracking_uri``/``MLFLOW_TRACKING_URI``, else the
    local store the checkpoint's training run used (beside its work dir), else ``work_dirs/mlflow.db``."""
    from rayseg.tracking import resolve_tracking_uri

    work_dir = (meta.get("config") or {}).get("work_dir") or cfg.get("work_dir") or os.path.join("work_dirs", "eval")
    uri, artifact_root = resolve_tracking_uri(cfg, work_dir)
    if artifact_root is None and uri.startswith("sqlite:///"):
        # MLflow would otherwise put a new experiment's artifacts in ./mlruns of whatever folder we run in.
        artifact_root = "file://" + os.path.join(os.path.dirname(os.path.abspath(uri[len("sqlite:///"):])),
                                                 "mlartifacts")
    return uri, artifact_root


def open_evaluation_run(cfg: Dict[str, Any], meta: Dict[str, Any], run_id: Optional[str] = None,
                        tags: Optional[Dict[str, str]] = None):
    """An ``MlflowRun`` for the evaluation: the existing ``run_id`` (checked now, so a typo fails before
    the evaluation runs) or a new run tagged ``rayseg.kind=evaluation`` in ``mlflow.experiment_name``."""
    from mlflow.tracking import MlflowClient

    from rayseg.tracking import MlflowRun, server_reachable

    uri, artifact_root = evaluation_store(cfg, meta)
    problem = server_reachable(uri)
    if problem:
        raise ConfigError(f"MLflow tracking server {uri} is unreachable ({problem})")
    client = MlflowClient(tracking_uri=uri)
    if run_id:
        try:
            run = client.get_run(run_id)
        except Exception as exc:
            raise ConfigError(f"MLflow run {run_id} not found in {uri}: {exc}") from None
        return MlflowRun(uri, run_id, run.info.experiment_id)
    name = (cfg.get("mlflow") or {}).get("experiment_name") or "rayseg"
    experiment = client.get_experiment_by_name(name)
    exp_id = experiment.experiment_id if experiment is not None else client.create_experiment(
        name, artifact_location=f"{artifact_root}/{name}" if artifact_root else None)
    all_tags = {EVALUATION_TAG[0]: EVALUATION_TAG[1], **(tags or {})}
    run = client.create_run(exp_id, tags=all_tags, run_name=all_tags.get("mlflow.runName"))
    return MlflowRun(uri, run.info.run_id, exp_id)


def log_evaluation(run, results: Dict[str, Any], prefix: str, step: int, files: Sequence[str] = (),
                   table: Optional[str] = None, finish: bool = False) -> List[str]:
    """Log ``<prefix>/…`` metrics at ``step`` and ``files`` (+ the text table) under
    ``evaluation/<prefix>/`` in ``run``; returns the artifact paths. ``finish`` ends a run we created."""
    run.log_metrics(flat_metrics(results, prefix), step=step)
    folder = f"evaluation/{prefix}"
    logged = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = list(files)
        if table is not None:
            paths.append(os.path.join(tmp, "table.txt"))
            with open(paths[-1], "w") as f:
                f.write(table)
        for path in paths:
            run.log_artifact(path, folder)
            logged.append(f"{folder}/{os.path.basename(path)}")
    if finish:
        run.finish("FINISHED")
    return logged
