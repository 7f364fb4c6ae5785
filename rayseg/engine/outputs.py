"""What a finished training job leaves behind: latest.pth, the validation tables, MLflow artifacts."""
from __future__ import annotations

import io
import json
import os
from typing import Any, Dict, Optional

import torch

from rayseg.engine.checkpoint import TRAIN_STATE_FILE, atomic_torch_save, load_weights_file, weights_file_payload
from rayseg.engine.evaluate import SUMMARY_KEYS


def write_best_weights(cfg: Dict[str, Any], work_dir: str, run_dir: str, train_set, run=None) -> Optional[str]:
    """``best_<metric>_iter_<N>.pth`` from the run's best checkpoint (``evaluation.save_best``), if any."""
    from rayseg.engine import storage
    from rayseg.engine.best import BEST_DIR_PREFIX, resolve_save_best

    key = resolve_save_best(cfg.get("evaluation"))
    folder = storage.join(run_dir, BEST_DIR_PREFIX + key) if key else None
    if folder is None or not storage.exists(storage.join(folder, TRAIN_STATE_FILE)):
        return None
    state = torch.load(io.BytesIO(storage.read_bytes(storage.join(folder, TRAIN_STATE_FILE))), map_location="cpu",
                       weights_only=True)
    iteration = int(state["meta"]["iter"])
    for old in os.listdir(work_dir):  # one best file, as MMSeg keeps it
        if old.startswith(f"best_{key}_iter_") and old.endswith(".pth"):
            os.remove(os.path.join(work_dir, old))
    path = os.path.join(work_dir, f"best_{key}_iter_{iteration}.pth")
    atomic_torch_save(weights_file_payload(state["state_dict"], cfg, iteration,
                                           classes=getattr(train_set, "CLASSES", None),
                                           palette=getattr(train_set, "PALETTE", None)), path)
    if run is not None:
        run.log_artifact(path, "weights")
        if state.get("best"):
            run.set_tag(f"best_{key}", f"{state['best']['score']:.4f} at iteration {iteration}")
    return path


def write_final_outputs(result, cfg: Dict[str, Any], work_dir: str, train_set, run=None,
                        run_dir: Optional[str] = None) -> Dict[str, Any]:
    """Write ``latest.pth`` from the final Ray checkpoint, the best weights, and the last validation's tables."""
    from rayseg.evaluation import format_tables, metrics_to_json, per_class_csv

    summary: Dict[str, Any] = {}
    classes = getattr(train_set, "CLASSES", None)
    if result.checkpoint is not None:
        with result.checkpoint.as_directory() as folder:
            state = load_weights_file(folder)
        latest = os.path.join(work_dir, "latest.pth")
        atomic_torch_save(weights_file_payload(state["state_dict"], cfg, state["meta"].get("iter", 0),
                                               classes=classes, palette=getattr(train_set, "PALETTE", None)),
                          latest)
        summary["latest"] = latest
        if run is not None:
            run.log_artifact(latest, "weights")
    if run_dir:
        best = write_best_weights(cfg, work_dir, run_dir, train_set, run)
        if best:
            summary["best"] = best
    final = dict(result.metrics or {})
    names = list(classes or [])
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
    return summary


def mlflow_summary(run) -> Optional[Dict[str, str]]:
    from rayseg.tracking import run_url, ui_command

    if run is None:
        return None
    return {"tracking_uri": run.tracking_uri, "run_id": run.run_id, "ui": ui_command(run.tracking_uri),
            "url": run_url(run.tracking_uri, run.experiment_id, run.run_id)}
