#!/usr/bin/env python
"""Print MMSegmentation 1.x's own numbers for the semantics rayseg copies literally into its tests.

Run it in the throwaway MMSeg venv described in ``tools/README.md`` (never in CI, never in the project venv)::

    /tmp/mmseg-venv/bin/python tools/mmseg_semantics_reference.py

It prints, as JSON:

- ``label_map``: ``LoadAnnotations`` on the raw mask ``[0, 1, 2, 3]`` of a dataset whose CLASSES are
  ``(a, b, c)``, built with ``classes=(b, c)`` and ``reduce_zero_label=True`` (MMSeg reduces first, then
  applies the class-subset ``label_map``); checked by ``tests/datasets/test_custom_dataset.py``.
- ``cross_entropy``: ``CrossEntropyLoss`` on fixed logits with and without ``class_weight`` and
  ``avg_non_ignore``; with class weights and an ignored pixel MMSeg raises (recorded as the error);
  checked by ``tests/models/test_cross_entropy_loss.py``.
- ``focal``: ``FocalLoss`` with a one-hot (and a label-smoothed) ``(N, C, H, W)`` float target;
  checked by ``tests/models/test_losses.py``.

The inputs are literals (``LOGITS``, ``LABELS``…) that the tests repeat, so no RNG is involved.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_mmseg_reference import import_mmseg  # noqa: E402  (stubs mmcv.ops, relaxes the version check)

LOGITS = [[[[1.2, -0.3, 0.8], [0.1, 2.0, -1.1]],
           [[-0.5, 0.9, 0.3], [1.4, -0.2, 0.6]],
           [[0.7, 0.2, -1.3], [-0.4, 0.5, 1.9]]]]  # (1, 3, 2, 3)
LABELS = [[[0, 1, 2], [2, 1, 0]]]  # (1, 2, 3), no ignored pixel
LABELS_IGNORED = [[[0, 255, 2], [2, 1, 255]]]  # two ignored pixels
CLASS_WEIGHT = [0.5, 1.0, 2.0]
FOCAL_ALPHA = [0.25, 0.5, 0.75]


def label_map_reference() -> dict:
    """MMSeg 1.x: LoadAnnotations(reduce_zero_label) then the classes-subset label_map."""
    from mmseg.datasets import BaseSegDataset
    from mmseg.datasets.transforms import LoadAnnotations

    class ABC(BaseSegDataset):
        METAINFO = dict(classes=("a", "b", "c"), palette=[[1, 1, 1], [2, 2, 2], [3, 3, 3]])

    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "img"))
        ds = ABC(data_root=tmp, data_prefix=dict(img_path="img"), metainfo=dict(classes=("b", "c")),
                 reduce_zero_label=True, lazy_init=True, pipeline=[])
        path = os.path.join(tmp, "mask.png")
        Image.fromarray(np.array([[0, 1, 2, 3]], np.uint8)).save(path)
        out = LoadAnnotations()(dict(seg_map_path=path, label_map=ds.metainfo["label_map"],
                                     reduce_zero_label=ds.metainfo["reduce_zero_label"], seg_fields=[]))
    return {"dataset_label_map": {str(k): v for k, v in ds.metainfo["label_map"].items()},
            "raw": [0, 1, 2, 3], "gt_seg_map": out["gt_seg_map"].reshape(-1).tolist()}


def cross_entropy_reference() -> dict:
    from mmseg.models.losses import CrossEntropyLoss

    logits = torch.tensor(LOGITS)
    result = {}
    for weighted in (False, True):
        for avg_non_ignore in (False, True):
            for name, labels in (("labels", LABELS), ("labels_ignored", LABELS_IGNORED)):
                loss = CrossEntropyLoss(class_weight=CLASS_WEIGHT if weighted else None,
                                        avg_non_ignore=avg_non_ignore)
                key = f"class_weight={weighted},avg_non_ignore={avg_non_ignore},{name}"
                try:
                    result[key] = loss(logits, torch.tensor(labels), ignore_index=255).item()
                except Exception as exc:  # MMSeg 1.2.2 indexes class_weight with the ignore label
                    result[key] = f"{type(exc).__name__}: {exc}"
    # Not MMSeg 1.x: MMSeg 0.x's rule (weighted terms over the pixel count), for the comparison only.
    terms = F.cross_entropy(logits, torch.tensor(LABELS), weight=torch.tensor(CLASS_WEIGHT), reduction="none")
    result["mmseg_0x_rule,class_weight=True,labels (torch, not MMSeg)"] = (terms.sum() / terms.numel()).item()
    return result


def focal_reference() -> dict:
    from mmseg.models.losses import FocalLoss

    logits = torch.tensor(LOGITS)
    one_hot = F.one_hot(torch.tensor(LABELS), 3).permute(0, 3, 1, 2).float()
    smoothed = one_hot * 0.9 + 0.1 / 3
    result = {}
    for name, target in (("one_hot", one_hot), ("smoothed", smoothed)):
        result[f"{name},default"] = FocalLoss()(logits, target).item()
        loss = FocalLoss(gamma=1.5, alpha=FOCAL_ALPHA, class_weight=CLASS_WEIGHT, loss_weight=2.0)
        result[f"{name},gamma=1.5,alpha={FOCAL_ALPHA},class_weight={CLASS_WEIGHT},loss_weight=2"] = \
            loss(logits, target).item()
        none = FocalLoss(reduction="none")(logits, target)
        result[f"{name},reduction=none,shape"] = list(none.shape)
        result[f"{name},reduction=none,per_class_sum"] = none.sum(dim=(0, 2, 3)).tolist()
    return result


def main() -> None:
    import_mmseg()
    import mmseg

    print(json.dumps({"mmseg_version": mmseg.__version__, "torch_version": torch.__version__,
                      "label_map": label_map_reference(), "cross_entropy": cross_entropy_reference(),
                      "focal": focal_reference()}, indent=2))


if __name__ == "__main__":
    main()
