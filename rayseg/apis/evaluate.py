"""Single-process evaluation of a checkpoint on a dataset split (MMSeg's ``tools/test.py``)."""
from __future__ import annotations

from typing import Any, Dict

import torch
from tqdm import tqdm

from rayseg.engine.checkpoint import load_model_weights, load_weights_file
from rayseg.errors import ConfigError


def load_model(cfg: Dict[str, Any], checkpoint: str, device: str = "cpu"):
    """Build the config's model and load ``checkpoint`` (a ``.pth`` file or a Ray checkpoint folder)."""
    from rayseg.models import build_segmentor

    model = build_segmentor(cfg["model"])
    state = load_weights_file(checkpoint)
    # Evaluating with a classifier left at its initialisation would report meaningless numbers.
    load_model_weights(model, state["state_dict"], checkpoint, allow_num_classes_change=False)
    return model.to(device).eval()


@torch.no_grad()
def evaluate_checkpoint(cfg: Dict[str, Any], checkpoint: str, split: str = "test", device: str = "cpu",
                        progress: bool = True) -> Dict[str, Any]:
    """Evaluate ``checkpoint`` on ``data.<split>``; returns SegMetric results plus ``classes``."""
    from rayseg.datasets import build_dataset
    from rayseg.datasets.ray_data import DeviceNormalizer, _strip_normalize
    from rayseg.evaluation import SegMetric

    data = cfg["data"]
    if split not in data:
        raise ConfigError(f"data.{split} is not set in the config")
    dataset = build_dataset(data[split])
    normalizer = DeviceNormalizer.from_pipeline(data[split]["pipeline"], device=device)
    dataset = _strip_normalize(dataset)
    model = load_model(cfg, checkpoint, device)
    names = list(getattr(dataset, "CLASSES", None) or [])
    metric = SegMetric(model.num_classes, ignore_index=getattr(dataset, "ignore_index", 255),
                       class_names=names or None)
    for sample in tqdm(dataset.samples, desc=f"eval {split}", unit="img", disable=not progress):
        results = dataset.prepare_test(dict(sample))
        img = torch.from_numpy(results["img"]).unsqueeze(0).to(device)
        pred = model.predict(normalizer(img), ori_shape=tuple(results["ori_shape"][:2]))
        metric.update(pred[0].cpu(), torch.from_numpy(results["gt_semantic_seg"]))
    out = metric.compute()
    out["classes"] = names
    return out
