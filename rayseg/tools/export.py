"""Export a segmentor for deployment: an ONNX file or a TorchScript archive that runs without rayseg.

The exported graph is :class:`ExportModel`: the segmentor's inference (``test_cfg.mode`` whole, or
slide at a fixed size) in eval mode, optionally with the config's Normalize folded in front, ending in
either

- ``seg`` (default, what MMSeg's ``pytorch2onnx.py`` and mmdeploy give): the label map, int64
  (N, 1, H, W), the argmax over classes at the input size;
- ``logits``: float32 (N, num_classes, H, W) scores at the input size.

The input (named ``input``; the output is ``output``) is an NCHW batch: already normalised float32, or
with ``with_normalize`` the image as OpenCV decodes it (BGR, 0-255, uint8 or float32), normalised
inside the graph as the config's test pipeline says (mean, std, to_rgb). With ``dynamic`` the batch,
height and width are free (ONNX ``dynamic_axes``; a traced TorchScript keeps the size arithmetic).

ONNX files come from torch's TorchScript-based exporter (``dynamo=False``): it needs no extra package
to write the file, handles ``dynamic_axes``, and is what MMSeg's tool used. Class names, palette and
the input convention go into the file's metadata (ONNX ``metadata_props``; ``rayseg.json`` among a
TorchScript archive's extra files).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.tools.export_ops import export_patches, prepare_for_export
from rayseg.tools.model import run_checked

FORMATS = ("onnx", "torchscript")
OUTPUTS = ("seg", "logits")
INPUT_DTYPES = ("float32", "uint8")
DEFAULT_OPSET = 17


class ExportModel(nn.Module):
    """The deployed computation: [normalise] → segmentor inference → logits or label map (N, 1, H, W).

    ``normalize`` is ``(mean, std, to_rgb)`` of the test pipeline's Normalize, or None for an input
    normalised already.
    """

    def __init__(self, segmentor: nn.Module, output: str = "seg",
                 normalize: Optional[Tuple[Sequence[float], Sequence[float], bool]] = None):
        super().__init__()
        if output not in OUTPUTS:
            raise ConfigError(f"output must be one of {OUTPUTS}, got {output!r}")
        self.segmentor = segmentor
        self.output = output
        self.with_normalize = normalize is not None
        if normalize is not None:
            mean, std, to_rgb = normalize
            self.to_rgb = bool(to_rgb)
            self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor([float(v) for v in std]).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_normalize:
            x = x.float()
            if self.to_rgb:  # BGR (OpenCV's order, the pipeline's) → RGB, as a gather ONNX knows
                x = x[:, [2, 1, 0]]
            x = (x - self.mean) / self.std
        logits = self.segmentor.inference(x)
        return logits if self.output == "logits" else logits.argmax(dim=1, keepdim=True)


def pipeline_normalize(cfg: Dict[str, Any]) -> Tuple[Sequence[float], Sequence[float], bool]:
    """``(mean, std, to_rgb)`` of the config's ``data.test.pipeline`` Normalize (also inside MultiScaleFlipAug)."""
    from rayseg.datasets import split_device_steps

    try:
        pipeline = cfg["data"]["test"]["pipeline"]
    except (KeyError, TypeError) as exc:
        raise ConfigError("--with-normalize: the config has no data.test.pipeline to read Normalize from") from exc
    _, norm = split_device_steps(pipeline)
    if norm is None:
        raise ConfigError("--with-normalize: data.test.pipeline has no Normalize step")
    return norm["mean"], norm["std"], bool(norm.get("to_rgb", True))


def metadata(model: nn.Module, export: ExportModel, fmt: str, input_dtype: str, dynamic: bool) -> Dict[str, str]:
    """What a deployment needs to read the output: classes, palette, input and output conventions."""
    meta = {"producer": "rayseg jobs/export.py", "format": fmt, "output": export.output,
            "input": ("image as OpenCV decodes it (BGR), NCHW, 0-255, " + input_dtype) if export.with_normalize
            else "normalised image, NCHW, float32",
            "dynamic": str(bool(dynamic)).lower(),
            "classes": json.dumps(list(getattr(model, "CLASSES", ()) or ())),
            "palette": json.dumps(list(getattr(model, "PALETTE", ()) or ()))}
    if export.with_normalize:
        meta.update(mean=json.dumps(export.mean.flatten().tolist()), std=json.dumps(export.std.flatten().tolist()),
                    to_rgb=str(export.to_rgb).lower())
    return meta


def example_input(shape: Tuple[int, int], batch: int = 1, with_normalize: bool = False,
                  input_dtype: str = "float32", seed: int = 0) -> torch.Tensor:
    """A random input of the exported model's kind: an image (0-255) with Normalize folded in, else
    standard-normal values (a normalised image)."""
    gen = torch.Generator().manual_seed(seed)
    if not with_normalize:
        return torch.randn(batch, 3, *shape, generator=gen)
    img = torch.randint(0, 256, (batch, 3, *shape), generator=gen, dtype=torch.uint8)
    return img if input_dtype == "uint8" else img.float()


