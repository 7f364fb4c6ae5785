"""One optimisation step: forward under autocast, the non-finite check every worker agrees on, backward
with optional loss scaling and gradient clipping, and the optimizer update."""
from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from rayseg.engine.precision import PrecisionSettings


def all_workers_finite(loss: torch.Tensor) -> bool:
    """True only if the loss is finite on every worker.

    Deciding together matters: if one worker skipped its backward pass while the others ran theirs, DDP's
    gradient all-reduce would hang; if one worker raised alone, the others would wait in the next collective.
    """
    flag = torch.isfinite(loss.detach()).to(torch.int32).reshape(1)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


class TrainStep:
    """Runs ``model(img, seg)`` → loss → update, as configured by ``optimizer_config`` and the precision keys.

    A non-finite loss raises ``FloatingPointError`` naming the iteration, before any weight changes, unless
    ``skip_nonfinite`` is set: then the update is skipped on all workers and counted in ``skipped``.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, precision: PrecisionSettings,
                 grad_clip: Optional[Dict[str, Any]] = None, skip_nonfinite: bool = False):
        self.model, self.optimizer, self.precision = model, optimizer, precision
        self.grad_clip = dict(grad_clip) if grad_clip else None
        self.skip_nonfinite = skip_nonfinite
        self.scaler = precision.grad_scaler()
        self.skipped = 0

    def state_dict(self) -> Dict[str, Any]:
        state: Dict[str, Any] = {"skipped": self.skipped}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.skipped = int(state.get("skipped", 0))
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])

    def __call__(self, img: torch.Tensor, seg: torch.Tensor, iteration: int) -> Optional[Dict[str, float]]:
        """Train on one batch; returns the losses as floats, or None when the step was skipped."""
        return self.accumulate([(img, seg, 1.0)], iteration)

    def accumulate(self, micro_batches: Sequence[Tuple[torch.Tensor, torch.Tensor, float]],
                   iteration: int) -> Optional[Dict[str, float]]:
        """One update from several ``(img, seg, weight)`` micro-batches: each mean loss is scaled by its weight
        before backward and the gradients add up; DDP synchronises them once, on the last micro-batch.

        Every worker must pass the same number of micro-batches (the finiteness vote and SyncBN are
        collectives). Returns the weight-averaged losses, or None when the step was skipped.
        """
        self.optimizer.zero_grad(set_to_none=True)
        totals: Dict[str, float] = {}
        weight_sum = sum(w for _, _, w in micro_batches)
        last = len(micro_batches) - 1
        for j, (img, seg, weight) in enumerate(micro_batches):
            if self.precision.channels_last:
                img = img.contiguous(memory_format=torch.channels_last)
            with self.precision.autocast():
                losses = self.model(img, seg)
            loss = sum(v for k, v in losses.items() if "loss" in k)
            if not all_workers_finite(loss):
                self.optimizer.zero_grad(set_to_none=True)
                return self._non_finite(f"loss is {loss.item()} on at least one worker", iteration)
            scaled = loss * weight if weight != 1.0 else loss
            sync = contextlib.nullcontext() if j == last or not hasattr(self.model, "no_sync") else self.model.no_sync()
            with sync:
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            share = weight / weight_sum
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + float(v.detach()) * share
            totals["loss"] = totals.get("loss", 0.0) + float(loss.detach()) * share
        if self.scaler is not None:
            if self.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), **self.grad_clip)
            # GradScaler skips steps whose gradients overflowed and lowers the scale: fp16's own recovery.
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if self.grad_clip:
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), **self.grad_clip)
            elif self.skip_nonfinite:
                norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=math.inf)
            else:
                norm = None
            # After DDP's all-reduce every worker holds the same gradients, so they all agree here.
            if norm is not None and not torch.isfinite(norm):
                self.optimizer.zero_grad(set_to_none=True)
                return self._non_finite(f"the gradient norm is {norm.item()}", iteration)
            self.optimizer.step()
        return totals

    def _non_finite(self, what: str, iteration: int) -> None:
        if not self.skip_nonfinite:
            raise FloatingPointError(
                f"{what} at iteration {iteration}; stopping before it corrupts the weights (lower the lr, add "
                "optimizer_config.grad_clip, or set optimizer_config.skip_nonfinite: true to skip such steps)")
        self.skipped += 1
        return None
