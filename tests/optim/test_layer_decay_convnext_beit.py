"""MMSeg's layer-wise lr decay on rayseg's real ConvNeXt and BEiT segmentors (their parameter names, not
look-alikes): every parameter gets the layer id MMSeg's ``get_layer_id_for_convnext`` /
``get_stage_id_for_convnext`` / ``get_layer_id_for_vit`` give it, and the lr ``decay_rate^(N + 1 - id)``."""
from __future__ import annotations

import pytest
import torch

from rayseg.models import build_segmentor
from rayseg.optim import build_optimizer

_HEADS = dict(decode_head=dict(type="FCNHead", in_channels=32, in_index=2, channels=4, num_convs=1,
                               num_classes=3, norm_cfg=dict(type="BN")))


def _convnext():
    return build_segmentor(dict(type="EncoderDecoder", backbone=dict(
        type="ConvNeXt", arch=dict(depths=[1, 1, 7, 1], channels=[4, 8, 32, 16]), out_indices=[0, 1, 2, 3],
        layer_scale_init_value=1.0, gap_before_final_norm=False), **_HEADS))


def _beit():
    return build_segmentor(dict(type="EncoderDecoder", backbone=dict(
        type="BEiT", img_size=32, patch_size=8, embed_dims=32, num_layers=3, num_heads=2, out_indices=(0, 1, 2)),
        neck=dict(type="Feature2Pyramid", embed_dim=32, rescales=[2, 1, 0.5, 0.25], norm_cfg=dict(type="BN")),
        **_HEADS))


def _ids(model, constructor, paramwise):
    opt = build_optimizer(model, {"type": "AdamW", "lr": 1.0, "weight_decay": 0.05, "constructor": constructor,
                                  "paramwise_cfg": paramwise})
    out = {}
    for group in opt.param_groups:
        for name in group["param_names"]:
            out[name] = (group["layer_id"], group["lr"], group["weight_decay"])
    assert set(out) == {n for n, p in model.named_parameters() if p.requires_grad}
    return out


def _mmseg_convnext_layer_id(name, n):
    """MMSeg 1.2.2's get_layer_id_for_convnext, written out per rayseg parameter name."""
    parts = name.split(".")
    if name.startswith("backbone.downsample_layers"):
        return {0: 0, 1: 2, 2: 3, 3: n}[int(parts[2])]
    if name.startswith("backbone.stages"):
        stage, block = int(parts[2]), int(parts[3])
        return {0: 1, 1: 2, 2: 3 + block // 3, 3: n}[stage]
    return n + 1  # backbone.norm{i}, heads


def test_convnext_layer_wise_ids_and_lrs():
    model = _convnext()
    ids = _ids(model, "LearningRateDecayOptimizerConstructor", dict(num_layers=6, decay_rate=0.5))
    for name, (lid, lr, wd) in ids.items():
        assert lid == _mmseg_convnext_layer_id(name, 6), name
        assert lr == pytest.approx(0.5 ** (6 + 1 - lid)), name
        param = dict(model.named_parameters())[name]
        assert wd == (0.0 if param.ndim == 1 or name.endswith(".bias") else 0.05), name
    assert ids["backbone.stages.2.6.depthwise_conv.weight"][0] == 5  # 3 + 6 // 3
    assert ids["backbone.stages.1.0.gamma"][0] == 2 and ids["backbone.norm3.weight"][0] == 7
    assert ids["decode_head.conv_seg.weight"][1] == pytest.approx(1.0)


def test_convnext_stage_wise_ids():
    ids = _ids(_convnext(), "LearningRateDecayOptimizerConstructor",
               dict(num_layers=12, decay_rate=0.9, decay_type="stage_wise"))
    for name, (lid, _, _) in ids.items():
        if name.startswith("backbone.downsample_layers"):
            assert lid == 0, name
        elif name.startswith("backbone.stages"):
            assert lid == int(name.split(".")[2]) + 1, name
        else:
            assert lid == 13, name


def test_beit_layer_ids_and_lrs():
    ids = _ids(_beit(), "LayerDecayOptimizerConstructor", dict(num_layers=3, layer_decay_rate=0.5))
    for name, (lid, lr, _) in ids.items():
        if name == "backbone.cls_token" or name.startswith("backbone.patch_embed"):
            expected = 0
        elif name.startswith("backbone.layers"):
            expected = int(name.split(".")[2]) + 1
        else:
            expected = 4  # neck and heads
        assert lid == expected, name
        assert lr == pytest.approx(0.5 ** (3 + 1 - lid)), name
    assert ids["backbone.layers.2.attn.relative_position_bias_table"][:2] == (3, pytest.approx(0.5))
    assert ids["backbone.layers.0.gamma_1"][2] == 0.0 and ids["backbone.layers.0.attn.qkv.weight"][2] == 0.05
    assert ids["neck.upsample_2x.0.weight"][0] == 4


def test_beit_smaller_grid_matches_cropping_and_larger_is_refused():
    """A grid smaller than img_size's reads the table at its own offsets: the same bias as MMSeg's index
    restricted to those tokens; a larger grid is a ConfigError naming slide inference."""
    from rayseg.errors import ConfigError
    from rayseg.models.backbones.beit import relative_position_index

    full = relative_position_index(4, 4, 4, 4)
    sub = relative_position_index(2, 3, 4, 4)
    tokens = [0] + [1 + y * 4 + x for y in range(2) for x in range(3)]
    assert torch.equal(sub, full[tokens][:, tokens])
    backbone = _beit().backbone
    with pytest.raises(ConfigError, match="slide"):
        backbone(torch.randn(1, 3, 40, 32))
