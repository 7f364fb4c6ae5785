"""Validation inside the training workers: per-class areas over a shard, summed across workers."""
from __future__ import annotations

import re
from typing import Any, Dict, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from rayseg.evaluation import SegMetric

SUMMARY_KEYS = ("aAcc", "mIoU", "mAcc", "mDice", "mFscore", "mPrecision", "mRecall")
PER_CLASS_KEYS = ("IoU", "Acc", "Dice", "Fscore", "Precision", "Recall")


def all_reduce_metric(metric: SegMetric) -> SegMetric:
    """Sum the per-class areas (and confusion matrix) of every worker into a new metric.

    A no-op without a process group. The arrays have different shapes ((n,) vectors, (n, n) matrix),
    so they are flattened into one int64 buffer: a single all-reduce instead of one per key.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
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
    """Predict every row of a Ray Data shard (one image per batch) and return dataset-level metrics."""
    metric = SegMetric(num_classes, ignore_index=ignore_index, class_names=class_names)
    for batch in shard.iter_torch_batches(batch_size=1, device=device):
        img = normalizer(batch["img"])
        ori_shape = tuple(int(x) for x in batch["ori_shape"][0].tolist())
        pred = model.predict(img, ori_shape=ori_shape)
        metric.update(pred.cpu(), batch["gt_semantic_seg"].cpu())
    return all_reduce_metric(metric).compute()


def metric_key(name: str) -> str:
    """An MLflow-safe metric name for a class (letters, digits, _ - . / and space only)."""
    return re.sub(r"[^0-9A-Za-z_\-./ ]", "_", str(name))


def flatten_eval_metrics(results: Dict[str, Any], class_names: Optional[Sequence[str]]) -> Dict[str, float]:
    """Summary metrics plus ``IoU.<class>`` / ``Acc.<class>`` scalars (NaN kept as NaN)."""
    flat = {k: float(results[k]) for k in SUMMARY_KEYS if k in results}
    names = class_names or [str(i) for i in range(len(results["IoU"]))]
    for stat in ("IoU", "Acc"):
        for name, value in zip(names, results[stat]):
            flat[f"{stat}.{metric_key(name)}"] = float(value)
    return flat