def check_options(model: nn.Module, fmt: str, output: str, input_dtype: str, with_normalize: bool,
                  dynamic: bool) -> None:
    """Refuse option combinations the export cannot honour, naming the option."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {FORMATS}, got {fmt!r}")
    if output not in OUTPUTS:
        raise ConfigError(f"--output must be one of {OUTPUTS}, got {output!r}")
    if input_dtype not in INPUT_DTYPES:
        raise ConfigError(f"--input-dtype must be one of {INPUT_DTYPES}, got {input_dtype!r}")
    if input_dtype == "uint8" and not with_normalize:
        raise ConfigError("--input-dtype uint8 needs --with-normalize (a uint8 input is an unnormalised image)")
    test_cfg = getattr(model, "test_cfg", None) or {}
    if dynamic and test_cfg.get("mode") == "slide":
        raise ConfigError("--dynamic cannot be used with test_cfg.mode 'slide': the window grid depends on the "
                          "image size; export at a fixed --shape, or whole-image inference with "
                          "--cfg-options model.test_cfg.mode=whole")


def build_export_model(model: nn.Module, cfg: Dict[str, Any], fmt: str = "onnx", output: str = "seg",
                       with_normalize: bool = False) -> ExportModel:
    """The :class:`ExportModel` around a traceable copy of ``model`` (``prepare_for_export``)."""
    normalize = pipeline_normalize(cfg) if with_normalize else None
    return ExportModel(prepare_for_export(model, onnx=fmt == "onnx"), output=output, normalize=normalize).eval()


def reference_model(model: nn.Module, cfg: Dict[str, Any], output: str = "seg",
                    with_normalize: bool = False) -> ExportModel:
    """The exported computation around ``model`` itself, without the export rewrites (its own pooling,
    attention and BatchNorm modules): what an exported file is checked against."""
    normalize = pipeline_normalize(cfg) if with_normalize else None
    return ExportModel(model.eval(), output=output, normalize=normalize).eval()


@contextlib.contextmanager
def _tracing(what: str) -> Iterator[None]:
    """Tracing under ``export_patches``, quietly, with the tracer's errors as ConfigErrors.

    Tracing warns about every shape it records and the legacy exporter about itself; the export's check
    (``export_check``) is what tells whether the graph is right.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        # torch 2.x deprecates torch.jit.trace/save in favour of torch.export; they still work, and
        # TorchScript is what a C++ (libtorch) deployment loads.
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+` is deprecated.*", category=FutureWarning)
        try:
            with torch.no_grad(), export_patches():
                yield
        except Exception as exc:  # unsupported operators and the like: about this model, not a crash
            raise ConfigError(f"{what} failed: {type(exc).__name__}: {_first_line(exc)}") from exc


def export_onnx(export: ExportModel, x: torch.Tensor, path: str, opset: int = DEFAULT_OPSET,
                dynamic: bool = False, meta: Optional[Dict[str, str]] = None) -> None:
    """Write ``export`` traced on ``x`` to ``path`` as ONNX (checked by ``onnx.checker``)."""
    try:
        import onnx
    except ModuleNotFoundError as exc:
        raise ConfigError("ONNX export needs the onnx package: pip install -e '.[export]'") from exc
    axes = {"input": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 2: "height", 3: "width"}}
    buf = io.BytesIO()
    with _tracing(f"ONNX export (opset {opset})"):
        torch.onnx.export(export, (x,), buf, dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=["output"], dynamic_axes=axes if dynamic else None, do_constant_folding=True)
    proto = onnx.load_from_string(buf.getvalue())
    for key, value in (meta or {}).items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    onnx.save(proto, path)


def export_torchscript(export: ExportModel, x: torch.Tensor, path: str,
                       meta: Optional[Dict[str, str]] = None) -> None:
    """Write ``export`` traced on ``x`` to ``path`` with ``torch.jit.save`` (metadata as ``rayseg.json``)."""
    with _tracing("TorchScript tracing"):
        traced = torch.jit.trace(export, (x,), check_trace=False)
        torch.jit.save(traced, path, _extra_files={"rayseg.json": json.dumps(meta or {})})


def _first_line(exc: BaseException) -> str:
    """The exporter's message without the graph dump it appends."""
    text = str(exc).strip()
    return text.split("\n", 1)[0][:500]


def export_model(model: nn.Module, cfg: Dict[str, Any], path: str, fmt: str = "onnx",
                 shape: Tuple[int, int] = (512, 1024), output: str = "seg", dynamic: bool = False,
                 opset: int = DEFAULT_OPSET, with_normalize: bool = False, input_dtype: str = "float32") -> ExportModel:
    """Export ``model`` (a loaded segmentor, see ``tools.model.build_model``) to ``path``; returns the
    :class:`ExportModel` that was traced (compare the file with :func:`reference_model`, see
    ``export_check``)."""
    check_options(model, fmt, output, input_dtype, with_normalize, dynamic)
    export = build_export_model(model, cfg, fmt, output, with_normalize)
    x = example_input(shape, 1, with_normalize, input_dtype)
    with torch.no_grad():
        run_checked(export, x, shape=shape)  # a size the model refuses is reported as such, not as an export bug
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    meta = metadata(model, export, fmt, input_dtype, dynamic)
    if fmt == "onnx":
        export_onnx(export, x, path, opset=opset, dynamic=dynamic, meta=meta)
    else:
        export_torchscript(export, x, path, meta=meta)
    return export
