"""HRNet, the FPN neck, FPNHead, OCRHead and CascadeEncoderDecoder: behaviour beyond the shared tiny-part checks
(test_registered_parts.py) and the MMSeg logits comparison (test_mmseg_equivalence.py)."""
import copy

import pytest
import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models import build_backbone, build_head, build_neck, build_segmentor

torch.set_num_threads(1)
NUM_CLASSES = 3
BN = dict(type="BN")
EXTRA = dict(
    stage1=dict(num_modules=1, num_branches=1, block="BOTTLENECK", num_blocks=[1], num_channels=[4]),
    stage2=dict(num_modules=1, num_branches=2, block="BASIC", num_blocks=[1, 1], num_channels=[4, 8]),
    stage3=dict(num_modules=2, num_branches=3, block="BASIC", num_blocks=[1, 1, 1], num_channels=[4, 8, 16]),
    stage4=dict(num_modules=1, num_branches=4, block="BASIC", num_blocks=[1, 1, 1, 1], num_channels=[4, 8, 16, 32]))
HR_CH = [4, 8, 16, 32]


def hrnet(**kwargs):
    return dict(type="HRNet", extra=copy.deepcopy(EXTRA), norm_cfg=BN, **kwargs)


def fcn_hr(**kwargs):
    return dict(type="FCNHead", in_channels=HR_CH, in_index=[0, 1, 2, 3], channels=sum(HR_CH),
                input_transform="resize_concat", kernel_size=1, num_convs=1, concat_input=False, dropout_ratio=-1,
                num_classes=NUM_CLASSES, norm_cfg=BN, **kwargs)


def ocr_head(**kwargs):
    return dict(type="OCRHead", in_channels=HR_CH, in_index=[0, 1, 2, 3], input_transform="resize_concat",
                channels=8, ocr_channels=4, dropout_ratio=-1, num_classes=NUM_CLASSES, norm_cfg=BN, **kwargs)


def ocrnet(**kwargs):
    return dict(type="CascadeEncoderDecoder", num_stages=2, backbone=hrnet(),
                decode_head=[fcn_hr(loss_decode=dict(type="CrossEntropyLoss", loss_weight=0.4)), ocr_head()],
                **kwargs)


def labels(size, n=2):
    y = torch.randint(0, NUM_CLASSES, (n, *size))
    y[:, :3] = 255
    return y


# ---------------------------------------------------------------- HRNet
def test_hrnet_keys_are_mmseg_names():
    keys = set(build_backbone(hrnet()).state_dict())
    for key in ["conv1.weight", "bn1.weight", "conv2.weight", "bn2.running_var",
                "layer1.0.conv3.weight", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight",
                "transition1.0.0.weight", "transition1.1.0.0.weight", "transition1.1.0.1.weight",
                "transition2.2.0.0.weight", "transition3.3.0.1.running_mean",
                "stage2.0.branches.1.0.conv2.weight", "stage3.1.branches.2.0.bn1.weight",
                "stage2.0.fuse_layers.0.1.0.weight", "stage2.0.fuse_layers.0.1.1.weight",
                "stage2.0.fuse_layers.1.0.0.0.weight", "stage4.0.fuse_layers.3.0.2.0.weight",
                "stage4.0.fuse_layers.3.0.1.1.weight", "stage4.0.fuse_layers.0.3.0.weight"]:
        assert key in keys, key
    # Branches whose width does not change get no transition (None), as in MMSeg.
    assert not any(k.startswith(("transition2.0.", "transition2.1.", "transition3.0.")) for k in keys)


