"""Validation inside the training workers: per-class areas over a shard, summed across workers.

Prediction goes through :class:`rayseg.inference.Predictor`, the same path ``jobs/test.py`` and
``jobs/predict.py`` take, so a validation score and a test score of the same weights agree.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from rayseg.evaluation import SegMetric, scalar_metrics
from rayseg.evaluation.metrics import PER_CLASS_KEYS, SUMMARY_KEYS
from rayseg.inference import Predictor
from rayseg.utils.distributed import is_distributed

__all__ = ["PER_CLASS_KEYS", "SUMMARY_KEYS", "all_reduce_metric", "evaluate_shard", "flatten_eval_metrics"]


def all_reduce_metric(metric: SegMetric) -> SegMetric:
    """Sum the per-class areas (and confusion matrix) of every worker into a new metric.

    A no-op without a process group. The arrays have different shapes ((n,) vectors, (n, n) matrix),
    so they are flattened into one int64 buffer: a single all-reduce instead of one per key.
    """
    if not is_distributed():
        return metric
    areas = metric.areas
    keys = sorted(areas)  # the same order on every rank
    arrays = [np.asarray(areas[k], dtype=np.int64) for k in keys]
    flat = torch.from_numpy(np.concatenate([a.ravel() for a in arrays]))
    dist.all_reduce(flat)
    reduced = SegMetric(metric.num_classes, ignore_index=metric.ignore_index, class_names=metric.class_names)
    summed, start = {}, 0
    for key, array in zip(keys, arrays):
        summed[key] = flat[start:start + array.size].numpy().reshape(array.shape)
        start += array.size
    reduced.add_areas(summed)
    return reduced


@torch.no_grad()
def evaluate_shard(model, shard, normalizer, num_classes: int, device, ignore_index: int = 255,
                   class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Predict every row of a Ray Data shard (one image per batch) and return dataset-level metrics.

    Rows are ``build_eval_stream``'s: the uint8 test-pipeline ``img``, the original-size
    ``gt_semantic_seg`` and ``ori_shape``. ``model`` must be in eval mode (the caller switches it).
    """
    predictor = Predictor(model, normalizer)
    metric = SegMetric(num_classes, ignore_index=ignore_index, class_names=class_names)
    for batch in shard.iter_torch_batches(batch_size=1, device=device):
        ori_shape = tuple(int(x) for x in batch["ori_shape"][0].tolist())
        pred = predictor.predict_batch(batch["img"], ori_shape)
        metric.update(pred.cpu(), batch["gt_semantic_seg"].cpu())
    return all_reduce_metric(metric).compute()


def flatten_eval_metrics(results: Dict[str, Any], class_names: Optional[Sequence[str]]) -> Dict[str, float]:
    """Summary metrics plus ``IoU.<class>`` / ``Acc.<class>`` scalars (NaN kept as NaN)."""
    return scalar_metrics(results, class_names)
