"""Model-zoo decode heads (ASPP, DeepLabV3+, UPerNet, SegFormer) beyond the shared tester in test_models.py:
MMSeg state-dict names, layer shapes, a full EncoderDecoder step on a tiny ResNetV1c, and config errors."""
import copy
import os

import pytest
import torch
import torch.nn as nn
import yaml

from rayseg.errors import ConfigError
from rayseg.inference import without_pretrained
from rayseg.models import build_head, build_segmentor, uses_sync_bn
from rayseg.models.heads.aspp_head import ASPPHead, ASPPModule
from rayseg.models.heads.sep_aspp_head import DepthwiseSeparableASPPHead, DepthwiseSeparableConvModule
from rayseg.models.utils import ConvModule
from tiny_parts_heads import HEAD_OUTPUT_STRIDE, TINY_HEADS

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_CLASSES = 3
ZOO = ["ASPPHead", "DepthwiseSeparableASPPHead", "UPerHead", "SegformerHead"]
CHANNELS = (8, 16, 32, 64)  # ResNetV1c depth 18, base 8


def head_cfg(name, **overrides):
    cfg = copy.deepcopy(TINY_HEADS[name])
    cfg.update(overrides)
    return cfg


def features(size=(64, 64), strides=(4, 8, 16, 32), n=2):
    return [torch.randn(n, c, size[0] // s, size[1] // s) for c, s in zip(CHANNELS, strides)]


def labels(size, n=2):
    y = torch.randint(0, NUM_CLASSES, (n, *size))
    y[:, :3] = 255
    return y


def segmentor_cfg(name, d8):
    """Tiny ResNetV1c (D8 for the ASPP heads as in MMSeg's DeepLab configs) + the head + an FCN aux head."""
    backbone = dict(type="ResNetV1c", depth=18, base_channels=8, stem_channels=8, contract_dilation=True)
    if d8:
        backbone.update(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))
    aux = dict(type="FCNHead", in_channels=32, channels=8, in_index=2, num_convs=1, concat_input=False,
               num_classes=NUM_CLASSES, norm_cfg=dict(type="BN"),
               loss_decode=dict(type="CrossEntropyLoss", loss_weight=0.4))
    return dict(type="EncoderDecoder", backbone=backbone, decode_head=head_cfg(name), auxiliary_head=aux,
                test_cfg=dict(mode="whole"))


# ---------------------------------------------------------------- MMSeg key names
MMSEG_KEYS = {
    "ASPPHead": ["image_pool.1.conv.weight", "image_pool.1.bn.weight", "image_pool.1.bn.running_var",
                 "aspp_modules.0.conv.weight", "aspp_modules.1.conv.weight", "aspp_modules.2.bn.bias",
                 "bottleneck.conv.weight", "bottleneck.bn.weight", "conv_seg.weight", "conv_seg.bias"],
    "DepthwiseSeparableASPPHead": [
        "image_pool.1.conv.weight", "aspp_modules.0.conv.weight", "aspp_modules.0.bn.weight",
        "aspp_modules.1.depthwise_conv.conv.weight", "aspp_modules.1.depthwise_conv.bn.weight",
        "aspp_modules.1.pointwise_conv.conv.weight", "aspp_modules.2.pointwise_conv.bn.running_mean",
        "bottleneck.conv.weight", "bottleneck.bn.weight", "c1_bottleneck.conv.weight", "c1_bottleneck.bn.weight",
        "sep_bottleneck.0.depthwise_conv.conv.weight", "sep_bottleneck.0.depthwise_conv.bn.weight",
        "sep_bottleneck.0.pointwise_conv.conv.weight", "sep_bottleneck.0.pointwise_conv.bn.weight",
        "sep_bottleneck.1.pointwise_conv.bn.running_var", "conv_seg.weight"],
    "UPerHead": ["psp_modules.0.1.conv.weight", "psp_modules.2.1.bn.weight", "bottleneck.conv.weight",
                 "lateral_convs.0.conv.weight", "lateral_convs.2.bn.weight", "fpn_convs.0.conv.weight",
                 "fpn_convs.2.bn.running_mean", "fpn_bottleneck.conv.weight", "fpn_bottleneck.bn.weight",
                 "conv_seg.weight"],
    "SegformerHead": ["convs.0.conv.weight", "convs.3.conv.weight", "convs.3.bn.weight", "fusion_conv.conv.weight",
                      "fusion_conv.bn.weight", "conv_seg.weight", "conv_seg.bias"],
}


@pytest.mark.parametrize("name", ZOO)
def test_state_dict_keys_match_mmseg(name):
    keys = set(build_head(TINY_HEADS[name]).state_dict())
    for key in MMSEG_KEYS[name]:
        assert key in keys, key
    # bias='auto': convs followed by a norm carry no bias, as in MMSeg checkpoints.
    assert not any(k.endswith("conv.bias") for k in keys), sorted(k for k in keys if k.endswith("conv.bias"))
    model_keys = set(build_segmentor(segmentor_cfg(name, d8=name.endswith("ASPPHead"))).state_dict())
    assert f"decode_head.{MMSEG_KEYS[name][0]}" in model_keys


def test_uper_and_segformer_have_no_extra_levels():
    uper = build_head(TINY_HEADS["UPerHead"])
    # The top level's lateral is the PSP output: one lateral/fpn conv fewer than inputs.
    assert len(uper.lateral_convs) == len(uper.fpn_convs) == 3
    assert uper.bottleneck.conv.in_channels == 64 + 3 * 8 and uper.fpn_bottleneck.conv.in_channels == 4 * 8
    assert not uper.lateral_convs[0].activate.inplace  # MMSeg builds laterals with inplace=False
    seg = build_head(TINY_HEADS["SegformerHead"])
    assert [c.conv.in_channels for c in seg.convs] == list(CHANNELS)
    assert seg.fusion_conv.conv.kernel_size == (1, 1) and seg.fusion_conv.conv.in_channels == 4 * 8


# ---------------------------------------------------------------- ASPP branches
def test_aspp_dilation_one_branch_is_1x1():
    head = build_head(head_cfg("ASPPHead", dilations=(1, 6, 12)))
    assert isinstance(head.aspp_modules, ASPPModule) and isinstance(head, ASPPHead)
    first = head.aspp_modules[0].conv
    assert first.kernel_size == (1, 1) and first.padding == (0, 0)
    for branch, d in zip(list(head.aspp_modules)[1:], (6, 12)):
        assert branch.conv.kernel_size == (3, 3) and branch.conv.dilation == (d, d) and branch.conv.padding == (d, d)
    assert head.bottleneck.conv.in_channels == 4 * 8  # image pool + 3 branches
    assert isinstance(head.image_pool[0], nn.AdaptiveAvgPool2d) and head.image_pool[0].output_size == 1
    # MMSeg's default dilations.
    default = build_head({k: v for k, v in TINY_HEADS["ASPPHead"].items() if k != "dilations"})
    assert default.dilations == (1, 6, 12, 18) and len(default.aspp_modules) == 4


def test_sep_aspp_branches_are_depthwise_separable():
    head = build_head(head_cfg("DepthwiseSeparableASPPHead", dilations=(1, 2, 3)))
    assert isinstance(head, DepthwiseSeparableASPPHead) and isinstance(head, ASPPHead)
    assert isinstance(head.aspp_modules[0], ConvModule) and head.aspp_modules[0].conv.kernel_size == (1, 1)
    for branch, d in zip(list(head.aspp_modules)[1:], (2, 3)):
        assert isinstance(branch, DepthwiseSeparableConvModule)
        dw, pw = branch.depthwise_conv.conv, branch.pointwise_conv.conv
        assert dw.groups == 64 and dw.kernel_size == (3, 3) and dw.dilation == (d, d) and dw.padding == (d, d)
        assert pw.kernel_size == (1, 1) and (pw.in_channels, pw.out_channels) == (64, 8)
    # MMSeg 1.x keeps the ASPP bottleneck dense; only the decoder convs are separable.
    assert isinstance(head.bottleneck, ConvModule) and head.bottleneck.conv.kernel_size == (3, 3)
    assert head.sep_bottleneck[0].depthwise_conv.conv.in_channels == 8 + 4  # ASPP channels + c1_channels
    assert head.c1_bottleneck.conv.kernel_size == (1, 1) and head.c1_bottleneck.conv.in_channels == 8


def test_depthwise_separable_conv_module():
    m = DepthwiseSeparableConvModule(4, 6, 3, padding=2, dilation=2, norm_cfg=dict(type="BN"), dw_act_cfg=None)
    assert set(m.state_dict()) >= {"depthwise_conv.conv.weight", "depthwise_conv.bn.weight",
                                   "pointwise_conv.conv.weight", "pointwise_conv.bn.weight"}
    assert m.depthwise_conv.conv.weight.shape == (4, 1, 3, 3) and m.pointwise_conv.conv.weight.shape == (6, 4, 1, 1)
    assert not m.depthwise_conv.with_activation and m.pointwise_conv.with_activation
    assert m(torch.randn(2, 4, 5, 7)).shape == (2, 6, 5, 7)
    plain = DepthwiseSeparableConvModule(4, 6, 3, padding=1)
    assert not plain.depthwise_conv.with_norm and plain.depthwise_conv.conv.bias is not None


def test_sep_aspp_without_decoder_stays_at_aspp_stride():
    head = build_head(head_cfg("DepthwiseSeparableASPPHead", c1_in_channels=0, c1_channels=0))
    assert head.c1_bottleneck is None and "c1_bottleneck.conv.weight" not in head.state_dict()
    assert head(features()).shape == (2, NUM_CLASSES, 2, 2)


# ---------------------------------------------------------------- full model
@pytest.mark.parametrize("name", ZOO)
def test_encoder_decoder_train_and_eval(name):
    torch.manual_seed(0)
    d8 = name.endswith("ASPPHead")
    model = build_segmentor(segmentor_cfg(name, d8))
    size = (48, 80)
    model.train()
    losses = model(torch.randn(2, 3, *size), labels(size))
    assert set(losses) == {"decode.loss_ce", "decode.acc_seg", "aux.loss_ce", "aux.acc_seg"}
    sum(v for k, v in losses.items() if "loss" in k).backward()
    head = model.decode_head
    assert model.backbone.stem[0].weight.grad.abs().sum() > 0
    missing = [n for n, p in head.named_parameters() if p.grad is None]
    if name == "DepthwiseSeparableASPPHead":  # the low-level branch must be on the graph
        assert head.c1_bottleneck.conv.weight.grad.abs().sum() > 0
    assert not missing, missing
    model.eval()
    with torch.no_grad():
        feats = model.backbone(torch.randn(1, 3, *size))
        stride = 8 if d8 and name == "ASPPHead" else 4
        assert head(feats).shape == (1, NUM_CLASSES, size[0] // stride, size[1] // stride)
        out = model(torch.randn(1, 3, *size))["out"]
    assert out.shape == (1, NUM_CLASSES, *size) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ZOO)
def test_base_options(name):
    """dropout_ratio, align_corners, loss lists and a sampler object all reach the head."""
    class Half:
        def sample(self, seg_logit, seg_label):
            return torch.full(seg_label.shape[:1] + seg_label.shape[2:], 0.5)

    head = build_head(head_cfg(name, dropout_ratio=0, align_corners=True,
                               loss_decode=[dict(type="CrossEntropyLoss"),
                                            dict(type="CrossEntropyLoss", loss_name="loss_aux", loss_weight=0.5)]))
    assert head.dropout is None and head.align_corners is True
    feats = features(size=(64, 64))
    logits = head(feats)
    stride = HEAD_OUTPUT_STRIDE[name]
    assert logits.shape == (2, NUM_CLASSES, 64 // stride, 64 // stride)
    y = labels((64, 64))
    losses = head.losses(logits, y)
    assert set(losses) == {"loss_ce", "loss_aux", "acc_seg"}
    assert torch.allclose(losses["loss_aux"], 0.5 * losses["loss_ce"])
    head.sampler = Half()
    assert torch.isfinite(head.losses(logits, y)["loss_ce"])


def test_aspp_with_resize_concat_input():
    head = build_head(head_cfg("ASPPHead", in_channels=[32, 64], in_index=[2, 3], input_transform="resize_concat"))
    assert head.in_channels == 96 and head(features()).shape == (2, NUM_CLASSES, 4, 4)


def test_pretrained_init_cfg_loads_decoder_layers(tmp_path):
    """init_weights runs after the DeepLabV3+ decoder exists, so a checkpoint reaches sep_bottleneck too."""
    torch.manual_seed(1)
    src = build_head(TINY_HEADS["DepthwiseSeparableASPPHead"])
    path = tmp_path / "mmseg.pth"
    torch.save({"state_dict": {"decode_head." + k: v for k, v in src.state_dict().items()}}, path)
    torch.manual_seed(2)
    dst = build_head(head_cfg("DepthwiseSeparableASPPHead",
                              init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="decode_head.")))
    for key, value in src.state_dict().items():
        assert torch.equal(dst.state_dict()[key], value), key


# ---------------------------------------------------------------- config errors
@pytest.mark.parametrize("name,bad,match", [
    ("UPerHead", dict(input_transform="resize_concat"), "multiple_select"),
    ("SegformerHead", dict(input_transform=None), "multiple_select"),
    ("SegformerHead", dict(interpolate_mode="bilinaer"), "interpolate_mode"),
    ("UPerHead", dict(pool_scales=()), "pool_scales"),
    ("ASPPHead", dict(dilations=(1, 0)), "dilations"),
    ("ASPPHead", dict(in_channels=[32, 64], in_index=[2, 3], input_transform="multiple_select"), "ASPP"),
    ("DepthwiseSeparableASPPHead", dict(c1_in_channels=-1), "c1_in_channels"),
    ("DepthwiseSeparableASPPHead", dict(chanels=8), "chanels"),
    ("UPerHead", dict(dropout_ration=0.1), "dropout_ration"),
    ("SegformerHead", dict(align_corner=True), "align_corner"),
])
def test_config_errors_name_the_problem(name, bad, match):
    with pytest.raises(ConfigError, match=match):
        build_head(head_cfg(name, **bad))


# ---------------------------------------------------------------- base model YAMLs
@pytest.mark.parametrize("name,head", [("deeplabv3_r50-d8", "ASPPHead"),
                                       ("deeplabv3plus_r50-d8", "DepthwiseSeparableASPPHead"),
                                       ("upernet_r50", "UPerHead")])
def test_zoo_base_model_yaml_builds(name, head):
    with open(os.path.join(ROOT, "configs", "_base_", "models", f"{name}.yaml")) as f:
        cfg = yaml.safe_load(f)
    model_cfg = cfg["model"]
    # MMSeg's ImageNet weights; built here without them (no network in tests)
    assert uses_sync_bn(model_cfg) and model_cfg["pretrained"] == "open-mmlab://resnet50_v1c"
    model_cfg = without_pretrained(model_cfg)
    assert model_cfg["auxiliary_head"]["loss_decode"]["loss_weight"] == 0.4
    assert model_cfg["test_cfg"] == {"mode": "whole"}
    model = build_segmentor(model_cfg).eval()
    assert type(model.decode_head).__name__ == head and model.num_classes == 19
    if head != "UPerHead":
        assert model.decode_head.dilations == (1, 12, 24, 36)
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))["out"]
    assert out.shape == (1, 19, 32, 32)
