"""The per-worker training loop run by Ray Train's ``TorchTrainer``."""
from __future__ import annotations

import hashlib
import os
import random
import sys
import tempfile
import time
from collections import defaultdict
from typing import Any, Callable, Dict, Iterator, Optional

import numpy as np
import torch
import torch.distributed as dist

from rayseg.engine.best import BestScore
from rayseg.engine.checkpoint import (load_model_weights, read_checkpoint, read_train_checkpoint, save_train_state,
                                      unwrap)
from rayseg.engine.elastic import loss_weight, micro_batch_sizes
from rayseg.engine.evaluate import PER_CLASS_KEYS, evaluate_shard, flatten_eval_metrics
from rayseg.engine.hooks import HookList, HookRunner
from rayseg.engine.precision import precision_settings
from rayseg.engine.progress import ProgressEmitter
from rayseg.engine.reporting import (QUEUE_BUSY_KEY, SINCE_REPORT_KEY, ReportPacer, report_interval_s,
                                     result_queue_busy)
from rayseg.engine.step import TrainStep
from rayseg.engine.sync_bn import convert_sync_batchnorm
from rayseg.custom_imports import import_custom_modules
from rayseg.errors import DataError
from rayseg.evaluation.report import summary_columns
from rayseg.optim import build_lr_schedule, build_momentum_schedule, build_optimizer
from rayseg.spec.sections import RunSpec
from rayseg.tracking import start_system_metrics
from rayseg.utils.distributed import is_distributed, rank_and_world


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


def _mean_across_workers(values: Dict[str, float]) -> Dict[str, float]:
    _, world = rank_and_world()
    if world == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world for k, v in zip(keys, t.tolist())}


def _free_cpus_text() -> str:
    """``"cluster: 0 of 2 CPUs free"`` for the timeout message, or "" if Ray cannot say."""
    try:
        import ray

        return (f" (cluster: {ray.available_resources().get('CPU', 0):g} of "
                f"{ray.cluster_resources().get('CPU', 0):g} CPUs free)")
    except Exception:
        return ""


class _BatchStream:
    """Endless view over the shard's single training stream; a clear error if it runs dry, and a DataError
    instead of a silent hang if the first batch does not arrive within ``first_batch_timeout_s``.

    The first batch is requested as soon as the stream is made, on a helper thread: Ray Data starts its
    executor and decode/augment actors only when a consumer asks, and that start-up (a few seconds of process
    starts) then overlaps the worker's own set-up (model, restore, DDP) instead of following it.
    """

    def __init__(self, shard, batch_size: int, device, first_batch_timeout_s: Optional[float] = None):
        import threading

        # Pinned host memory lets the host→GPU copy run asynchronously; it means nothing on CPU.
        self._it: Iterator = iter(shard.iter_torch_batches(
            batch_size=batch_size, drop_last=True, device=device, pin_memory=device.type == "cuda",
            dtypes={"img": torch.uint8, "gt_semantic_seg": torch.uint8}))
        self._first_timeout = first_batch_timeout_s
        self._first_box: Optional[Dict[str, Any]] = {}
        self._first_helper = threading.Thread(target=self._fetch_first, name="rayseg-first-batch", daemon=True)
        self._first_helper.start()
        self._held: Optional[Dict[str, torch.Tensor]] = None  # rows of a batch that ``take`` has not used yet

    def _fetch_first(self) -> None:
        try:
            self._first_box["batch"] = next(self._it)
        except BaseException as exc:  # handed to the training thread by _first
            self._first_box["error"] = exc

    def take(self, rows: int, iteration: int) -> Dict[str, torch.Tensor]:
        """The next ``rows`` rows, whatever the stream's batch size (elastic micro-batches vary by one)."""
        parts = []
        while rows > 0:
            if self._held is None:
                self._held = self.next(iteration)
            held = self._held
            have = len(held["img"])
            use = min(rows, have)
            parts.append({k: v[:use] for k, v in held.items()})
            self._held = {k: v[use:] for k, v in held.items()} if use < have else None
            rows -= use
        if len(parts) == 1:
            return parts[0]
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def next(self, iteration: int) -> Dict[str, torch.Tensor]:
        try:
            if self._first_box is not None:
                return self._first()
            return next(self._it)
        except StopIteration:
            raise DataError(f"the training stream ended before iteration {iteration}; "
                            "this is a bug in the stream length computation") from None

    def _first(self) -> Dict[str, torch.Tensor]:
        """The first batch, waited for at most ``first_batch_timeout_s`` seconds from now.

        Ray Data gives no timeout of its own: when its read tasks or decode actors cannot get a CPU, the
        iterator blocks forever (Ray only logs "... may hang forever" on the driver). Later batches come
        straight from the stream. On timeout the helper stays blocked, which is harmless: the worker is about
        to fail and be torn down.
        """
        self._first_helper.join(self._first_timeout)
        if self._first_helper.is_alive():
            raise DataError(
                f"no training batch arrived within {self._first_timeout:g} s (data.first_batch_timeout_s)"
                f"{_free_cpus_text()}: "
                "most likely Ray Data's read tasks and decode/augment actors are waiting for CPUs that the "
                "training workers hold; give the cluster more CPUs or lower scaling.num_workers or "
                "scaling.resources_per_worker.CPU (or raise data.first_batch_timeout_s if the data is only "
                "slow to read)")
        box, self._first_box = self._first_box, None
        if "error" in box:
            raise box["error"]
        return box["batch"]


