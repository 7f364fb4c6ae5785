"""jobs/export.py and rayseg.tools.export*: exported files run without rayseg and match PyTorch.

The per-family test exports every model base config in configs/_base_/models (full width, the deep
transformers cut to a few blocks, 32×32 input) to ONNX (dynamic axes, checked at two sizes and batch sizes)
and TorchScript, and runs the files in a Python that cannot import rayseg.
"""
import gc
import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from rayseg.config import load_config
from rayseg.engine.sync_bn import CPUSyncBatchNorm
from rayseg.errors import ConfigError
from rayseg.inference import Predictor
from rayseg.tools.export import export_model, reference_model
from rayseg.tools.export_check import RUNNER, TOLERANCE, compare, run_exported
from rayseg.tools.export_ops import (ExportableAdaptiveAvgPool2d, ExportableMultiheadAttention, export_patches,
                                     prepare_for_export, revert_sync_batchnorm)
from rayseg.tools.model import build_model
from tool_helpers import REPO, TINY, load_job, randomise_batchnorm, run_job, tiny_checkpoint

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

# Model families (configs/_base_/models/*.yaml) that cannot be exported, with the reason; docs/tools.md
# lists the same. Every family exports today, to ONNX with dynamic axes too.
NOT_EXPORTABLE = {}
# ISA pads the map to a multiple of its group size with sizes computed in Python from the traced input:
# a dynamic graph keeps the traced size's padding. TorchScript and fixed-size ONNX export are exact.
NOT_DYNAMIC_ONNX = {"isanet_r50-d8": "ISAHead's padding to a multiple of down_factor is fixed at the traced size"}


# ------------------------------------------------------------------ the rewrites
@pytest.mark.parametrize("size, bins", [((8, 8), (1, 2, 3, 6)), ((7, 9), (2, 5)), ((3, 4), (6, 6)),
                                        ((64, 128), (3, 6))])
def test_exportable_adaptive_pool_matches_torch(size, bins):
    x = torch.randn(2, 3, *size)
    for out in (bins[0], tuple(bins[-2:]), (None, bins[-1])):
        ref = nn.AdaptiveAvgPool2d(out)(x)
        got = ExportableAdaptiveAvgPool2d(out)(x)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_first", [True, False])
def test_exportable_attention_matches_torch(batch_first):
    mha = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    q, kv = torch.randn(2, 10, 16), torch.randn(2, 3, 16)
    if not batch_first:
        q, kv = q.transpose(0, 1), kv.transpose(0, 1)
    with torch.no_grad():
        ref = mha(q, kv, kv, need_weights=False)[0]
        got, weights = ExportableMultiheadAttention(mha)(q, kv, kv, need_weights=False)
    assert weights is None
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_sync_batchnorm_reverted_with_its_statistics():
    net = nn.Sequential(nn.Conv2d(3, 4, 1), CPUSyncBatchNorm(4), nn.Sequential(nn.SyncBatchNorm(4)))
    randomise_batchnorm(net)
    net.eval()
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        ref = nn.functional.batch_norm(net[1](net[0](x)), net[2][0].running_mean, net[2][0].running_var,
                                       net[2][0].weight, net[2][0].bias)
        plain = revert_sync_batchnorm(net)
        assert type(plain[1]) is nn.BatchNorm2d and type(plain[2][0]) is nn.BatchNorm2d
        torch.testing.assert_close(plain(x), ref)


def test_prepare_for_export_copies_and_patches_are_scoped():
    from rayseg.models import utils as model_utils
    from rayseg.models.heads import psp_head

    model = build_model(load_config(str(TINY)))
    model.train()
    ready = prepare_for_export(model, onnx=True)
    assert model.training and not ready.training and ready is not model
    assert all(not p.requires_grad for p in ready.parameters()) and all(p.requires_grad for p in model.parameters())
    original = model_utils.resize
    with export_patches():
        assert psp_head.resize is not original and not torch.backends.mha.get_fastpath_enabled()
    assert psp_head.resize is original and torch.backends.mha.get_fastpath_enabled()


