"""What an evaluation leaves behind: metrics JSON, a normalised confusion-matrix PNG, an MLflow record.

MLflow names (docs/mlflow.md): metrics ``<prefix>/<metric>`` at the checkpoint's iteration, artifacts
``evaluation/<prefix>/{table.txt, per_class.csv, metrics.json, confusion.png}``, where the prefix is the
split (``val``, ``test``) or ``<split>_aug`` with test-time augmentation: the names validation during
training uses, so ``jobs/test.py --split val`` into a training run extends the same series.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional

import numpy as np

from rayseg.errors import ConfigError
from rayseg.evaluation.report import EVALUATION_ARTIFACTS

EVALUATION_TAG = ("rayseg.kind", "evaluation")
# --mlflow-run-id AUTO: the training run recorded in the checkpoint's work dir (run_state.json).
AUTO_RUN_ID = "auto"


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


def _recorded(meta: Dict[str, Any]) -> Optional[str]:
    """The tracking URI the checkpoint's training run recorded to (in its config), if any."""
    return ((meta.get("config") or {}).get("mlflow") or {}).get("tracking_uri")


def _checkpoint_work_dir(meta: Dict[str, Any]) -> Optional[str]:
    return (meta.get("config") or {}).get("work_dir")


def evaluation_store(cfg: Dict[str, Any], meta: Dict[str, Any]) -> tuple:
    """(tracking URI, artifact root or None) for an evaluation: ``mlflow.tracking_uri`` of the evaluation's
    config, else ``MLFLOW_TRACKING_URI``, else the store recorded in the checkpoint's config (where its
    training run went), else the project store of the checkpoint's work dir (``default_store``)."""
    from rayseg.tracking import default_store, sqlite_path

    uri = (cfg.get("mlflow") or {}).get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI") or _recorded(meta)
    if not uri:
        return default_store(_checkpoint_work_dir(meta) or cfg.get("work_dir") or os.path.join("work_dirs", "eval"))
    path = sqlite_path(uri)
    # MLflow would otherwise put a new experiment's artifacts in ./mlruns of whatever folder we run in.
    artifact_root = "file://" + os.path.join(os.path.dirname(os.path.abspath(path)), "mlartifacts") if path else None
    return uri, artifact_root


def training_run_id(checkpoint: str, meta: Dict[str, Any]) -> str:
    """The MLflow run of the training job that wrote ``checkpoint`` (``--mlflow-run-id auto``): the
    ``run_state.json`` beside a ``latest.pth``/``best_*.pth``, else in the work dir its config names."""
    from rayseg.engine.resume import RUN_STATE_FILE, read_run_state

    folders = [os.path.dirname(os.path.abspath(checkpoint))]
    if _checkpoint_work_dir(meta):
        folders.append(_checkpoint_work_dir(meta))
    for folder in folders:
        run_id = read_run_state(folder).get("mlflow_run_id")
        if run_id:
            return run_id
    raise ConfigError(f"--mlflow-run-id {AUTO_RUN_ID}: no {RUN_STATE_FILE} with an MLflow run id in "
                      f"{' or '.join(dict.fromkeys(folders))}; pass the run id itself")


def open_evaluation_run(cfg: Dict[str, Any], meta: Dict[str, Any], run_id: Optional[str] = None,
                        tags: Optional[Dict[str, str]] = None):
    """An ``MlflowRun`` for the evaluation: the existing ``run_id`` (checked now, so a typo fails before
    the evaluation runs) or a new run tagged ``rayseg.kind=evaluation`` in ``mlflow.experiment_name``.

    Looking up an existing run never creates a store: a local SQLite file that does not exist is a
    ConfigError naming it.
    """
    from mlflow.tracking import MlflowClient

    from rayseg.tracking import MlflowRun, server_reachable, sqlite_path
    from rayseg.tracking_store import open_experiment

    uri, artifact_root = evaluation_store(cfg, meta)
    problem = server_reachable(uri)
    if problem:
        raise ConfigError(f"MLflow tracking server {uri} is unreachable ({problem})")
    if run_id:
        path = sqlite_path(uri)
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"MLflow run {run_id}: there is no MLflow store at {os.path.abspath(path)} (from "
                              f"{'the checkpoint' if uri == _recorded(meta) else 'mlflow.tracking_uri'}); pass "
                              "--cfg-options mlflow.tracking_uri=URI of the store that holds the run")
        client = MlflowClient(tracking_uri=uri)
        try:
            run = client.get_run(run_id)
        except Exception as exc:
            raise ConfigError(f"MLflow run {run_id} not found in {uri}: {exc}") from None
        return MlflowRun(uri, run_id, run.info.experiment_id)
    name = (cfg.get("mlflow") or {}).get("experiment_name") or "rayseg"
    client, exp_id = open_experiment(uri, name, f"{artifact_root}/{name}" if artifact_root else None)
    all_tags = {EVALUATION_TAG[0]: EVALUATION_TAG[1], **(tags or {})}
    run = client.create_run(exp_id, tags=all_tags, run_name=all_tags.get("mlflow.runName"))
    return MlflowRun(uri, run.info.run_id, exp_id)


def log_evaluation(run, results: Dict[str, Any], prefix: str, step: int, table: Optional[str] = None,
                   confusion_png: Optional[str] = None, finish: bool = False) -> List[str]:
    """Log ``<prefix>/…`` metrics at ``step`` and the evaluation's artifacts under ``evaluation/<prefix>/``
    (``table.txt``, ``per_class.csv``, ``metrics.json`` and ``confusion.png`` when given) in ``run``;
    returns the artifact paths. ``finish`` ends a run we created."""
    from rayseg.evaluation import metrics_to_json, per_class_csv

    run.log_metrics(flat_metrics(results, prefix), step=step)
    folder = f"{EVALUATION_ARTIFACTS}/{prefix}"
    texts = {"per_class.csv": per_class_csv(results, results["classes"]),
             "metrics.json": json.dumps(metrics_to_json(results, results["classes"]), indent=2)}
    if table is not None:
        texts["table.txt"] = table
    logged = []
    for name, text in texts.items():
        run.log_text(text, f"{folder}/{name}")
        logged.append(f"{folder}/{name}")
    if confusion_png:
        run.log_artifact_as(confusion_png, f"{folder}/confusion.png")
        logged.append(f"{folder}/confusion.png")
    if finish:
        run.finish("FINISHED")
    return logged