def weights_digest(model: torch.nn.Module) -> str:
    """SHA-256 over every parameter and buffer, in state-dict order: equal digests mean equal replicas."""
    digest = hashlib.sha256()
    for name, tensor in unwrap(model).state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def sync_buffers(model: torch.nn.Module) -> None:
    """Give every worker rank 0's BatchNorm running statistics (MMSeg's ``broadcast_bn_buffer``).

    With plain BN each worker updates its running stats from its own last batch, so without this the
    workers would validate with slightly different models, and ``latest.pth`` (rank 0's) would not be the
    model that was validated.
    """
    if not is_distributed():
        return
    for buffer in unwrap(model).buffers():
        if buffer.is_floating_point() or buffer.dtype in (torch.int64, torch.int32):
            dist.broadcast(buffer.data, src=0)


def _replica_record(model: torch.nn.Module, rank: int) -> Dict[str, Any]:
    import socket

    import ray

    return {"rank": rank, "node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
            "pid": os.getpid(), "weights_sha256": weights_digest(model)}


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
    # MLflow's system-metrics sampler announces its start and stop at INFO on every node.
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)


def _restore(model: torch.nn.Module, spec: RunSpec, rank: int, say: Callable[[str], None] = console,
             resume_from: Optional[str] = None) -> Dict[str, Any] | None:
    """The training state to start from: the run's own latest checkpoint that Ray Train hands this worker
    group, else ``resume_from`` (another run's checkpoint folder, or this run's newest intact one when the
    driver found the one Ray registered damaged), else None (starting fresh)."""
    import ray.train

    from rayseg.errors import CheckpointError

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and not resume_from:
        return None
    restored = None
    if checkpoint is not None:
        try:
            restored = read_train_checkpoint(checkpoint)
        except CheckpointError:
            if not resume_from:
                raise
            # The driver already said which checkpoint it skipped and why; read the one it chose instead.
    if restored is None:
        restored = read_checkpoint(resume_from)
    model.load_state_dict(restored["state_dict"])
    if rank == 0:
        say(f"Restored the training state of iteration {int(restored['meta']['iter'])}; "
            f"continuing to {spec.max_iters}")
    return restored


def _val_line(done: int, results: Dict[str, Any], metrics) -> str:
    """``Iter(val) [N]  aAcc: …, mIoU: …`` with the summary columns ``evaluation.metric`` selects."""
    shown = ", ".join(f"{k}: {results[k]:.2f}" for k in summary_columns(metrics) if k in results)
    return f"Iter(val) [{done}]  {shown}"


def train_loop_per_worker(config: Dict[str, Any]) -> None:
    """Build the model and optimizer, restore any checkpoint, then train to ``spec.max_iters``.

    ``config``: ``{"spec": RunSpec, "init_weights", "class_names", "system_metrics"}`` from the driver. A
    rayseg error (bad data, a corrupt checkpoint) leaves the worker as a plain instance of its class: Ray's
    wrappers around it would not survive the trip to the driver with the message intact.
    """
    from rayseg.utils.ray_session import user_error

    try:
        _train(config)
    except Exception as exc:
        bare = user_error(exc)
        if bare is None:
            raise
        raise type(bare)(*bare.args) from None


