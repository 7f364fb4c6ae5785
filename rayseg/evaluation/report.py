"""Turn ``SegMetric.compute()`` results into MMSeg-style text tables, JSON and CSV.

No table library is needed: the box tables are drawn here, in the layout MMSegmentation prints
(``per class results`` then ``Summary``).
"""
from __future__ import annotations

import csv
import io
import math
import re
from typing import Any, Dict, List, Optional, Sequence, Union

from rayseg.evaluation.metrics import PER_CLASS_KEYS, SUMMARY_KEYS

# The metric groups MMSeg's ``--eval`` accepts, and the per-class columns each one shows.
ALLOWED_METRICS = ("mIoU", "mDice", "mFscore")
_METRIC_COLUMNS = {"mIoU": ("IoU", "Acc"), "mDice": ("Dice", "Acc"), "mFscore": ("Fscore", "Precision", "Recall")}

Metrics = Union[str, Sequence[str]]


def per_class_columns(metrics: Metrics) -> List[str]:
    """The per-class columns shown for a metric selection, in the fixed order of ``PER_CLASS_KEYS``.

    ``metrics`` is one name or a list of names from ``ALLOWED_METRICS`` (``"mIoU"`` → IoU, Acc;
    ``"mDice"`` → Dice, Acc; ``"mFscore"`` → Fscore, Precision, Recall). Unknown or no names are a
    ValueError naming the value and the allowed ones.
    """
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    if not names:
        raise ValueError(f"no metrics selected; choose from {list(ALLOWED_METRICS)}")
    unknown = [m for m in names if m not in ALLOWED_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; allowed: {list(ALLOWED_METRICS)}")
    wanted = {col for m in names for col in _METRIC_COLUMNS[m]}
    return [col for col in PER_CLASS_KEYS if col in wanted]


def summary_columns(metrics: Metrics) -> List[str]:
    """Summary keys for a metric selection: ``aAcc`` then ``m<column>`` per shown column."""
    return ["aAcc", *("m" + col for col in per_class_columns(metrics))]


def _names(results: Dict[str, Any], class_names: Optional[Sequence[str]]) -> List[str]:
    """Class names from the argument, else from ``results['classes']``, else indices."""
    if class_names is None:
        class_names = results.get("classes")
    n = len(results["IoU"])
    if class_names is None:
        return [str(i) for i in range(n)]
    if len(class_names) != n:
        raise ValueError(f"{len(class_names)} class names for {n} classes")
    return [str(c) for c in class_names]


def _is_nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any) -> str:
    return "nan" if _is_nan(value) else f"{float(value):.2f}"


def _box(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Draw a ``+---+`` box table with centred cells, like prettytable's default style."""
    widths = [max(len(str(r[c])) for r in [header, *rows]) + 2 for c in range(len(header))]
    rule = "+" + "+".join("-" * w for w in widths) + "+"

    def line(cells: Sequence[str]) -> str:
        return "|" + "|".join(str(c).center(w) for c, w in zip(cells, widths)) + "|"

    return "\n".join([rule, line(header), rule, *(line(r) for r in rows), rule])


def format_tables(results: Dict[str, Any], class_names: Optional[Sequence[str]] = None,
                  metrics: Metrics = ("mIoU",)) -> str:
    """Return the per-class table and the summary table as text, in MMSeg's layout.

    ``metrics`` selects the columns as MMSeg's ``--eval`` does (see ``per_class_columns``); the
    default gives ``Class | IoU | Acc`` and ``aAcc | mIoU | mAcc``. Values are percentages with 2
    decimals; undefined values print as ``nan``.
    """
    columns = per_class_columns(metrics)
    names = _names(results, class_names)
    rows = [[name, *(_fmt(results[col][idx]) for col in columns)] for idx, name in enumerate(names)]
    per_class = _box(["Class", *columns], rows)
    keys = summary_columns(metrics)
    summary = _box(keys, [[_fmt(results[k]) for k in keys]])
    return f"per class results:\n{per_class}\nSummary:\n{summary}\n"


def _none_if_nan(value: Any) -> Optional[float]:
    return None if _is_nan(value) else float(value)


def metrics_to_json(results: Dict[str, Any], class_names: Optional[Sequence[str]] = None,
                    metrics: Optional[Metrics] = None) -> Dict[str, Any]:
    """Return summary metrics plus ``per_class[name][metric]``, NaN replaced by None (valid JSON).

    ``metrics=None`` keeps everything (all of ``SUMMARY_KEYS`` and ``PER_CLASS_KEYS``); a selection
    (see ``per_class_columns``) keeps ``aAcc``, the shown columns and their means.
    """
    names = _names(results, class_names)
    summary_keys = list(SUMMARY_KEYS) if metrics is None else summary_columns(metrics)
    columns = list(PER_CLASS_KEYS) if metrics is None else per_class_columns(metrics)
    out: Dict[str, Any] = {k: _none_if_nan(results[k]) for k in summary_keys}
    out["per_class"] = {
        name: {k: _none_if_nan(results[k][idx]) for k in columns} for idx, name in enumerate(names)
    }
    return out


def per_class_csv(results: Dict[str, Any], class_names: Optional[Sequence[str]] = None) -> str:
    """Return a CSV (``class,IoU,Acc,Dice,Fscore,Precision,Recall``), 4 decimals, ``nan`` if undefined."""
    names = _names(results, class_names)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["class", *PER_CLASS_KEYS])
    for idx, name in enumerate(names):
        writer.writerow([name, *("nan" if _is_nan(results[k][idx]) else f"{float(results[k][idx]):.4f}"
                                 for k in PER_CLASS_KEYS)])
    return buf.getvalue()


