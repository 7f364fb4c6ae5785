"""Dataset-level segmentation metrics, computed the MMSegmentation way.

Per-class intersection I, union U, prediction area P and label area L are accumulated over the whole
dataset (never averaged per image); pixels whose label is the ignore index are left out. ``compute``
then derives aAcc, IoU, Acc, Dice, Precision, Recall and F-score, reported in percent.

A confusion matrix (rows = ground truth, columns = prediction) is counted with the same single
bincount, and I, P and L are read off it (diagonal, column sums, row sums).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

try:  # torch is optional here: numpy inputs work without it.
    import torch
except ImportError:  # pragma: no cover - torch is a project dependency
    torch = None

AREA_KEYS = ("area_intersect", "area_union", "area_pred_label", "area_label")
CONFUSION_KEY = "confusion"
NORMALIZE_MODES = ("true", "pred", "all")
PER_CLASS_KEYS = ("IoU", "Acc", "Dice", "Fscore", "Precision", "Recall")
SUMMARY_KEYS = ("aAcc", "mIoU", "mAcc", "mDice", "mFscore", "mPrecision", "mRecall")


def _is_tensor(x: Any) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def _nanmean(x: np.ndarray) -> float:
    """Mean over the non-NaN entries; NaN (without a RuntimeWarning) when there are none."""
    kept = x[~np.isnan(x)]
    return float(kept.mean()) if kept.size else float("nan")


def _areas_from_confusion(confusion: np.ndarray) -> Dict[str, np.ndarray]:
    """I (diagonal), P (column sums), L (row sums), U = P + L − I and the matrix itself, all int64."""
    confusion = confusion.astype(np.int64, copy=False)
    inter = np.diagonal(confusion).copy()
    area_p = confusion.sum(axis=0)
    area_l = confusion.sum(axis=1)
    return {"area_intersect": inter, "area_union": area_p + area_l - inter,
            "area_pred_label": area_p, "area_label": area_l, CONFUSION_KEY: confusion}


class SegMetric:
    """Accumulates I, U, P, L per class and a confusion matrix over many ``update`` calls.

    ``areas`` / ``add_areas`` / ``from_areas`` expose the four int64 vectors and the (n, n) int64
    ``"confusion"`` matrix so that distributed code can all-reduce them (sum) and build the
    dataset-level result on one rank.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255, class_names: Optional[Sequence[str]] = None):
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = int(ignore_index)
        self.class_names = list(class_names) if class_names is not None else [str(i) for i in range(num_classes)]
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        self._areas = {k: np.zeros(self.num_classes, dtype=np.int64) for k in AREA_KEYS}
        self._areas[CONFUSION_KEY] = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def update(self, pred: Any, label: Any) -> None:
        """Add one image (H, W) or a batch (N, H, W) of predicted and ground-truth class indices.

        Accepts numpy arrays or torch tensors (on any device; counting happens there and only the
        small (n, n) confusion matrix is copied back). Raises ValueError on mismatched shapes,
        non-integer inputs, or class indices outside [0, num_classes) that are not the ignore index.
        """
        if _is_tensor(pred) or _is_tensor(label):
            areas = self._count_torch(pred, label)
        else:
            areas = self._count_numpy(np.asarray(pred), np.asarray(label))
        self.add_areas(areas)

    def _check(self, pred_shape, label_shape, pred_int: bool, label_int: bool) -> None:
        if tuple(pred_shape) != tuple(label_shape):
            raise ValueError(f"pred shape {tuple(pred_shape)} != label shape {tuple(label_shape)}")
        if len(pred_shape) not in (2, 3):
            raise ValueError(f"expected (H, W) or (N, H, W) class maps, got shape {tuple(pred_shape)}")
        if not (pred_int and label_int):
            # Float input is usually logits passed by mistake: argmax over the class axis first.
            raise ValueError("pred and label must hold integer class indices (argmax the logits first)")

    def _check_range(self, name: str, lo: int, hi: int) -> None:
        if lo < 0 or hi >= self.num_classes:
            extra = f" (ignore_index is {self.ignore_index})" if name == "label" else ""
            raise ValueError(f"{name} values must lie in [0, {self.num_classes}){extra}; found range [{lo}, {hi}]")

    def _count_numpy(self, pred: np.ndarray, label: np.ndarray) -> Dict[str, np.ndarray]:
        self._check(pred.shape, label.shape,
                    np.issubdtype(pred.dtype, np.integer), np.issubdtype(label.dtype, np.integer))
        keep = label != self.ignore_index
        p = pred[keep].astype(np.int64, copy=False)
        lab = label[keep].astype(np.int64, copy=False)
        if p.size:
            self._check_range("pred", int(p.min()), int(p.max()))
            self._check_range("label", int(lab.min()), int(lab.max()))
        n = self.num_classes
        # One bincount over (label, pred) pairs gives the confusion matrix; I, P, L follow from it.
        confusion = np.bincount(lab * n + p, minlength=n * n).reshape(n, n)
        return _areas_from_confusion(confusion)

    def _count_torch(self, pred: Any, label: Any) -> Dict[str, np.ndarray]:
        device = pred.device if _is_tensor(pred) else label.device
        pred = torch.as_tensor(pred, device=device)
        label = torch.as_tensor(label, device=device)
        self._check(pred.shape, label.shape,
                    not pred.is_floating_point() and not pred.is_complex() and pred.dtype != torch.bool,
                    not label.is_floating_point() and not label.is_complex() and label.dtype != torch.bool)
        keep = label != self.ignore_index
        p = pred[keep].long()
        lab = label[keep].long()
        if p.numel():
            # One device→host copy for the four bounds instead of four syncs.
            p_lo, p_hi, l_lo, l_hi = torch.stack([p.min(), p.max(), lab.min(), lab.max()]).tolist()
            self._check_range("pred", p_lo, p_hi)
            self._check_range("label", l_lo, l_hi)
        n = self.num_classes
        confusion = torch.bincount(lab * n + p, minlength=n * n).view(n, n)
        return _areas_from_confusion(confusion.cpu().numpy())

    @property
    def areas(self) -> Dict[str, np.ndarray]:
        """Copies of the accumulated int64 arrays: the four (n,) vectors keyed by ``AREA_KEYS`` and
        the (n, n) confusion matrix under ``"confusion"``."""
        return {k: v.copy() for k, v in self._areas.items()}

    def add_areas(self, areas: Mapping[str, Any]) -> "SegMetric":
        """Add area arrays (numpy, list or tensor) keyed by ``AREA_KEYS`` and optionally ``"confusion"``.

        Dicts without ``"confusion"`` (from older callers) update only the four vectors. Returns self.
        """
        n = self.num_classes
        expected = {key: (n,) for key in AREA_KEYS}
        if CONFUSION_KEY in areas:
            expected[CONFUSION_KEY] = (n, n)
        converted = {}
        for key, shape in expected.items():
            if key not in areas:
                raise ValueError(f"areas is missing {key!r}; expected keys {AREA_KEYS}")
            value = areas[key]
            if _is_tensor(value):
                value = value.detach().cpu().numpy()
            vec = np.asarray(value).astype(np.int64)
            if vec.shape != shape:
                raise ValueError(f"{key} has shape {vec.shape}, expected {shape}")
            converted[key] = vec
        for key, vec in converted.items():  # add only after all checks pass: no half-applied update
            self._areas[key] += vec
        return self

    @classmethod
    def from_areas(cls, areas: Mapping[str, Any], ignore_index: int = 255,
                   class_names: Optional[Sequence[str]] = None) -> "SegMetric":
        """Build a metric holding ``areas`` (e.g. after an all-reduce); num_classes is their length."""
        num_classes = int(np.asarray(areas["area_intersect"]).shape[0])
        return cls(num_classes, ignore_index, class_names).add_areas(areas)

    def merge(self, other: "SegMetric") -> "SegMetric":
        """Add another SegMetric's accumulated areas into this one; returns self."""
        if not isinstance(other, SegMetric):
            raise TypeError(f"can only merge a SegMetric, got {type(other).__name__}")
        if other.num_classes != self.num_classes:
            raise ValueError(f"cannot merge metrics with {other.num_classes} and {self.num_classes} classes")
        return self.add_areas(other._areas)

    def confusion_matrix(self, normalize: Optional[str] = "true") -> np.ndarray:
        """The (n, n) confusion matrix: rows are ground-truth classes, columns predicted classes.

        ``normalize="true"`` divides each row by its sum (the per-class recall spread over the
        predictions), ``"pred"`` each column, ``"all"`` the whole matrix; rows/columns without pixels
        stay 0. ``None`` returns the raw int64 pixel counts.
        """
        counts = self._areas[CONFUSION_KEY].copy()
        if normalize is None:
            return counts
        if normalize not in NORMALIZE_MODES:
            raise ValueError(f"normalize must be one of {NORMALIZE_MODES} or None, got {normalize!r}")
        counts = counts.astype(np.float64)
        if normalize == "true":
            total = counts.sum(axis=1, keepdims=True)
        elif normalize == "pred":
            total = counts.sum(axis=0, keepdims=True)
        else:
            total = np.full((1, 1), counts.sum())
        # Empty rows/columns would be 0/0: divide only where there is something to divide.
        return np.divide(counts, total, out=np.zeros_like(counts), where=total > 0)

    def compute(self) -> Dict[str, Any]:
        """Dataset-level metrics in percent.

        Returns ``aAcc`` and the NaN-aware means ``mIoU, mAcc, mDice, mFscore, mPrecision, mRecall``
        as floats, per-class lists ``IoU, Acc, Dice, Fscore, Precision, Recall`` (NaN where a ratio
        is 0/0, e.g. a class absent from both prediction and label), and ``classes``.
        """
        i, u, p, lab = (self._areas[k].astype(np.float64) for k in AREA_KEYS)
        # 0/0 is the documented "undefined" case and becomes NaN; silence numpy's warning about it.
        with np.errstate(divide="ignore", invalid="ignore"):
            total_label = lab.sum()
            a_acc = i.sum() / total_label if total_label else float("nan")
            per_class = {
                "IoU": i / u,
                "Acc": i / lab,
                "Dice": 2 * i / (p + lab),
                "Precision": i / p,
                "Recall": i / lab,
            }
            prec, rec = per_class["Precision"], per_class["Recall"]
            per_class["Fscore"] = 2 * prec * rec / (prec + rec)
        result: Dict[str, Any] = {"aAcc": float(a_acc) * 100}
        for key in PER_CLASS_KEYS:
            result["m" + key] = _nanmean(per_class[key]) * 100
        for key in PER_CLASS_KEYS:
            result[key] = [float(v) * 100 for v in per_class[key]]
        result["classes"] = list(self.class_names)
        return result

    def __repr__(self) -> str:
        return f"SegMetric(num_classes={self.num_classes}, ignore_index={self.ignore_index})"
