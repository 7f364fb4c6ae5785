"""Pieces shared by distributed evaluation and batch prediction: Ray connection, model replicas, prediction.

Both jobs load the checkpoint once in the driver and ship its weights to the inference actors through
Ray's object store, so a checkpoint that only the driver can see (a local ``latest.pth`` on the head
node, a URL fetched once) still reaches actors on every node.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from rayseg.errors import CheckpointError, ConfigError, DataError

USER_ERRORS = (ConfigError, DataError, CheckpointError)


def connect_ray(address: Optional[str] = None, num_cpus_needed: float = 1.0) -> None:
    """Connect to ``address``/``RAY_ADDRESS``, or start a local Ray with enough logical CPUs for the job.

    As ``rayseg.engine.trainer.ensure_ray`` does; the dashboard is left out locally because nothing here
    needs it and it adds seconds to start-up.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return
    # "local": a fresh instance even if another cluster on this machine was started with `ray start`
    # (plain ray.init() would attach to that one and then refuse num_cpus).
    ray.init(address="local", num_cpus=max(os.cpu_count() or 1, math.ceil(num_cpus_needed) + 1),
             include_dashboard=False)


def quiet_ray_data() -> None:
    """Ray Data's per-operator progress bars and start-up lines would drown our single tqdm bar."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def actor_device(use_gpu: bool) -> torch.device:
    """The device an inference replica runs on: the GPU Ray assigned it, else the CPU."""
    if use_gpu:
        if not torch.cuda.is_available():
            raise ConfigError("use_gpu is set but this worker sees no CUDA device")
        return torch.device("cuda")  # Ray sets CUDA_VISIBLE_DEVICES to the actor's GPU
    return torch.device("cpu")


def load_state(checkpoint: str) -> Dict[str, Any]:
    """``{"state_dict", "meta"}`` from any checkpoint form ``load_weights_file`` accepts."""
    from rayseg.engine.checkpoint import load_weights_file

    return load_weights_file(str(checkpoint))


def build_model(cfg: Dict[str, Any], state_dict: Dict[str, torch.Tensor], source: str,
                device: torch.device) -> torch.nn.Module:
    """The config's segmentor with ``state_dict`` loaded (strict), in eval mode on ``device``.

    Backbone pretraining is switched off first: the checkpoint overwrites those weights anyway.
    """
    from rayseg.apis.inference import _without_pretrained
    from rayseg.engine.checkpoint import load_model_weights
    from rayseg.models import build_segmentor

    model = build_segmentor(_without_pretrained(cfg["model"]))
    # A classifier left at its initialisation would give meaningless labels and metrics.
    load_model_weights(model, state_dict, source, allow_num_classes_change=False)
    return model.to(device).eval()


def _tensor(img: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img))[None].to(device)


@torch.no_grad()
def predict_prepared(model, normalizer, results: Sequence[Dict[str, Any]], device: torch.device) -> List[np.ndarray]:
    """Label maps (int64, original size) for pipeline outputs (``prepare_test`` / test-pipeline results).

    Results with ``aug_variants`` go through ``aug_predict`` one image at a time. Plain results that share
    the network input size and the original size are stacked into one forward pass (the batch a GPU
    wants); with one result per call every image is predicted alone, exactly as the single-process
    evaluation does, so integer areas match it bit for bit.
    """
    out: List[Optional[np.ndarray]] = [None] * len(results)
    groups: Dict[Tuple, List[int]] = {}
    for i, res in enumerate(results):
        ori_shape = tuple(int(v) for v in res["ori_shape"][:2])
        variants = res.get("aug_variants")
        if variants or res.get("flip", False):
            variants = variants or [res]
            flips = [(bool(v.get("flip", False)), str(v.get("flip_direction", "horizontal"))) for v in variants]
            imgs = [normalizer(_tensor(v["img"], device)) for v in variants]
            out[i] = model.aug_predict(imgs, flips, ori_shape)[0].cpu().numpy().astype(np.int64, copy=False)
        else:
            groups.setdefault((res["img"].shape, ori_shape), []).append(i)
    for (_, ori_shape), members in groups.items():
        batch = torch.from_numpy(np.stack([np.ascontiguousarray(results[i]["img"]) for i in members])).to(device)
        preds = model.predict(normalizer(batch), ori_shape=ori_shape).cpu().numpy().astype(np.int64, copy=False)
        for i, pred in zip(members, preds):
            out[i] = pred
    return out  # type: ignore[return-value]


def user_error(exc: BaseException) -> Optional[BaseException]:
    """The rayseg error (ConfigError/DataError/CheckpointError) behind an exception Ray wrapped, if any."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, USER_ERRORS):
            return exc
        # Ray keeps the worker's exception on RayTaskError.cause; Python chains the rest.
        exc = getattr(exc, "cause", None) or exc.__cause__ or exc.__context__
    return None