# ------------------------------------------------------------------ the job
def test_job_onnx_seg_with_normalize_matches_rayseg_inference(tmp_path):
    """A dynamic ONNX file taking uint8 BGR images gives the labels of rayseg's own inference path
    (test pipeline's Normalize on the device, then predict), at two sizes and batch sizes."""
    ckpt, out = tmp_path / "w.pth", tmp_path / "tiny.onnx"
    tiny_checkpoint(ckpt)
    proc = run_job("export.py", TINY, ckpt, "--format", "onnx", "--shape", 64, 48, "--dynamic", "--with-normalize",
                   "--input-dtype", "uint8", "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "input 'input': (N, 3, H, W), dynamic, image (BGR, 0-255, uint8), normalised inside" in proc.stdout
    assert "output 'output': int64 label map (N, 1, H, W)" in proc.stdout
    assert "verified with onnxruntime in a Python without rayseg:" in proc.stdout
    assert proc.stdout.count(": ok") == 2 and "MISMATCH" not in proc.stdout

    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == ["bg", "square", "circle", "triangle"]
    assert meta["output"] == "seg" and meta["to_rgb"] == "true" and meta["dynamic"] == "true"
    assert [i.name for i in proto.graph.input] == ["input"] and proto.graph.input[0].type.tensor_type.elem_type == 2

    cfg = load_config(str(TINY))
    predictor = Predictor.for_pipeline(build_model(cfg, str(ckpt)), cfg["data"]["test"]["pipeline"])
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8) for n, h, w in ((1, 64, 48), (3, 40, 72))]
    outs = run_exported([(str(out), "onnx", np.ascontiguousarray(img.transpose(0, 3, 1, 2))) for img in images])
    for img, got in zip(images, outs):
        expected = predictor.predict_batch(torch.from_numpy(img), img.shape[1:3]).numpy()
        assert got.dtype == np.int64 and got.shape == (img.shape[0], 1, *img.shape[1:3])
        assert (got[:, 0] == expected).mean() > 0.999  # any difference is a near tie (the job's check says none)


def test_job_torchscript_logits_equal_pytorch(tmp_path):
    ckpt, out = tmp_path / "w.pth", tmp_path / "tiny.pt"
    model = tiny_checkpoint(ckpt).eval()
    proc = run_job("export.py", TINY, ckpt, "--format", "torchscript", "--shape", 48, "--output", "logits",
                   "--out", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "output 'output': float32 logits (N, 4, H, W)" in proc.stdout
    assert "verified with torch.jit.load in a Python without rayseg:" in proc.stdout
    x = torch.randn(1, 3, 48, 48)
    (got,) = run_exported([(str(out), "torchscript", x.numpy())])
    with torch.no_grad():
        expected = model.inference(x).numpy()
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    extra = {"rayseg.json": ""}
    torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["rayseg.json"])["output"] == "logits"


@pytest.mark.parametrize("args, message", [
    (["--format", "onnx", "--input-dtype", "uint8"], "--input-dtype uint8 needs --with-normalize"),
    (["--format", "onnx", "--dynamic", "--cfg-options", "model.test_cfg.mode=slide", "model.test_cfg.crop_size=32",
      "model.test_cfg.stride=16"], "--dynamic cannot be used with test_cfg.mode 'slide'"),
    (["--format", "onnx", "--shape", 0], "--shape takes H W"),
    (["--format", "onnx", "--opset", 3], "ONNX export (opset 3) failed"),
])
def test_job_errors_exit_2(tmp_path, args, message, capsys):
    ckpt = tmp_path / "w.pth"
    tiny_checkpoint(ckpt)
    code = load_job("export.py").main([str(TINY), str(ckpt), "--out", str(tmp_path / "m.onnx"), *map(str, args)])
    err = capsys.readouterr().err
    assert code == 2, err
    # One "error: ..." line and no traceback; other lines may come from the session's Ray, which forwards its
    # processes' warnings (e.g. the raylet's low-disk one) into this process's stderr.
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, err


def test_missing_checkpoint_exit_2(tmp_path, capsys):
    assert load_job("export.py").main([str(TINY), str(tmp_path / "nope.pth"), "--format", "torchscript"]) == 2
    assert "nope.pth" in capsys.readouterr().err


