"""The per-worker training loop run by Ray Train's ``TorchTrainer``."""
from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any, Dict, Iterator

import numpy as np
import torch
import torch.distributed as dist

from rayseg.engine.checkpoint import TRAIN_STATE_FILE, load_model_weights, save_train_state, unwrap
from rayseg.engine.evaluate import PER_CLASS_KEYS, evaluate_shard, flatten_eval_metrics
from rayseg.engine.optim import build_lr_schedule, build_optimizer
from rayseg.engine.sync_bn import convert_sync_batchnorm
from rayseg.errors import DataError


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch; optionally force deterministic torch kernels."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def _format_eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def console(message: str) -> None:
    """Write one line to the worker's stdout, which Ray forwards to the driver's console.

    ``sys.stdout.write`` rather than ``print``: Ray Train patches ``print`` in workers to tee into its
    logger, which shows every line twice on the driver.
    """
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _mean_across_workers(values: Dict[str, float]) -> Dict[str, float]:
    rank, world = _world()
    if world == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world for k, v in zip(keys, t.tolist())}


class _BatchStream:
    """Endless view over the shard's single training stream; a clear error if it runs dry."""

    def __init__(self, shard, batch_size: int, device):
        self._it: Iterator = iter(shard.iter_torch_batches(
            batch_size=batch_size, drop_last=True, device=device,
            dtypes={"img": torch.uint8, "gt_semantic_seg": torch.uint8}))

    def next(self, iteration: int) -> Dict[str, torch.Tensor]:
        try:
            return next(self._it)
        except StopIteration:
            raise DataError(f"the training stream ended before iteration {iteration}; "
                            "this is a bug in the stream length computation") from None


def _quiet_worker_logs() -> None:
    """Keep the driver console readable: Ray Train logs every report at INFO, and DDP warns about the
    stride layout of 1×1-conv gradients, which costs nothing here."""
    import logging
    import warnings

    try:  # a private module whose logger is named after its file path, so it can't be addressed by name
        from ray.train.v2._internal.execution import context as train_context

        train_context.logger.setLevel(logging.WARNING)
    except (ImportError, AttributeError):
        pass
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")


def train_loop_per_worker(config: Dict[str, Any]) -> None:
    """Build the model and optimizer, restore any checkpoint, then train to ``runner.max_iters``."""
    import ray.train
    import ray.train.torch

    from rayseg.datasets.ray_data import DeviceNormalizer
    from rayseg.models import build_segmentor, uses_sync_bn

    _quiet_worker_logs()
    cfg = config["cfg"]
    threads = config.get("torch_threads") or 1
    torch.set_num_threads(int(threads))
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed = int(cfg.get("seed") or 0)
    seed_everything(seed + rank, bool(cfg.get("deterministic")))

    model = build_segmentor(cfg["model"])
    device = ray.train.torch.get_device()
    if world > 1 and uses_sync_bn(cfg["model"]):
        model = convert_sync_batchnorm(model, device.type)
    optimizer_holder = {}
    max_iters = int(cfg["runner"]["max_iters"])
    start_iter = 0

    checkpoint = ray.train.get_checkpoint()
    restored = None
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            restored = torch.load(os.path.join(folder, TRAIN_STATE_FILE), map_location="cpu", weights_only=True)
        model.load_state_dict(restored["state_dict"])
        start_iter = int(restored["meta"]["iter"])
    elif config.get("init_weights") is not None:
        load_model_weights(model, config["init_weights"], str(cfg.get("load_from")))

    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": False}) \
        if world > 1 else model.to(device)
    optimizer = build_optimizer(unwrap(model), cfg["optimizer"])
    if restored is not None and "optimizer" in restored:
        optimizer.load_state_dict(restored["optimizer"])
    if restored is not None and "rng" in restored:
        torch.set_rng_state(restored["rng"]["torch"])
    optimizer_holder["opt"] = optimizer
    schedule = build_lr_schedule(cfg.get("lr_config"), float(cfg["optimizer"]["lr"]), max_iters)
    grad_clip = (cfg.get("optimizer_config") or {}).get("grad_clip")

    normalizer = DeviceNormalizer.from_pipeline(cfg["data"]["train"]["pipeline"], device=device)
    stream = _BatchStream(ray.train.get_dataset_shard("train"), int(cfg["data"]["samples_per_gpu"]), device)
    val_shard = ray.train.get_dataset_shard("val") if config.get("has_val") else None
    val_normalizer = (DeviceNormalizer.from_pipeline(config["val_pipeline"], device=device)
                      if val_shard is not None else None)

    log_interval = int(cfg["log_config"]["interval"])
    eval_interval = int((cfg.get("evaluation") or {}).get("interval") or 0)
    ckpt_interval = int((cfg.get("checkpoint_config") or {}).get("interval") or max_iters)
    num_classes = unwrap(model).num_classes
    class_names = config.get("class_names")

    sums: Dict[str, float] = defaultdict(float)
    count = 0
    tic = time.perf_counter()
    iters_timed = 0
    model.train()
    for it in range(start_iter, max_iters):
        lr = schedule.apply(optimizer, it)
        batch = stream.next(it)
        img = normalizer(batch["img"])
        seg = batch["gt_semantic_seg"].long()
        losses = model(img, seg)
        loss = sum(v for k, v in losses.items() if "loss" in k)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at iteration {it + 1}; stopping before it corrupts "
                                     "the weights (lower the lr or add optimizer_config.grad_clip)")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), **grad_clip)
        optimizer.step()
        for k, v in losses.items():
            sums[k] += float(v.detach())
        sums["loss"] += float(loss.detach())
        count += 1
        iters_timed += 1
        done = it + 1

        is_log = done % log_interval == 0 or done == max_iters
        is_eval = val_shard is not None and eval_interval > 0 and (done % eval_interval == 0 or done == max_iters)
        is_ckpt = done % ckpt_interval == 0 or done == max_iters
        if not (is_log or is_eval or is_ckpt):
            continue

        elapsed = time.perf_counter() - tic
        metrics: Dict[str, Any] = {"iter": done, "lr": lr}
        if count:
            metrics.update(_mean_across_workers({k: v / count for k, v in sums.items()}))
        sec_per_iter = elapsed / max(1, iters_timed)
        metrics["time"] = sec_per_iter
        if rank == 0:
            loss_txt = ", ".join(f"{k}: {v:.4f}" for k, v in metrics.items() if "loss" in k or "acc" in k)
            console(f"Iter [{done}/{max_iters}]  lr: {lr:.3e}, eta: {_format_eta(sec_per_iter * (max_iters - done))}, "
                    f"time: {sec_per_iter:.3f}s/it, {loss_txt}")
        sums.clear()
        count = 0
        if is_eval:
            model.eval()
            results = evaluate_shard(unwrap(model), val_shard, val_normalizer, num_classes, device,
                                     ignore_index=255)
            model.train()
            metrics.update(flatten_eval_metrics(results, class_names))
            metrics["per_class"] = {k: results[k] for k in PER_CLASS_KEYS}
            if rank == 0:
                console(f"Iter(val) [{done}]  aAcc: {results['aAcc']:.2f}, mIoU: {results['mIoU']:.2f}, "
                        f"mAcc: {results['mAcc']:.2f}")
        if is_ckpt:
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = None
                if rank == 0:
                    save_train_state(tmp, model, optimizer, done, cfg)
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=f"iter_{done:08d}")
        else:
            ray.train.report(metrics)
        tic = time.perf_counter()
        iters_timed = 0
