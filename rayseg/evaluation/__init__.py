"""Segmentation metrics (MMSeg semantics) and their text / JSON / CSV reports."""
from rayseg.evaluation.metrics import AREA_KEYS, SegMetric
from rayseg.evaluation.report import format_tables, metrics_to_json, per_class_csv

__all__ = ["AREA_KEYS", "SegMetric", "format_tables", "metrics_to_json", "per_class_csv"]
