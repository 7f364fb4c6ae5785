"""What a finished training job leaves behind: latest.pth, the validation tables, MLflow artifacts."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

from rayseg.engine.checkpoint import atomic_torch_save, load_weights_file, weights_file_payload
from rayseg.engine.evaluate import SUMMARY_KEYS


def write_final_outputs(result, cfg: Dict[str, Any], work_dir: str, train_set, run=None) -> Dict[str, Any]:
    """Write ``latest.pth`` from the final Ray checkpoint and the last validation's tables."""
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
