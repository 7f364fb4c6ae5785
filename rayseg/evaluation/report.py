"""Turn ``SegMetric.compute()`` results into MMSeg-style text tables, JSON and CSV.

No table library is needed: the box tables are drawn here, in the layout MMSegmentation prints
(``per class results`` then ``Summary``).
"""
from __future__ import annotations

import csv
import io
import math
from typing import Any, Dict, List, Optional, Sequence

from rayseg.evaluation.metrics import PER_CLASS_KEYS, SUMMARY_KEYS


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


def format_tables(results: Dict[str, Any], class_names: Optional[Sequence[str]] = None) -> str:
    """Return the per-class ``Class | IoU | Acc`` table and the ``aAcc | mIoU | mAcc`` summary as text.

    Values are percentages with 2 decimals; undefined values print as ``nan``.
    """
    names = _names(results, class_names)
    rows = [[name, _fmt(iou), _fmt(acc)] for name, iou, acc in zip(names, results["IoU"], results["Acc"])]
    per_class = _box(["Class", "IoU", "Acc"], rows)
    summary = _box(["aAcc", "mIoU", "mAcc"], [[_fmt(results[k]) for k in ("aAcc", "mIoU", "mAcc")]])
    return f"per class results:\n{per_class}\nSummary:\n{summary}\n"


def _none_if_nan(value: Any) -> Optional[float]:
    return None if _is_nan(value) else float(value)


def metrics_to_json(results: Dict[str, Any], class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Return summary metrics plus ``per_class[name][metric]``, NaN replaced by None (valid JSON)."""
    names = _names(results, class_names)
    out: Dict[str, Any] = {k: _none_if_nan(results[k]) for k in SUMMARY_KEYS}
    out["per_class"] = {
        name: {k: _none_if_nan(results[k][idx]) for k in PER_CLASS_KEYS} for idx, name in enumerate(names)
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