@pytest.mark.parametrize("size", [(64, 64), (45, 71)])
def test_hrnet_outputs_and_odd_sizes(size):
    net = build_backbone(hrnet()).eval()
    with torch.no_grad():
        outs = net(torch.randn(1, 3, *size))
    assert [o.shape[1] for o in outs] == HR_CH
    h, w = size
    for o in outs:
        assert torch.isfinite(o).all()
    # Stride 4 after the stem, then each branch halves (rounding up, as the strided 3×3 convs do).
    h4, w4 = -(-(-(-h // 2)) // 2), -(-(-(-w // 2)) // 2)
    assert outs[0].shape[2:] == (h4, w4)


def test_hrnet_single_scale_output():
    net = build_backbone(hrnet(multiscale_output=False))
    outs = net(torch.randn(2, 3, 32, 32))
    assert len(outs) == 1 and outs[0].shape[1] == 4 and net.out_channels == (4,)
    # Only the last module of the last stage drops the coarser outputs.
    assert len(net.stage4[0].fuse_layers) == 1 and len(net.stage3[1].fuse_layers) == 3


def test_hrnet_frozen_stages():
    net = build_backbone(hrnet(frozen_stages=2)).train()
    assert not net.conv1.weight.requires_grad and not net.bn2.training
    assert all(not p.requires_grad for p in net.layer1.parameters())
    assert all(not p.requires_grad for p in net.transition2.parameters()) and not net.stage2.training
    assert all(p.requires_grad for p in net.stage3.parameters()) and net.stage3.training


@pytest.mark.parametrize("change,match", [
    (lambda e: e.pop("stage3"), "extra.stage3"),
    (lambda e: e["stage2"].update(block="BASICX"), "BASICX"),
    (lambda e: e["stage4"].update(num_channels=[4, 8, 16]), "num_channels"),
    (lambda e: e["stage2"].update(num_block=[1, 1]), "num_block"),
    (lambda e: e["stage1"].update(num_branches=2, num_blocks=[1, 1], num_channels=[4, 4]), "stage1.num_branches"),
])
def test_hrnet_bad_extra_is_named(change, match):
    cfg = hrnet()
    change(cfg["extra"])
    with pytest.raises(ConfigError, match=match):
        build_backbone(cfg)


def test_hrnet_with_cp_refused():
    with pytest.raises(ConfigError, match="with_cp"):
        build_backbone(hrnet(with_cp=True))


# ---------------------------------------------------------------- FPN neck and FPNHead
def feats(channels=(8, 16, 32, 64), size=(64, 64), strides=(4, 8, 16, 32), n=2):
    return [torch.randn(n, c, -(-size[0] // s), -(-size[1] // s)) for c, s in zip(channels, strides)]


def test_fpn_neck_shapes_and_keys():
    neck = build_neck(dict(type="FPN", in_channels=[8, 16, 32, 64], out_channels=8, num_outs=4))
    outs = neck(feats())
    assert [tuple(o.shape) for o in outs] == [(2, 8, 16, 16), (2, 8, 8, 8), (2, 8, 4, 4), (2, 8, 2, 2)]
    keys = set(neck.state_dict())
    # MMSeg's default: no norm and no activation, so the convs have biases.
    assert {"lateral_convs.0.conv.weight", "lateral_convs.3.conv.bias", "fpn_convs.2.conv.weight"} <= keys
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.ReLU)) for m in neck.modules())


def test_fpn_neck_odd_sizes_use_the_finer_size():
    neck = build_neck(dict(type="FPN", in_channels=[8, 16], out_channels=4, num_outs=2))
    outs = neck([torch.randn(1, 8, 11, 13), torch.randn(1, 16, 6, 7)])
    assert outs[0].shape[2:] == (11, 13) and outs[1].shape[2:] == (6, 7)


@pytest.mark.parametrize("extra,extra_in", [(False, None), (True, 8), ("on_input", 64), ("on_lateral", 8),
                                            ("on_output", 8)])
def test_fpn_neck_extra_levels(extra, extra_in):
    neck = build_neck(dict(type="FPN", in_channels=[8, 16, 32, 64], out_channels=8, num_outs=6,
                           add_extra_convs=extra, relu_before_extra_convs=True))
    outs = neck(feats())
    assert len(outs) == 6 and outs[4].shape[2:] == (1, 1) and outs[5].shape[2:] == (1, 1)
    if extra_in is None:
        assert len(neck.fpn_convs) == 4
    else:
        assert len(neck.fpn_convs) == 6 and neck.fpn_convs[4].conv.in_channels == extra_in


def test_fpn_neck_start_level_and_norm():
    neck = build_neck(dict(type="FPN", in_channels=[8, 16, 32, 64], out_channels=8, num_outs=3, start_level=1,
                           norm_cfg=BN, act_cfg=dict(type="ReLU"), no_norm_on_lateral=True))
    outs = neck(feats())
    assert len(outs) == 3 and outs[0].shape[2:] == (8, 8)
    assert neck.lateral_convs[0].norm is None and neck.fpn_convs[0].norm is not None


@pytest.mark.parametrize("cfg,match", [
    (dict(num_outs=2), "num_outs"),
    (dict(add_extra_convs="on_top"), "on_top"),
    (dict(end_level=2, num_outs=3), "end_level"),
    (dict(in_channels=16), "in_channels"),
])
def test_fpn_neck_bad_config(cfg, match):
    base = dict(type="FPN", in_channels=[8, 16, 32, 64], out_channels=8, num_outs=4)
    with pytest.raises(ConfigError, match=match):
        build_neck(dict(base, **cfg))


def test_fpn_head_scale_heads_match_mmseg_layout():
    head = build_head(dict(type="FPNHead", in_channels=[8, 8, 8, 8], in_index=[0, 1, 2, 3], channels=4,
                           feature_strides=[4, 8, 16, 32], num_classes=NUM_CLASSES, norm_cfg=BN))
    # Level i: max(1, i) convs, each followed by a 2× upsample for i > 0 (odd indices hold the upsamples).
    assert [len(s) for s in head.scale_heads] == [1, 2, 4, 6]
    keys = set(head.state_dict())
    assert {"scale_heads.0.0.conv.weight", "scale_heads.3.4.conv.weight", "scale_heads.3.4.bn.weight"} <= keys
    out = head(feats(channels=(8, 8, 8, 8), size=(40, 56)))
    assert out.shape == (2, NUM_CLASSES, 10, 14)
    with pytest.raises(ConfigError, match="feature_strides"):
        build_head(dict(type="FPNHead", in_channels=[8, 8], in_index=[0, 1], channels=4, feature_strides=[8, 4],
                        num_classes=NUM_CLASSES))
    with pytest.raises(ConfigError, match="multiple_select"):
        build_head(dict(type="FPNHead", in_channels=[8, 8], in_index=[0, 1], channels=4, feature_strides=[4, 8],
                        num_classes=NUM_CLASSES, input_transform="resize_concat"))


def test_semantic_fpn_segmentor_trains():
    model = build_segmentor(dict(
        type="EncoderDecoder",
        backbone=dict(type="ResNetV1c", depth=18, base_channels=4, stem_channels=8, norm_cfg=BN),
        neck=dict(type="FPN", in_channels=[4, 8, 16, 32], out_channels=8, num_outs=4),
        decode_head=dict(type="FPNHead", in_channels=[8, 8, 8, 8], in_index=[0, 1, 2, 3], channels=8,
                         feature_strides=[4, 8, 16, 32], num_classes=NUM_CLASSES, norm_cfg=BN)))
    losses = model(torch.randn(2, 3, 64, 64), labels((64, 64)))
    assert set(losses) == {"decode.loss_ce", "decode.acc_seg"}
    losses["decode.loss_ce"].backward()
    assert model.neck.lateral_convs[0].conv.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 48, 80))["out"].shape == (1, NUM_CLASSES, 48, 80)


# ---------------------------------------------------------------- OCRHead and CascadeEncoderDecoder
def test_ocr_head_reads_previous_logits():
    head = build_head(ocr_head()).eval()
    x = feats(channels=HR_CH)
    prev = torch.randn(2, 5, 16, 16)  # the previous stage may have its own number of classes
    with torch.no_grad():
        a = head(x, prev)
        b = head(x, prev * 2)
    assert a.shape == (2, NUM_CLASSES, 16, 16) and not torch.allclose(a, b)
    keys = set(head.state_dict())
    assert {"bottleneck.conv.weight", "object_context_block.key_project.0.conv.weight",
            "object_context_block.key_project.1.bn.weight", "object_context_block.query_project.1.conv.weight",
            "object_context_block.value_project.conv.weight", "object_context_block.out_project.bn.weight",
            "object_context_block.bottleneck.conv.weight"} <= keys
    with pytest.raises(ValueError, match="features' size"):
        head(x, torch.randn(2, 3, 8, 8))
    with pytest.raises(ConfigError, match="scale"):
        build_head(ocr_head(scale=2))


def test_cascade_train_losses_and_gradients():
    model = build_segmentor(ocrnet(auxiliary_head=dict(type="FCNHead", in_channels=16, in_index=2, channels=4,
                                                        num_convs=1, concat_input=False,
                                                        num_classes=NUM_CLASSES, norm_cfg=BN)))
    assert isinstance(model.decode_head, nn.ModuleList) and model.num_stages == 2 and model.num_classes == 3
    losses = model(torch.randn(2, 3, 64, 64), labels((64, 64)))
    assert set(losses) == {"decode_0.loss_ce", "decode_0.acc_seg", "decode_1.loss_ce", "decode_1.acc_seg",
                           "aux.loss_ce", "aux.acc_seg"}
    sum(v for k, v in losses.items() if "loss" in k).backward()
    for head in model.decode_head:
        assert head.conv_seg.weight.grad.abs().sum() > 0
    assert model.backbone.conv1.weight.grad.abs().sum() > 0


def test_cascade_inference_uses_the_last_head():
    model = build_segmentor(ocrnet(test_cfg=dict(mode="slide", crop_size=[32, 32], stride=[24, 24]))).eval()
    img = torch.randn(1, 3, 48, 56)
    with torch.no_grad():
        x = model.extract_feat(img)
        last = model.decode_head[1](x, model.decode_head[0](x))
        whole = model.encode_decode(img)
        slide = model.inference(img, ori_shape=(24, 28))
    assert whole.shape == (1, NUM_CLASSES, 48, 56) and slide.shape == (1, NUM_CLASSES, 24, 28)
    assert torch.allclose(whole, nn.functional.interpolate(last, size=(48, 56), mode="bilinear",
                                                           align_corners=False), atol=1e-6)
    assert model.predict(img).shape == (1, 48, 56)


@pytest.mark.parametrize("change,match", [
    (lambda c: c.update(num_stages=3), "num_stages=3"),
    (lambda c: c.update(num_stages=1, decode_head=c["decode_head"][:1]), "num_stages"),
    (lambda c: c.update(decode_head=c["decode_head"][0]), "list"),
    (lambda c: c.update(decode_head=[fcn_hr(), fcn_hr()]), "decode_head.1"),
    (lambda c: c.update(decode_head=[ocr_head(), ocr_head()]), "decode_head.0"),
    (lambda c: c["decode_head"][1].update(ocr_chanels=4), "ocr_chanels"),
])
def test_cascade_bad_config_is_named(change, match):
    cfg = ocrnet()
    change(cfg)
    with pytest.raises(ConfigError, match=match):
        build_segmentor(cfg)
