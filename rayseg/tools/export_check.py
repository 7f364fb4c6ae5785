"""Check an exported model against PyTorch, running the file in a Python that cannot import rayseg.

:func:`run_exported` hands files and inputs to ``run_exported.py`` in a fresh interpreter (onnxruntime
for ONNX, ``torch.jit.load`` for TorchScript) whose ``sys.path`` leaves out the repository and the
editable install; :func:`check_export` compares what comes back with the model's own computation
(``export.reference_model``: no export rewrites), at the export size and (``dynamic``) at another size
and batch.
"""
from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import numpy as np
import torch

from rayseg.errors import ConfigError
from rayseg.tools.export import ExportModel, example_input

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "run_exported.py")
TOLERANCE = 1e-4  # of the logits' scale: max |exported - PyTorch| / max(1, max |PyTorch|)


@dataclass
class CheckResult:
    """One comparison at one input shape.

    Logits: the largest difference, which must stay within TOLERANCE of the logits' scale. Label maps:
    the share of pixels whose label differs, and of those the share where PyTorch's two best classes
    are not within TOLERANCE of each other (a near tie may fall either way); those must be none.
    """

    output: str  # "logits" or "seg"
    input_shape: Tuple[int, ...]
    output_shape: Tuple[int, ...]
    expected_shape: Tuple[int, ...]
    scale: float  # max |PyTorch logits|
    max_abs_diff: float = 0.0  # logits
    label_mismatch: float = 0.0  # seg: share of pixels whose label differs
    clear_mismatch: float = 0.0  # seg: share that differs where the top two classes are not a near tie

    @property
    def ok(self) -> bool:
        if self.output_shape != self.expected_shape:
            return False
        if self.output == "logits":
            return self.max_abs_diff <= TOLERANCE * max(1.0, self.scale)
        return self.clear_mismatch == 0.0

    def format(self) -> str:
        shape = "x".join(str(v) for v in self.input_shape)
        if self.output_shape != self.expected_shape:
            what = f"output shape {self.output_shape}, expected {self.expected_shape}"
        elif self.output == "logits":
            what = f"max |diff| {self.max_abs_diff:.3g} (logits up to {self.scale:.3g})"
        else:
            what = (f"labels differ on {100 * self.label_mismatch:.4f}% of pixels "
                    f"({100 * self.clear_mismatch:.4f}% outside near ties)")
        return f"input {shape}: {what}: {'ok' if self.ok else 'MISMATCH'}"


def run_exported(items: Sequence[Tuple[str, str, np.ndarray]], timeout: float = 600) -> List[np.ndarray]:
    """Outputs of exported models in a Python without rayseg: ``items`` are ``(path, format, input)``."""
    with tempfile.TemporaryDirectory(prefix="rayseg-export-check-") as tmp:
        manifest = []
        for i, (path, fmt, x) in enumerate(items):
            np.save(os.path.join(tmp, f"in{i}.npy"), x)
            manifest.append({"model": os.path.abspath(path), "format": fmt, "input": os.path.join(tmp, f"in{i}.npy"),
                             "output": os.path.join(tmp, f"out{i}.npy")})
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump({"items": manifest, "site_packages": site.getsitepackages()}, f)
        # cwd: the temporary folder, so not even a relative path can reach the repository.
        proc = subprocess.run([sys.executable, "-I", "-S", RUNNER, os.path.join(tmp, "manifest.json")], cwd=tmp,
                              capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise ConfigError(f"running the exported model outside rayseg failed:\n{proc.stderr.strip()[-3000:]}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        if report["rayseg_modules"]:
            raise ConfigError(f"the exported model loaded rayseg modules {report['rayseg_modules']}")
        return [np.load(m["output"]) for m in manifest]


def check_shapes(shape: Tuple[int, int], dynamic: bool) -> List[Tuple[int, int, int]]:
    """(batch, H, W) to check: the export's, and for a dynamic export also a larger size and batch 2."""
    h, w = shape
    return [(1, h, w)] + ([(2, h + 32, w + 64)] if dynamic else [])


def compare(out: np.ndarray, reference: ExportModel, x: torch.Tensor) -> CheckResult:
    """``out`` (from the exported file) against ``reference`` (``export.reference_model``) run on ``x``."""
    saved = reference.output
    reference.output = "logits"  # label maps are compared knowing where the classes are close
    try:
        with torch.no_grad():
            logits = reference(x).numpy()
    finally:
        reference.output = saved
    scale = float(np.abs(logits).max())
    if saved == "logits":
        result = CheckResult("logits", tuple(x.shape), tuple(out.shape), tuple(logits.shape), scale)
        if result.output_shape == result.expected_shape:
            result.max_abs_diff = float(np.abs(out - logits).max())
        return result
    expected = logits.argmax(axis=1)[:, None]
    result = CheckResult("seg", tuple(x.shape), tuple(out.shape), tuple(expected.shape), scale)
    if result.output_shape == result.expected_shape:
        differ = out != expected
        top2 = np.sort(logits, axis=1)[:, -2:]
        near_tie = (top2[:, 1] - top2[:, 0])[:, None] <= TOLERANCE * max(1.0, scale)
        result.label_mismatch = float(differ.mean())
        result.clear_mismatch = float((differ & ~near_tie).mean())
    return result


def check_export(reference: ExportModel, path: str, fmt: str, shape: Tuple[int, int], dynamic: bool = False,
                 input_dtype: str = "float32") -> List[CheckResult]:
    """Run the file at ``path`` outside rayseg and compare it with ``reference`` (``export.reference_model``
    of the exported model) at :func:`check_shapes`."""
    inputs = [example_input((h, w), n, reference.with_normalize, input_dtype, seed=1 + i)
              for i, (n, h, w) in enumerate(check_shapes(shape, dynamic))]
    outs = run_exported([(path, fmt, x.numpy()) for x in inputs])
    return [compare(out, reference, x) for out, x in zip(outs, inputs)]
