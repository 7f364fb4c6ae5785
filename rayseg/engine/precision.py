"""GPU speed settings: mixed precision (bf16 / fp16 with loss scaling), channels_last, cudnn benchmark.

All of them are GPU-only. On a CPU worker they are switched off with one warning naming the keys, so the
same config runs on a laptop and on the cluster.

Config spellings (MMSeg's and rayseg's):

- ``amp: {enabled: true, dtype: bf16|fp16, loss_scale: dynamic|512.0}`` (rayseg)
- ``fp16: {loss_scale: dynamic|512.0}`` (MMSeg 0.x) → fp16 autocast with that loss scale
- ``optimizer_config: {type: Fp16OptimizerHook, loss_scale: ...}`` (MMSeg 0.x) → the same
- ``channels_last: true`` and ``cudnn_benchmark: true`` (top-level keys)
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any, Dict, Optional, Union

import torch

from rayseg.errors import ConfigError
from rayseg.spec.sections import PrecisionSpec

_DTYPES = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


@dataclass(frozen=True)
class PrecisionSettings:
    """What the training step does about precision and memory layout on this worker's device."""

    amp_dtype: Optional[torch.dtype] = None  # None: fp32
    loss_scale: Union[str, float, None] = None  # "dynamic", a number, or None (no scaling)
    channels_last: bool = False
    cudnn_benchmark: bool = False
    device_type: str = "cpu"

    @property
    def amp(self) -> bool:
        return self.amp_dtype is not None

    def autocast(self):
        """The autocast context for forward passes (a no-op context when amp is off)."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=self.amp_dtype)

    def grad_scaler(self) -> Optional["torch.amp.GradScaler"]:
        """A GradScaler for fp16 (bf16 has fp32's range and needs none); None when not scaling."""
        if self.amp_dtype is not torch.float16 or self.loss_scale is None:
            return None
        if self.loss_scale == "dynamic":
            return torch.amp.GradScaler(self.device_type)
        # A static scale: never grow. Overflowing steps are still skipped, as MMCV's static scaler does.
        return torch.amp.GradScaler(self.device_type, init_scale=float(self.loss_scale), growth_interval=2**31 - 1)


def _loss_scale(value: Any, where: str) -> Union[str, float]:
    if value is None or value == "dynamic":
        return "dynamic"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{where}: loss_scale must be 'dynamic' or a positive number, got {value!r}")
    return float(value)


def resolve_precision(cfg: Dict[str, Any]) -> PrecisionSpec:
    """The precision keys of a config (``amp``, ``fp16``, ``optimizer_config``, ``channels_last``,
    ``cudnn_benchmark``) resolved into one ``PrecisionSpec``, whatever the device."""
    amp = cfg.get("amp") or {}
    fp16 = cfg.get("fp16")
    opt_cfg = cfg.get("optimizer_config") or {}
    hook_fp16 = opt_cfg.get("type") == "Fp16OptimizerHook"
    asked = []
    if amp.get("enabled", bool(amp)):
        dtype = str(amp.get("dtype", "bf16")).lower()
        if dtype not in _DTYPES:
            raise ConfigError(f"amp.dtype must be one of bf16, fp16; got {amp.get('dtype')!r}")
        dtype = "fp16" if _DTYPES[dtype] is torch.float16 else "bf16"
        scale = _loss_scale(amp.get("loss_scale"), "amp") if dtype == "fp16" else None
        asked.append(("amp", dtype, scale))
    if fp16 is not None:
        asked.append(("fp16", "fp16", _loss_scale(fp16.get("loss_scale"), "fp16")))
    if hook_fp16:
        asked.append(("optimizer_config", "fp16", _loss_scale(opt_cfg.get("loss_scale"), "optimizer_config")))
    if len(asked) > 1:
        raise ConfigError(f"mixed precision is set in more than one place ({', '.join(a[0] for a in asked)}); "
                          "keep one")
    _, dtype, scale = asked[0] if asked else (None, None, None)
    return PrecisionSpec(amp_dtype=dtype, loss_scale=scale, channels_last=bool(cfg.get("channels_last", False)),
                         cudnn_benchmark=bool(cfg.get("cudnn_benchmark", False)))


def precision_settings(spec: PrecisionSpec, device: torch.device, deterministic: bool = False) -> PrecisionSettings:
    """What ``spec`` means on ``device``: GPU-only features are switched off on CPU with one warning.

    ``deterministic`` (the run's) keeps cudnn's benchmark mode off, since it picks kernels by timing.
    """
    if device.type != "cuda":
        ignored = [name for name, on in (("amp/fp16", spec.amp_dtype is not None),
                                         ("channels_last", spec.channels_last),
                                         ("cudnn_benchmark", spec.cudnn_benchmark)) if on]
        if ignored:
            warnings.warn(f"{', '.join(ignored)} only apply on GPU workers; this worker runs on {device.type}, "
                          "so they are off", RuntimeWarning, stacklevel=2)
        return PrecisionSettings(device_type=device.type)
    benchmark = spec.cudnn_benchmark and not deterministic
    if benchmark:
        torch.backends.cudnn.benchmark = True
    return PrecisionSettings(amp_dtype=_DTYPES[spec.amp_dtype] if spec.amp_dtype else None,
                             loss_scale=spec.loss_scale, channels_last=spec.channels_last,
                             cudnn_benchmark=benchmark, device_type="cuda")