def test_runner_hides_rayseg_even_when_its_folder_is_given(tmp_path):
    """A regular install would put rayseg in site-packages: the runner's import hook refuses it anyway, and
    the model still runs (it needs nothing of rayseg)."""
    model = torch.jit.script(nn.Conv2d(3, 2, 1))
    model.save(str(tmp_path / "conv.pt"))
    np.save(tmp_path / "x.npy", np.ones((1, 3, 2, 2), np.float32))
    manifest = tmp_path / "m.json"
    import site

    item = {"model": str(tmp_path / "conv.pt"), "format": "torchscript", "input": str(tmp_path / "x.npy"),
            "output": str(tmp_path / "y.npy")}
    manifest.write_text(json.dumps({"items": [item], "site_packages": [str(REPO), *site.getsitepackages()]}))
    proc = subprocess.run([sys.executable, "-I", "-S", RUNNER, str(manifest)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["rayseg_modules"] == [] and "hidden by run_exported.py" in report["rayseg_import_error"]
    assert str(REPO) in report["sys_path"]  # the repository was on the path, and rayseg still not importable
    assert np.load(tmp_path / "y.npy").shape == (1, 2, 2, 2)


def test_compare_flags_wrong_labels_but_not_near_ties():
    class Fixed(nn.Module):
        output, with_normalize = "seg", False

        def forward(self, x):
            return x  # the input is the logits
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1] = 1.0  # class 1 everywhere ...
    logits[0, 2, 0, 0] = 1.0 + TOLERANCE / 10  # ... but a near tie with class 2 at one pixel
    seg = np.ones((1, 1, 2, 2), np.int64)
    assert compare(seg, Fixed(), logits).ok  # class 1 at the near tie: fine either way
    seg[0, 0, 1, 1] = 0
    result = compare(seg, Fixed(), logits)
    assert not result.ok and result.clear_mismatch == 0.25 and "MISMATCH" in result.format()
    assert not compare(np.ones((1, 1, 2, 3), np.int64), Fixed(), logits).ok


# ------------------------------------------------------------------ every model family
FAMILIES = sorted(glob.glob(str(REPO / "configs" / "_base_" / "models" / "*.yaml")))


def _fewer_blocks(backbone: dict) -> dict:
    """The backbone with its repeated blocks cut to a few, widths and every block type kept: export paths do not
    depend on depth, and full-depth SETR ViT-L (24 blocks of 1024), BEiT, Swin and ConvNeXt-B made this test
    take 13 minutes on CI's 2 cores."""
    from rayseg.models.backbones.convnext import ARCH_SETTINGS

    kind = backbone.get("type")
    if kind in ("VisionTransformer", "BEiT"):  # one block per output, the outputs in the same order
        outs = backbone["out_indices"]
        count = len(outs) if isinstance(outs, (list, tuple)) else 1
        backbone.update(num_layers=count, out_indices=list(range(count)) if isinstance(outs, (list, tuple))
                        else count - 1)
    elif kind == "SwinTransformer":  # two blocks per stage: a plain and a shifted window
        backbone["depths"] = [2] * len(backbone["depths"])
    elif kind == "ConvNeXt":
        arch = backbone["arch"]
        channels = ARCH_SETTINGS[arch][1] if isinstance(arch, str) else arch["channels"]
        backbone["arch"] = {"depths": [1] * len(channels), "channels": list(channels)}
    return backbone


@pytest.mark.slow
def test_every_model_family_exports(tmp_path):
    """ONNX (dynamic axes; onnxruntime ≤ TOLERANCE of the logits' scale at 32×32 and at 48×64 batch 2)
    and TorchScript (torch.jit.load, the same check) for each model base config, weights and BatchNorm
    statistics random; families that cannot export must be exactly NOT_EXPORTABLE / NOT_DYNAMIC_ONNX."""
    torch.manual_seed(0)
    shape = (32, 32)  # the smallest size every family takes (UNet: multiples of 16; 1×1 at stride 32)
    failures, results = {}, {}
    # Families in a few groups, each group's files run by one onnxruntime/torch process (its start-up is
    # seconds) and its models freed before the next group's are built.
    for group in (FAMILIES[i:i + 9] for i in range(0, len(FAMILIES), 9)):
        exports, items = [], []
        for path in group:
            family = os.path.splitext(os.path.basename(path))[0]
            cfg = load_config(path)
            cfg["model"]["test_cfg"] = {"mode": "whole"}
            _fewer_blocks(cfg["model"]["backbone"])
            model = build_model(cfg)
            randomise_batchnorm(model)
            reference = reference_model(model, cfg, output="logits")  # the model's own modules, no rewrites
            for fmt in ("onnx", "torchscript"):
                dynamic = fmt == "onnx" and family not in NOT_DYNAMIC_ONNX
                out = str(tmp_path / f"{family}.{fmt}")
                try:
                    export_model(model, cfg, out, fmt=fmt, shape=shape, output="logits", dynamic=dynamic)
                except ConfigError as exc:
                    failures[(family, fmt)] = str(exc)
                    continue
                inputs = [torch.randn(1, 3, *shape)] + ([torch.randn(2, 3, 48, 64)] if dynamic else [])
                exports.append((family, fmt, reference, inputs, out))
                items += [(out, fmt, x.numpy()) for x in inputs]
        outs = iter(run_exported(items)) if items else iter(())
        for family, fmt, reference, inputs, out in exports:
            results[(family, fmt)] = [compare(next(outs), reference, x) for x in inputs]
            os.remove(out)
        del exports, model, reference
        gc.collect()
    bad = {key: [r.format() for r in res] for key, res in results.items() if not all(r.ok for r in res)}
    assert not bad, bad
    assert {family for family, _ in failures} == set(NOT_EXPORTABLE), failures
    assert len(results) == 2 * len(FAMILIES) - len(failures) and len(FAMILIES) >= 9
    for (family, fmt), res in results.items():
        assert len(res) == (2 if fmt == "onnx" and family not in NOT_DYNAMIC_ONNX else 1)
