"""Segmentation metrics (MMSeg semantics) and their text / JSON / CSV reports."""
from rayseg.evaluation.metrics import AREA_KEYS, PER_CLASS_KEYS, SUMMARY_KEYS, SegMetric
from rayseg.evaluation.report import format_tables, metric_key, metrics_to_json, per_class_csv, scalar_metrics

__all__ = ["AREA_KEYS", "PER_CLASS_KEYS", "SUMMARY_KEYS", "SegMetric", "format_tables", "metric_key",
           "metrics_to_json", "per_class_csv", "scalar_metrics"]