def _train(config: Dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    _quiet_worker_logs()
    spec: RunSpec = config["spec"]
    torch.set_num_threads(max(1, int(spec.scaling.cpus_per_worker)))
    device = ray.train.torch.get_device()
    # Before anything else (the model code's imports alone take 1-3 s): Ray Data's executor and actors start
    # when the first batch is asked for, and their start-up then overlaps this worker's own set-up.
    stream = _BatchStream(ray.train.get_dataset_shard("train"), spec.data.samples_per_gpu, device,
                          first_batch_timeout_s=spec.data.first_batch_timeout_s)

    from rayseg.datasets.ray_data import DeviceNormalizer
    from rayseg.models import build_segmentor
    from rayseg.spec.policy import set_log_level

    import_custom_modules(spec.custom_imports)  # custom_imports: the parts named below may be the user's
    set_log_level(spec.log.level)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    seed_everything(spec.seed + rank, spec.deterministic)

    model = build_segmentor(spec.model.config)
    precision = precision_settings(spec.precision, device, deterministic=spec.deterministic)
    if world > 1 and spec.model.sync_bn:
        model = convert_sync_batchnorm(model, device.type)
    max_iters = spec.max_iters
    # With "progress" the driver draws the progress bar from rank 0's events; without it (a driver that
    # does not receive the workers' output through rayseg's console) rank 0 prints MMSeg-style lines.
    progress = ProgressEmitter(rank == 0 and bool(config.get("progress")))
    say = (lambda text: progress.event(e="msg", text=text)) if progress.enabled else console
    restored = _restore(model, spec, rank, say, resume_from=config.get("resume_from"))
    start_iter = int(restored["meta"]["iter"]) if restored is not None else 0
    if restored is None and config.get("init_weights") is not None:
        load_model_weights(model, config["init_weights"], str(spec.load_from))

    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": False}) \
        if world > 1 else model.to(device)
    optimizer = build_optimizer(unwrap(model), spec.optim.optimizer)
    step = TrainStep(model, optimizer, precision, grad_clip=spec.optim.grad_clip,
                     skip_nonfinite=spec.optim.skip_nonfinite)
    evaluation = spec.evaluation
    best = BestScore(evaluation.save_best) if evaluation.save_best else None
    if restored is not None:
        if "optimizer" in restored:
            optimizer.load_state_dict(restored["optimizer"])
        if "rng" in restored:
            torch.set_rng_state(restored["rng"]["torch"])
        step.load_state_dict(restored.get("step") or {})
        if best is not None:
            best.load_state_dict(restored.get("best"))
    schedule = build_lr_schedule(spec.optim.lr_config, spec.optim.base_lr, max_iters, spec.optim.iters_per_epoch)
    momentum = build_momentum_schedule(spec.optim.momentum_config, max_iters, spec.optim.iters_per_epoch)

    normalizer = DeviceNormalizer.from_pipeline(spec.data.train_pipeline, device=device)
    scaling = spec.scaling
    spg = spec.data.samples_per_gpu
    size_field = {"w": world} if scaling.elastic else {}  # the progress line shows the current size
    if scaling.elastic and restored is not None and rank == 0 and restored.get("workers") not in (None, world):
        say(f"Resized from {restored['workers']} to {world} workers; the global batch stays "
            f"{spg * scaling.num_workers} ({len(micro_batch_sizes(spg, scaling.num_workers, world, 0, 0))} "
            f"micro-batch(es) per worker per iteration)")
    val_shard = ray.train.get_dataset_shard("val") if evaluation.interval else None
    val_normalizer = (DeviceNormalizer.from_pipeline(spec.data.val_pipeline, device=device)
                      if val_shard is not None else None)

    log_interval = spec.log.interval
    ckpt_interval = spec.checkpoint.interval
    num_classes = unwrap(model).num_classes
    class_names = config.get("class_names")
    monitor = start_system_metrics(config.get("system_metrics"), ctx)

    hooks = HookList.build(spec.custom_hooks, HookRunner(unwrap(model), optimizer, max_iters, spec.work_dir, rank,
                                                         world, config=spec.config))
    hooks.call("before_run", start_iter)
    sums: Dict[str, float] = defaultdict(float)
    count = 0
    tic = time.perf_counter()
    iters_timed = 0
    data_seconds = 0.0  # waiting for the stream, MMSeg's data_time
    pacer = ReportPacer(report_interval_s())
    model.train()
    for it in range(start_iter, max_iters):
        step_tic = time.perf_counter()
        lr = schedule.apply(optimizer, it)
        if momentum is not None:
            momentum.apply(optimizer, it)
        hooks.call("before_train_iter", it)
        if world == scaling.num_workers:
            data_tic = time.perf_counter()
            batch = stream.next(it)
            data_seconds += time.perf_counter() - data_tic
            losses = step(normalizer(batch["img"]), batch["gt_semantic_seg"].long(), it + 1)
        else:  # elastic, below MAX workers: the global batch in micro-batches (rayseg.engine.elastic)
            micro = []
            for size in micro_batch_sizes(spg, scaling.num_workers, world, rank, it):
                data_tic = time.perf_counter()
                batch = stream.take(size, it)
                data_seconds += time.perf_counter() - data_tic
                micro.append((normalizer(batch["img"]), batch["gt_semantic_seg"].long(),
                              loss_weight(size, spg, scaling.num_workers, world)))
            losses = step.accumulate(micro, it + 1)
        if losses is not None:
            for k, v in losses.items():
                sums[k] += v
            count += 1
        iters_timed += 1
        done = it + 1
        hooks.call("after_train_iter", it, outputs=losses)

        is_log = done % log_interval == 0 or done == max_iters
        is_eval = val_shard is not None and (done % evaluation.interval == 0 or done == max_iters)
        is_ckpt = done % ckpt_interval == 0 or done == max_iters
        step_seconds = time.perf_counter() - step_tic  # data wait + step; validation and reports excluded
        if not (is_log or is_eval or is_ckpt):
            progress.iteration(done, step_seconds, **size_field)
            continue

        elapsed = time.perf_counter() - tic
        metrics: Dict[str, Any] = {"iter": done, "lr": lr}
        # Every worker joins the mean, even one whose steps were all skipped, so the collective matches.
        means = {k: v / max(1, count) for k, v in sums.items()}
        means[SINCE_REPORT_KEY] = pacer.seconds_since_report()
        means[QUEUE_BUSY_KEY] = result_queue_busy()
        means = _mean_across_workers(means)
        report_due = pacer.due(means.pop(SINCE_REPORT_KEY), means.pop(QUEUE_BUSY_KEY))
        metrics.update(means)
        if step.skip_nonfinite:
            metrics["skipped_steps"] = step.skipped
        sec_per_iter = elapsed / max(1, iters_timed)
        metrics["time"] = sec_per_iter
        metrics["data_time"] = data_seconds / max(1, iters_timed)
        if scaling.elastic:
            metrics["workers"] = world  # the worker count over time; the driver turns changes into events
        if progress.enabled:
            progress.iteration(done, step_seconds, force=True, log=is_log, loss=metrics.get("loss"), **size_field)
        elif rank == 0:
            loss_txt = ", ".join(f"{k}: {v:.4f}" for k, v in metrics.items() if "loss" in k or "acc" in k)
            console(f"Iter [{done}/{max_iters}]  lr: {lr:.3e}, eta: {_format_eta(sec_per_iter * (max_iters - done))}, "
                    f"time: {sec_per_iter:.3f}s/it, data_time: {metrics['data_time']:.3f}s/it, {loss_txt}"
                    + (f", workers: {world}/{scaling.num_workers}" if scaling.elastic else ""))
        sums.clear()
        count = 0
        if is_eval or done == max_iters:
            sync_buffers(model)
        if is_eval:
            model.eval()
            results = evaluate_shard(unwrap(model), val_shard, val_normalizer, num_classes, device,
                                     ignore_index=evaluation.ignore_index, class_names=class_names)
            model.train()
            metrics.update(flatten_eval_metrics(results, class_names))
            hooks.call("after_val_epoch", it, metrics=results)
            metrics["per_class"] = {k: results[k] for k in PER_CLASS_KEYS}
            if progress.enabled:
                progress.event(e="val", i=done, line=_val_line(done, results, evaluation.metrics),
                               mIoU=results.get("mIoU"))
            elif rank == 0:
                console(_val_line(done, results, evaluation.metrics))
            # The areas were all-reduced, so every worker reaches the same verdict here.
            if best is not None and best.update(results, done):
                is_ckpt = True
                metrics["saved_best"] = best.key
            if best is not None:
                metrics[f"best_{best.key}"] = best.score
        # The next interval's time includes this one's checkpoint and report (MMSeg's time: all but validation).
        next_tic = time.perf_counter()
        bad_samples = config.get("bad_samples")
        if rank == 0 and bad_samples is not None and bad_samples.skip:
            # After validation, so samples it skipped count too; the ingest reads ahead of training, so this
            # may include samples of iterations still to come. Only rank 0's metrics are kept.
            metrics["bad_samples"] = bad_samples.count()
        if done == max_iters:
            metrics["replica"] = _replica_record(model, rank)
        if is_ckpt:
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = None
                if rank == 0:
                    extra = {"step": step.state_dict(), "workers": world}
                    if best is not None:
                        extra["best"] = best.state_dict()
                    hooks.call("before_save_checkpoint", it, checkpoint=extra)
                    save_train_state(tmp, model, optimizer, done, spec.config, extra=extra)
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                ray.train.report(pacer.with_held(metrics), checkpoint=ckpt,
                                 checkpoint_dir_name=f"iter_{done:08d}")
        elif is_eval or report_due:
            ray.train.report(pacer.with_held(metrics))
        else:
            pacer.hold(metrics)
        tic = next_tic
        iters_timed = 0
        data_seconds = 0.0
    hooks.call("after_run", max_iters)
    progress.event(e="end", i=max_iters)  # tells the driver that no more progress lines will follow
    if monitor is not None:
        monitor.finish()