def metric_key(name: Any) -> str:
    """A class name made safe for an MLflow metric name (letters, digits, ``_ - . /`` and space only)."""
    return re.sub(r"[^0-9A-Za-z_\-./ ]", "_", str(name))


def scalar_metrics(results: Dict[str, Any], class_names: Optional[Sequence[str]] = None,
                   per_class: Sequence[str] = ("IoU", "Acc"), prefix: str = "") -> Dict[str, float]:
    """Flat scalars for a tracker: the summary metrics plus ``<stat>.<class>`` for each of ``per_class``
    (class names through :func:`metric_key`; NaN kept as NaN), each under ``<prefix>/`` when given.

    Class names come from ``class_names``, else ``results['classes']``, else indices.
    """
    head = f"{prefix}/" if prefix else ""
    flat = {f"{head}{k}": float(results[k]) for k in SUMMARY_KEYS if k in results}
    names = class_names or results.get("classes") or [str(i) for i in range(len(results[per_class[0]]))]
    for stat in per_class:
        for name, value in zip(names, results[stat]):
            flat[f"{head}{stat}.{metric_key(name)}"] = float(value)
    return flat


# ---------------------------------------------------------------- tracked metric names
# One naming scheme for MLflow, shared by training and jobs/test.py (docs/mlflow.md):
#   train/<key>          what the training loop reports: lr, time, loss, decode.loss_ce, decode.acc_seg, ...
#   <split>/<metric>     an evaluation of a data split: val/mIoU, val/IoU.<class>, test/aAcc, ...
#   <split>_aug/<metric> the same with test-time augmentation (jobs/test.py --aug-test): val_aug/mIoU
# Validation during training is an evaluation of the val split, so it and `jobs/test.py --split val` log
# the same names, at the checkpoint's iteration.
TRAIN_PREFIX = "train"
VAL_PREFIX = "val"
# Artifacts of an evaluation: evaluation/<prefix>/{table.txt, per_class.csv, metrics.json, confusion.png},
# written by training (its final validation) and by jobs/test.py alike.
EVALUATION_ARTIFACTS = "evaluation"


def eval_prefix(split: str, aug_test: bool = False) -> str:
    """The metric prefix (and ``evaluation/<prefix>/`` artifact folder) of an evaluation of ``split``."""
    return f"{split}_aug" if aug_test else str(split)


def is_eval_metric(key: str) -> bool:
    """True for keys that are evaluation results: the summary metrics, ``<stat>.<class>`` per-class values
    and ``best_<metric>`` (the best validation score so far)."""
    if key in SUMMARY_KEYS or key.startswith("best_"):
        return True
    stat, dot, _ = key.partition(".")
    return bool(dot) and stat in PER_CLASS_KEYS


def tracked_name(key: str, prefix: str = VAL_PREFIX) -> str:
    """The MLflow name of one key of a training report: ``<prefix>/<key>`` for evaluation results,
    ``train/<key>`` for everything else (``lr`` → ``train/lr``, ``mIoU`` → ``val/mIoU``)."""
    return f"{prefix if is_eval_metric(key) else TRAIN_PREFIX}/{key}"
