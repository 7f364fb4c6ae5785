"""Inference speed of a segmentor: img/s and per-batch latency after warm-up (MMSeg's ``benchmark.py``).

MMSeg's tool times its test dataloader's images; here the input is a random batch of the asked shape,
already normalised, so the figure is the model's own speed (``model.inference``: ``test_cfg.mode``
whole or slide, logits at the input size) without image decoding or the test pipeline.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from rayseg.errors import ConfigError
from rayseg.tools.model import run_checked


@dataclass
class BenchmarkResult:
    """Timings of :func:`benchmark`: one latency per timed batch, in milliseconds."""

    device: str
    threads: int
    shape: Tuple[int, int]
    batch_size: int
    warmup: int
    latencies_ms: List[float] = field(default_factory=list)
    weights: str = "random init"

    @property
    def img_per_s(self) -> float:
        return 1000.0 * self.batch_size * len(self.latencies_ms) / sum(self.latencies_ms)

    def latency(self, stat: str) -> float:
        """``mean``, ``p50`` or ``p90`` of the per-batch latency (ms)."""
        values = np.asarray(self.latencies_ms)
        return float(values.mean() if stat == "mean" else np.percentile(values, float(stat[1:])))

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out.update(img_per_s=self.img_per_s, latency_ms={s: self.latency(s) for s in ("mean", "p50", "p90")})
        return out

    def format(self) -> str:
        h, w = self.shape
        return "\n".join([
            f"device: {self.device}",
            f"torch threads: {self.threads}",
            f"input: ({self.batch_size}, 3, {h}, {w}), float32",
            f"weights: {self.weights}",
            f"iterations: {self.warmup} warm-up (not timed), {len(self.latencies_ms)} timed",
            f"throughput: {self.img_per_s:.2f} img/s",
            "latency per batch: mean {:.2f} ms, p50 {:.2f} ms, p90 {:.2f} ms".format(
                *(self.latency(s) for s in ("mean", "p50", "p90"))),
        ])


def device_name(device: torch.device) -> str:
    """A readable name: the GPU's, or the CPU's model and core count."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return f"cpu ({model}, {os.cpu_count()} logical cores)"


def benchmark(model: torch.nn.Module, shape: Tuple[int, int] = (512, 1024), batch_size: int = 1,
              warmup: int = 5, iters: int = 20, weights: Optional[str] = None) -> BenchmarkResult:
    """Time ``model.inference`` on a random (batch_size, 3, H, W) batch on the model's device.

    ``warmup`` untimed runs first (allocator, cuDNN/oneDNN algorithm choice), then ``iters`` timed
    ones; on a GPU each run is synchronised so its time is the kernels', not the launch's.
    """
    if batch_size < 1 or iters < 1 or warmup < 0:
        raise ConfigError(f"batch size and iterations must be positive and warm-up not negative, got "
                          f"batch_size={batch_size}, iters={iters}, warmup={warmup}")
    device = next(model.parameters()).device
    x = torch.randn(batch_size, 3, *shape, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    latencies = []
    with torch.inference_mode():
        for i in range(warmup + iters):
            sync()
            start = time.perf_counter()
            run_checked(model.inference, x, shape=shape)
            sync()
            if i >= warmup:
                latencies.append(1000.0 * (time.perf_counter() - start))
    return BenchmarkResult(device=device_name(device), threads=torch.get_num_threads(), shape=tuple(shape),
                           batch_size=batch_size, warmup=warmup, latencies_ms=latencies,
                           weights=weights or "random init (no checkpoint given)")
