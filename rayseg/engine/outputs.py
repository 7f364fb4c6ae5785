"""What a finished training job leaves behind: latest.pth, the validation tables, MLflow artifacts."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

from rayseg.engine.checkpoint import TRAIN_STATE_FILE, atomic_torch_save, load_weights_file, weights_file_payload
from rayseg.evaluation.metrics import SUMMARY_KEYS
from rayseg.evaluation.report import EVALUATION_ARTIFACTS, VAL_PREFIX
from rayseg.spec.sections import RunSpec

# The validation tables a finished run leaves in its work dir (MMSeg's names), by their MLflow artifact name.
WORK_DIR_TABLES = {"table.txt": "val_table.txt", "per_class.csv": "per_class.csv", "metrics.json": "val_metrics.json"}


def write_best_weights(spec: RunSpec, run_dir: str, train_set, run=None) -> Optional[str]:
    """``best_<metric>_iter_<N>.pth`` from the run's best checkpoint (``evaluation.save_best``), if any."""
    from rayseg.engine import storage
    from rayseg.engine.best import BEST_DIR_PREFIX
    from rayseg.engine.resume import read_train_state

    key = spec.evaluation.save_best
    folder = storage.join(run_dir, BEST_DIR_PREFIX + key) if key else None
    if folder is None or not storage.exists(storage.join(folder, TRAIN_STATE_FILE)):
        return None
    state = read_train_state(folder)
    iteration = int(state["meta"]["iter"])
    for old in os.listdir(spec.work_dir):  # one best file, as MMSeg keeps it
        if old.startswith(f"best_{key}_iter_") and old.endswith(".pth"):
            os.remove(os.path.join(spec.work_dir, old))
    path = os.path.join(spec.work_dir, f"best_{key}_iter_{iteration}.pth")
    atomic_torch_save(weights_file_payload(state["state_dict"], spec.config, iteration,
                                           classes=getattr(train_set, "CLASSES", None),
                                           palette=getattr(train_set, "PALETTE", None)), path)
    if run is not None:
        run.log_artifact(path, "weights")
        if state.get("best"):
            run.set_tag(f"best_{key}", f"{state['best']['score']:.4f} at iteration {iteration}")
    return path


def write_final_outputs(result, spec: RunSpec, train_set, run=None, run_dir: Optional[str] = None) -> Dict[str, Any]:
    """Write ``latest.pth`` from the final Ray checkpoint, the best weights, and the last validation's tables.

    ``result``: what ``TorchTrainer.fit`` returned (its ``checkpoint`` and last reported ``metrics``). The
    table shows the columns ``evaluation.metric`` selects; the CSV and JSON keep every metric.
    """
    from rayseg.evaluation import format_tables, metrics_to_json, per_class_csv

    summary: Dict[str, Any] = {}
    classes = getattr(train_set, "CLASSES", None)
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as folder:
            state = load_weights_file(folder)
        latest = os.path.join(spec.work_dir, "latest.pth")
        atomic_torch_save(weights_file_payload(state["state_dict"], spec.config, state["meta"].get("iter", 0),
                                               classes=classes, palette=getattr(train_set, "PALETTE", None)),
                          latest)
        summary["latest"] = latest
        if run is not None:
            run.log_artifact(latest, "weights")
    if run_dir:
        best = write_best_weights(spec, run_dir, train_set, run)
        if best:
            summary["best"] = best
    final = dict(result.metrics or {})
    names = list(classes or [])
    if "per_class" in final and "mIoU" in final:
        results = {k: final[k] for k in SUMMARY_KEYS}
        results.update(final["per_class"])
        table = format_tables(results, names, metrics=spec.evaluation.metrics)
        summary["table"] = table
        summary["metrics"] = metrics_to_json(results, names)
        texts = {"table.txt": table, "per_class.csv": per_class_csv(results, names),
                 "metrics.json": json.dumps(summary["metrics"], indent=2)}
        for artifact, text in texts.items():
            # MMSeg's file names in the work dir; in MLflow the names jobs/test.py also uses, under
            # evaluation/val/ (its --split val overwrites them with the same numbers and adds confusion.png).
            with open(os.path.join(spec.work_dir, WORK_DIR_TABLES[artifact]), "w") as f:
                f.write(text)
            if run is not None:
                run.log_text(text, f"{EVALUATION_ARTIFACTS}/{VAL_PREFIX}/{artifact}")
    return summary


def mlflow_summary(run) -> Optional[Dict[str, str]]:
    """Where to find the run: its store, id, the command that opens the UI, the run's and its experiment's
    URLs (model-training view) and the store line to print (None without a run)."""
    from rayseg.tracking import describe_store, experiment_url, run_url, ui_command

    if run is None:
        return None
    return {"tracking_uri": run.tracking_uri, "run_id": run.run_id, "ui": ui_command(run.tracking_uri),
            "url": run_url(run.tracking_uri, run.experiment_id, run.run_id),
            "experiment_url": experiment_url(run.tracking_uri, run.experiment_id),
            "store": describe_store(run.tracking_uri)}
