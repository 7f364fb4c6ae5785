"""``optimizer_config.grad_clip``: after a step the total gradient norm really is at most ``max_norm``, and the
update used the clipped gradient."""
from __future__ import annotations

import pytest
import torch

from conftest import REPO_ROOT
from rayseg.config import load_config
from rayseg.engine.precision import PrecisionSettings
from rayseg.engine.step import TrainStep
from rayseg.errors import ConfigError
from rayseg.optim import build_optimizer, check_grad_clip
from rayseg.spec.resolve import resolve_run

TINY = str(REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml")
LR = 0.1


class _Seg(torch.nn.Module):
    """A per-pixel classifier whose loss is large enough for a gradient norm well above 1."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)
        self.cls = torch.nn.Conv2d(4, 3, 1)

    def forward(self, img, seg):
        logits = self.cls(torch.relu(self.conv(img)))
        return {"decode.loss_ce": 100.0 * torch.nn.functional.cross_entropy(logits, seg)}


def _grad_norm(model):
    return float(torch.linalg.vector_norm(torch.stack([p.grad.detach().norm() for p in model.parameters()])))


def _weights(model):
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def _one_step(grad_clip, precision=None):
    torch.manual_seed(0)
    model = _Seg()
    optimizer = build_optimizer(model, {"type": "SGD", "lr": LR})  # plain SGD: the update is lr × gradient
    step = TrainStep(model, optimizer, precision or PrecisionSettings(), grad_clip=grad_clip)
    before = _weights(model)
    img, seg = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    assert step(img, seg, iteration=1) is not None
    return _grad_norm(model), float((_weights(model) - before).norm())


def test_grad_clip_from_the_config_bounds_the_total_norm():
    max_norm = 0.5
    spec = resolve_run(load_config(TINY, [f"optimizer_config.grad_clip={{max_norm: {max_norm}}}"]),
                       work_dir="/tmp/rayseg-grad-clip/run")
    assert spec.optim.grad_clip == {"max_norm": max_norm}

    unclipped_norm, unclipped_update = _one_step(None)
    assert unclipped_norm > 10 * max_norm  # without clipping the gradient is far above the bound
    assert unclipped_update == pytest.approx(LR * unclipped_norm, rel=1e-4)

    clipped_norm, clipped_update = _one_step(spec.optim.grad_clip)
    assert clipped_norm <= max_norm * (1 + 1e-5)
    assert clipped_norm == pytest.approx(max_norm, rel=1e-4)  # scaled down to the bound, not zeroed
    assert clipped_update == pytest.approx(LR * clipped_norm, rel=1e-4)  # the step used the clipped gradient


def test_grad_clip_with_an_fp16_loss_scale_clips_the_unscaled_gradient():
    # A static scale: the dynamic one starts at 2^16, overflows fp16 on the first step and skips it.
    fp16 = PrecisionSettings(amp_dtype=torch.float16, loss_scale=8.0, device_type="cpu")
    clipped_norm, clipped_update = _one_step({"max_norm": 0.5}, fp16)
    assert clipped_norm <= 0.5 * (1 + 1e-3) and clipped_update == pytest.approx(LR * clipped_norm, rel=1e-2)


@pytest.mark.parametrize("grad_clip,match", [
    ({"norm_type": 2}, r"^optimizer_config.grad_clip.max_norm: required"),
    ({"max_norm": 0}, r"^optimizer_config.grad_clip.max_norm: expected a positive number"),
    ({"max_norm": 1, "max_nrm": 2}, r"^optimizer_config.grad_clip.max_nrm: not an argument of clip_grad_norm_"),
])
def test_bad_grad_clip_is_a_config_error(grad_clip, match):
    with pytest.raises(ConfigError, match=match):
        check_grad_clip(grad_clip)
    check_grad_clip({"max_norm": 35, "norm_type": 2})  # MMSeg's usual setting
