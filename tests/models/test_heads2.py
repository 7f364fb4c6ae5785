"""Training paths and details of NLHead, DAHead, ISAHead and PointHead that the logit fixtures do not reach
(tests/models/test_mmseg_equivalence.py checks their inference against MMSeg: nonlocal, danet, isanet,
pointrend)."""
import os

import pytest
import torch

from rayseg.config import load_config
from rayseg.errors import ConfigError
from rayseg.engine.checkpoint import load_model_weights, load_weights_file
from rayseg.models import build_head, build_segmentor
from rayseg.models.heads.point_head import point_sample

torch.set_num_threads(1)
FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "mmseg")


def fixture_model(arch):
    model = build_segmentor(load_config(os.path.join(FIXTURES, f"{arch}.yaml"))["model"])
    path = os.path.join(FIXTURES, f"{arch}.pth")
    load_model_weights(model, load_weights_file(path)["state_dict"], path)
    return model


def test_danet_trains_on_three_outputs_and_predicts_with_pam_cam():
    model = fixture_model("danet")
    model.train()
    losses = model(torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32)))
    assert {f"decode.{p}.{k}" for p in ("pam_cam", "pam", "cam") for k in ("loss_ce", "acc_seg")} <= set(losses)
    sum(v for k, v in losses.items() if "loss" in k).backward()
    head = model.decode_head
    assert head.pam_conv_seg.weight.grad is not None and head.cam_conv_seg.weight.grad is not None
    head.eval()
    feats = model.extract_feat(torch.randn(1, 3, 32, 32))
    with torch.no_grad():
        assert torch.equal(head(feats), head.forward_all(feats)[0])


def test_pointrend_losses_and_refinement():
    model = fixture_model("pointrend")
    model.train()
    losses = model(torch.randn(2, 3, 64, 64), torch.randint(0, 3, (2, 64, 64)))
    assert {"decode_0.loss_ce", "decode_1.pointloss_ce", "decode_1.acc_point"} <= set(losses)
    sum(v for k, v in losses.items() if "loss" in k).backward()
    assert model.decode_head[1].fc_seg.weight.grad is not None
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.extract_feat(x)
        coarse = model.decode_head[0](feats)
        model.decode_head[1].subdivision_steps = 1  # one step: the 2x upsampled logits, 100 cells replaced
        refined = model.decode_head[1](feats, coarse)
        plain = torch.nn.functional.interpolate(coarse, scale_factor=2, mode="bilinear", align_corners=False)
        changed = (refined - plain).abs().amax(1) > 1e-6
        assert refined.shape == plain.shape and changed.sum() == 100


def test_point_sample_is_grid_sample_on_cell_centres():
    img = torch.arange(12.0).reshape(1, 1, 3, 4)
    points = torch.tensor([[[0.125, 1 / 6], [0.875, 5 / 6]]])  # centres of cells (0, 0) and (2, 3)
    assert torch.allclose(point_sample(img, points), torch.tensor([[[0.0, 11.0]]]), atol=1e-5)


def test_point_training_sampling_prefers_uncertain_points():
    head = build_head(dict(type="PointHead", in_channels=[8], in_index=[0], channels=8, num_classes=3,
                           num_points=40, oversample_ratio=3, importance_sample_ratio=1.0))
    logits = torch.zeros(1, 3, 8, 8)
    logits[:, 0] = 10.0
    logits[:, :, :, 4:] = 0.0  # right half: all classes tie (most uncertain)
    torch.manual_seed(0)
    points = head.get_points_train(logits)
    assert points.shape == (1, 40, 2)
    assert (points[0, :, 0] > 0.45).float().mean() > 0.9


@pytest.mark.parametrize("cfg, key", [
    (dict(type="NLHead", mode="gaussian"), "mode"), (dict(type="NLHead", num_convs=1), "num_convs"),
    (dict(type="ISAHead", isa_channels=4, down_factor=8), "down_factor"),
    (dict(type="PointHead", norm_cfg=dict(type="BN")), "norm_cfg"),
    (dict(type="PointHead", importance_sample_ratio=1.5), "importance_sample_ratio")])
def test_bad_arguments_are_config_errors(cfg, key):
    base = dict(in_channels=64, in_index=3, channels=8, num_classes=3)
    if cfg["type"] == "PointHead":
        base = dict(in_channels=[8], in_index=[0], channels=8, num_classes=3)
    with pytest.raises(ConfigError, match=key):
        build_head(dict(base, **cfg))
