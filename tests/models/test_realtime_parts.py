"""Behaviour of the real-time zoo parts beyond the MMSeg logits fixtures (tests/fixtures/mmseg/lraspp_*,
bisenetv2_fcn, stdc*): LR-ASPP's image pool, mmcv's adaptive padding, STDCHead's boundary targets, and the STDC
release converter's keys against STDCNet's state dict."""
import re

import pytest
import torch
import torch.nn as nn

from rayseg.models import build_backbone, build_head
from rayseg.models.backbones._realtime_layers import Conv2dAdaptivePadding
from rayseg.models.converters import convert_state_dict
from rayseg.models.heads.lraspp_head import _LRASPPPool

torch.set_num_threads(1)


@pytest.mark.parametrize("size", [(49, 49), (60, 130), (98, 70)])
def test_lraspp_pool_is_mmseg_avgpool_where_mmseg_runs(size):
    x = torch.randn(1, 2, *size)
    expected = nn.AvgPool2d(kernel_size=49, stride=(16, 20))(x)
    assert torch.allclose(_LRASPPPool()(x), expected, atol=1e-6)


def test_lraspp_pool_is_global_on_small_maps():
    x = torch.randn(2, 3, 6, 8)  # MMSeg's AvgPool2d(49) raises here
    assert torch.allclose(_LRASPPPool()(x), x.mean(dim=(2, 3), keepdim=True))
    x = torch.randn(1, 3, 30, 70)  # one side below 49: that side pools whole
    assert torch.allclose(_LRASPPPool()(x), nn.functional.avg_pool2d(x, (30, 49), (16, 20)), atol=1e-6)


@pytest.mark.parametrize("size", [(8, 8), (7, 9)])
def test_adaptive_padding_is_tf_same(size):
    conv = Conv2dAdaptivePadding(2, 3, 3, stride=2, padding=1, bias=False)
    x = torch.randn(1, 2, *size)
    out = conv(x)
    assert out.shape[2:] == (-(-size[0] // 2), -(-size[1] // 2))
    ph, pw = [max((-(-s // 2) - 1) * 2 + 3 - s, 0) for s in size]
    ref = nn.functional.conv2d(nn.functional.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2]), conv.weight,
                               stride=2)
    assert torch.allclose(out, ref, atol=1e-6)


def test_stdc_head_boundary_targets_and_losses():
    head = build_head(dict(type="STDCHead", in_channels=8, channels=4, num_convs=1, concat_input=False, in_index=0,
                           num_classes=2, loss_decode=[
                               dict(type="CrossEntropyLoss", loss_name="loss_ce", use_sigmoid=True),
                               dict(type="DiceLoss", loss_name="loss_dice")]))
    assert {"laplacian_kernel", "fusion_kernel"} <= set(head.state_dict())
    label = torch.zeros(1, 1, 16, 16, dtype=torch.long)
    assert head.boundary_targets(label).sum() == 0  # a constant map has no boundary
    label[..., :, 8:] = 1
    targets = head.boundary_targets(label)
    assert targets.shape == label.shape and set(targets.unique().tolist()) == {0, 1}
    assert targets[..., 7:9].sum() > 0 and targets[..., :, :4].sum() == 0  # around the edge only
    losses = head.losses(torch.randn(1, 2, 4, 4, requires_grad=True), label[:, 0])
    assert set(losses) == {"loss_ce", "loss_dice", "acc_seg"}
    (losses["loss_ce"] + losses["loss_dice"]).backward()


def _release_keys(net):
    """STDC's official ImageNet layout (features.N, conv_list, avd_layer, plus its classifier), written from
    STDCNet's stages in order: what MichaelFan01's STDCNet813 / STDCNet1446 checkpoints hold."""
    blocks = ["0", "1"] + [f"{s}.{b}" for s in (2, 3, 4) for b in range(len(net.stages[s]))]
    keys = {}
    for key, value in net.state_dict().items():
        m = re.match(r"stages\.(\d+(?:\.\d+)?)\.(.*)", key)
        stage = m[1] if m[1] in blocks and not re.match(r"\d", m[2]) else ".".join(key.split(".")[1:3])
        rest = key[len(f"stages.{stage}."):]
        rest = rest.replace("layers.", "conv_list.").replace("downsample.conv.", "avd_layer.0.")
        rest = rest.replace("downsample.bn.", "avd_layer.1.")
        keys[f"features.{blocks.index(stage)}.{rest}"] = value
    keys["conv_last.conv.weight"] = torch.zeros(1)
    keys["fc.weight"] = torch.zeros(1)
    return keys


@pytest.mark.parametrize("kind,stdc_type", [("stdc1", "STDCNet1"), ("stdc2", "STDCNet2")])
def test_stdc_converter_keys_are_stdcnet_state_dict(kind, stdc_type):
    net = build_backbone(dict(type="STDCNet", stdc_type=stdc_type, channels=(4, 8, 16, 16, 32)))
    release = _release_keys(net)
    assert any(k.startswith("features.") and ".avd_layer.0." in k for k in release)
    converted = convert_state_dict(kind, release)
    assert set(converted) == set(net.state_dict())
    net.load_state_dict(converted, strict=True)
