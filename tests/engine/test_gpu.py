"""The GPU path: mixed precision, channels_last, pinned copies, normalisation on the device.

Every test here needs a CUDA device and skips without one (CI and the development machine have none).
"""
from __future__ import annotations

import pytest
import torch

from rayseg.engine.precision import precision_settings, resolve_precision
from rayseg.engine.step import TrainStep

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device: the GPU path (bf16/fp16 autocast, GradScaler, channels_last, cudnn.benchmark, "
           "pinned host→device copies) can only run on a GPU")


def _tiny_model():
    from rayseg.config import load_config
    from rayseg.models import build_segmentor

    from conftest import REPO_ROOT

    cfg = load_config(str(REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml"))
    cfg["model"]["backbone"]["norm_cfg"] = {"type": "BN", "requires_grad": True}
    for head in ("decode_head", "auxiliary_head"):
        cfg["model"][head]["norm_cfg"] = {"type": "BN", "requires_grad": True}
    return build_segmentor(cfg["model"])


@pytest.mark.parametrize("amp", [{"enabled": True, "dtype": "bf16"}, {"enabled": True, "dtype": "fp16"}])
def test_mixed_precision_step_trains_on_gpu(amp):
    device = torch.device("cuda")
    settings = precision_settings(resolve_precision({"amp": amp, "channels_last": True, "cudnn_benchmark": True}),
                                  device)
    assert settings.amp and settings.channels_last
    assert (settings.grad_scaler() is not None) == (amp["dtype"] == "fp16")
    model = _tiny_model().to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    step = TrainStep(model, opt, settings, grad_clip={"max_norm": 35})
    img = torch.randn(2, 3, 64, 64, device=device)
    seg = torch.randint(0, 4, (2, 64, 64), device=device)
    before = next(model.parameters()).detach().clone()
    losses = [step(img, seg, i)["loss"] for i in range(1, 4)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert not torch.equal(before, next(model.parameters()))
    assert torch.backends.cudnn.benchmark


def test_bf16_logits_close_to_fp32():
    device = torch.device("cuda")
    model = _tiny_model().to(device).eval()
    img = torch.randn(1, 3, 64, 64, device=device)
    with torch.no_grad():
        ref = model(img)["out"]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            low = model(img)["out"].float()
    assert (low - ref).abs().max() < 0.1 * ref.abs().max()


def test_normalisation_runs_on_the_gpu_from_pinned_memory():
    from rayseg.datasets.ray_data import DeviceNormalizer

    pipeline = [{"type": "Normalize", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375],
                 "to_rgb": True}]
    norm = DeviceNormalizer.from_pipeline(pipeline, device=torch.device("cuda"))
    host = torch.randint(0, 255, (2, 8, 8, 3), dtype=torch.uint8).pin_memory()  # NHWC, as batches arrive
    out = norm(host.to("cuda", non_blocking=True))
    assert out.device.type == "cuda" and out.dtype == torch.float32 and out.shape == (2, 3, 8, 8)
