"""Distributed evaluation (MMSeg's ``tools/test.py`` on Ray): a split streamed to inference actors.

Ray Data streams the split's manifest (image and label paths) to an actor pool of model replicas. Each
replica reads and decodes its rows, runs the dataset's test pipeline (``prepare_test``, so also
``MultiScaleFlipAug`` variants for test-time augmentation), predicts, and emits the per-class areas and
confusion matrix of each batch. The driver adds them up as they arrive: memory stays flat in the number
of images, and because the areas are integers the result equals a single-process evaluation exactly.
"""
from __future__ import annotations

import copy
import os
from typing import Any, Callable, Dict, Optional, Union

import cv2
import numpy as np
from tqdm import tqdm

from rayseg.apis.actor_pool import map_rows
from rayseg.custom_imports import import_custom_modules
from rayseg.errors import ConfigError, DataError
from rayseg.evaluation import AREA_KEYS, SegMetric
from rayseg.evaluation.metrics import CONFUSION_KEY
from rayseg.inference import Predictor, inference_device, load_inference_model, weights_source
from rayseg.utils.ray_session import USER_ERRORS, connect_ray

_OUT_KEYS = (*AREA_KEYS, CONFUSION_KEY)
# Rows per Ray Data block: small enough that the progress bar moves smoothly and the blocks spread
# evenly over the actors, large enough that per-block scheduling stays negligible.
_MAX_BLOCK_ROWS = 16


def show_name(img_path: str, img_dir: Optional[str]) -> str:
    """``--show-dir`` file name of an image: its path below the dataset's img_dir, as ``.jpg``."""
    rel = os.path.relpath(img_path, img_dir) if img_dir else os.path.basename(img_path)
    if rel.startswith(".."):  # not below img_dir (e.g. a split file pointing elsewhere)
        rel = os.path.basename(img_path)
    return os.path.splitext(rel)[0] + ".jpg"


class EvalReplica:
    """One model replica (a Ray Data actor, or called in-process): rows of paths in, areas out.

    ``state`` is the loaded checkpoint or its ObjectRef. Errors a user can fix (an unreadable image, a
    bad label value) come back in an ``error`` column instead of being raised, so the driver can stop
    the whole job with that message rather than a Ray traceback.
    """

    def __init__(self, cfg: Dict[str, Any], dataset: Any, state: Any, source: str, use_gpu: bool = False,
                 show_dir: Optional[str] = None, opacity: float = 0.5):
        import_custom_modules(cfg)  # custom_imports, in this actor too (rayseg.custom_imports)
        model = load_inference_model(cfg, state, inference_device(use_gpu), source)
        # pipeline_cfg still holds Normalize (only the built pipeline had it stripped).
        self.predictor = Predictor.for_pipeline(model, dataset.pipeline_cfg)
        self.dataset = dataset
        self.num_classes = int(model.num_classes)
        self.ignore_index = int(getattr(dataset, "ignore_index", 255))
        self.show_dir, self.opacity = show_dir, float(opacity)

    def _output(self, metric: SegMetric, num_images: int, error: str = "") -> Dict[str, np.ndarray]:
        areas = metric.areas
        return {"num_images": np.array([num_images]), "error": np.array([error], dtype=object),
                **{k: areas[k][None] for k in _OUT_KEYS}}

    def __call__(self, batch: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        from rayseg.datasets.ray_data import read_file_bytes

        metric = SegMetric(self.num_classes, ignore_index=self.ignore_index)
        try:
            samples, prepared = [], []
            for img_path, seg_path in zip(batch["img_path"], batch["seg_path"]):
                sample = {"img_path": str(img_path), "seg_path": str(seg_path) if seg_path else None,
                          "img_bytes": read_file_bytes(str(img_path))}
                if sample["seg_path"] is None:
                    raise DataError(f"image {img_path} has no label map to evaluate against")
                sample["seg_bytes"] = read_file_bytes(sample["seg_path"])
                samples.append(sample)
                prepared.append(self.dataset.prepare_test(sample))
            for sample, res, pred in zip(samples, prepared, self.predictor.predict(prepared)):
                gt = res["gt_semantic_seg"]
                metric.update(pred, gt)
                if self.show_dir:
                    self._show(sample, pred, gt)
        except USER_ERRORS as exc:
            return self._output(SegMetric(self.num_classes, ignore_index=self.ignore_index), 0, str(exc))
        return self._output(metric, len(prepared))

    def _show(self, sample: Dict[str, Any], pred: np.ndarray, gt: np.ndarray) -> None:
        from rayseg.visualization import side_by_side

        img = cv2.imdecode(np.frombuffer(sample["img_bytes"], np.uint8), cv2.IMREAD_COLOR)
        picture = side_by_side(img, pred, gt, self.dataset.PALETTE, self.opacity, ignore_index=self.ignore_index)
        path = os.path.join(self.show_dir, show_name(sample["img_path"], getattr(self.dataset, "img_dir", None)))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        if not cv2.imwrite(path, picture):
            raise DataError(f"cannot write {path}")


def _light_dataset(dataset: Any) -> Any:
    """A copy of the dataset to ship to every actor: its pipeline (Normalize stripped: the replica
    normalises on its device) and metadata, without the file listing, which travels as Ray Data rows."""
    from rayseg.datasets.ray_data import _strip_normalize

    light = copy.copy(dataset)
    light._samples = []
    return _strip_normalize(light)


def default_num_workers(use_gpu: bool = False, address: Optional[str] = None) -> int:
    """The ``num_workers`` a user gets by default: 0 (in this process: no Ray start-up, which costs more
    than it saves on a laptop) unless a Ray cluster is named by ``address``/``RAY_ADDRESS`` (as under
    ``ray job submit``); then one actor per GPU with ``use_gpu``, else one per two CPUs."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        return 0
    import ray

    connect_ray(address)
    resources = ray.cluster_resources()
    if use_gpu:
        return max(1, int(resources.get("GPU", 0)))
    return max(1, int(resources.get("CPU", 1)) // 2)


def evaluate_distributed(cfg: Dict[str, Any], checkpoint: Union[str, Dict[str, Any]], split: str = "test",
                         num_workers: int = 2, use_gpu: bool = False, aug_test: bool = False,
                         show_dir: Optional[str] = None, progress: bool = True, batch_size: int = 1,
                         address: Optional[str] = None, opacity: float = 0.5,
                         cpus_per_worker: float = 1.0,
                         on_progress: Optional[Callable[[int], None]] = None) -> Dict[str, Any]:
    """Evaluate ``checkpoint`` on ``data.<split>`` with ``num_workers`` inference actors on Ray.

    ``checkpoint`` is anything ``load_weights_file`` reads (latest.pth, a Ray checkpoint folder, an MMSeg
    .pth, a storage URI, a URL) or an already loaded ``{"state_dict", "meta"}``. ``num_workers=0`` runs
    the same replica in this process without Ray. ``aug_test`` switches the split's MultiScaleFlipAug to
    MMSeg's multi-scale + flip ratios; ``show_dir`` receives one prediction | ground-truth JPEG per image
    (it must be a folder every actor can write to). Connects like training: ``address``/``RAY_ADDRESS``
    or a local Ray. Returns ``SegMetric.compute()``'s dict plus ``classes`` and ``confusion`` (raw (n, n)
    int64 pixel counts, rows ground truth); ``batch_size`` > 1 stacks same-size images into one forward
    pass, which may change the last bits of the logits compared with one image at a time.
    ``on_progress(images_done)`` is called as results arrive (benchmarks time the stream with it).
    """
    from rayseg.datasets import build_dataset
    from rayseg.datasets.compose import enable_aug_test
    from rayseg.engine.checkpoint import load_weights_file

    import_custom_modules(cfg)  # custom_imports: before the dataset and model are built, and before Ray starts
    data = cfg.get("data") or {}
    if split not in data:
        raise ConfigError(f"data.{split} is not set in the config")
    if batch_size < 1 or num_workers < 0:
        raise ConfigError(f"batch_size must be ≥ 1 and num_workers ≥ 0, got {batch_size} and {num_workers}")
    split_cfg = copy.deepcopy(data[split])
    if aug_test:
        split_cfg["pipeline"] = enable_aug_test(split_cfg["pipeline"])
    dataset = build_dataset(split_cfg)
    samples = dataset.samples
    if not samples:
        raise DataError(f"data.{split} lists no images")
    state = checkpoint if isinstance(checkpoint, dict) else load_weights_file(str(checkpoint))
    source = weights_source(checkpoint)
    # Checked here, before any actor starts, so a wrong checkpoint is one clear error.
    num_classes = int(load_inference_model(cfg, state, "cpu", source).num_classes)
    names = list(getattr(dataset, "CLASSES", None) or [str(i) for i in range(num_classes)])
    if len(names) != num_classes:
        raise ConfigError(f"data.{split} has {len(names)} classes but the model predicts {num_classes}")
    if show_dir:
        os.makedirs(show_dir, exist_ok=True)
    replica_kwargs = {"cfg": cfg, "dataset": _light_dataset(dataset), "source": source, "use_gpu": use_gpu,
                      "show_dir": os.path.abspath(show_dir) if show_dir else None, "opacity": opacity}
    metric = SegMetric(num_classes, ignore_index=int(getattr(dataset, "ignore_index", 255)), class_names=names)
    columns = {"img_path": [s["img_path"] for s in samples], "seg_path": [s.get("seg_path") for s in samples]}
    outputs = map_rows(EvalReplica, columns, state, replica_kwargs, batch_size=batch_size, num_replicas=num_workers,
                       use_gpu=use_gpu, cpus_per_replica=cpus_per_worker, max_block_rows=_MAX_BLOCK_ROWS,
                       address=address)
    seen = 0
    with tqdm(total=len(samples), desc=f"eval {split}", unit="img", disable=not progress, smoothing=0.1) as bar:
        for out in outputs:
            for i, error in enumerate(out["error"]):
                if error:
                    raise DataError(str(error))
                metric.add_areas({k: out[k][i] for k in _OUT_KEYS})
                count = int(out["num_images"][i])
                seen += count
                bar.update(count)
                if on_progress is not None:
                    on_progress(seen)
    if seen != len(samples):  # a lost or repeated block would silently skew every metric
        raise RuntimeError(f"evaluated {seen} images but data.{split} lists {len(samples)}")
    results = metric.compute()
    results["classes"] = names
    results["confusion"] = metric.confusion_matrix(normalize=None)
    return results


def evaluate_checkpoint(cfg: Dict[str, Any], checkpoint: Union[str, Dict[str, Any]], split: str = "test",
                        device: str = "cpu", progress: bool = True) -> Dict[str, Any]:
    """Single-process evaluation (MMSeg's ``tools/test.py`` without a launcher): the same replica as the
    Ray actors, run in this process on the CPU (``device="cuda"`` uses the GPU); see
    :func:`evaluate_distributed` for ``checkpoint`` and the returned dict."""
    if str(device) not in ("cpu", "cuda"):
        raise ConfigError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return evaluate_distributed(cfg, checkpoint, split=split, num_workers=0, use_gpu=str(device) == "cuda",
                                progress=progress)
