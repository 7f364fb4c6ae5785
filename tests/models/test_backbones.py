"""Model-zoo backbones (MiT, UNet, MobileNetV2, FastSCNN) and DepthwiseSeparableFCNHead.

Checks MMSeg-identical parameter names (so MMSeg checkpoints load), output shapes/strides, each backbone
inside an EncoderDecoder (train step and slide inference), the base model YAMLs, and config errors.
Everything runs on tiny inputs on one CPU thread.
"""
import copy
import os

import pytest
import torch
import torch.nn as nn
import yaml

from rayseg.errors import ConfigError
from rayseg.models import build_backbone, build_head, build_segmentor, uses_sync_bn
from rayseg.registry import HEADS

from tiny_parts_backbones import TINY_BACKBONES

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_CLASSES = 3


def tiny(name, **overrides):
    return dict(copy.deepcopy(TINY_BACKBONES[name][0]), **overrides)


# ---------------------------------------------------------------- shapes and strides
@pytest.mark.parametrize("name", sorted(TINY_BACKBONES))
@pytest.mark.parametrize("size", [(32, 64), (96, 48)])
def test_output_channels_and_strides(name, size):
    _, channels, strides = TINY_BACKBONES[name]
    net = build_backbone(tiny(name)).eval()
    with torch.no_grad():
        outs = net(torch.randn(1, 3, *size))
    assert isinstance(outs, tuple) and tuple(net.out_channels) == channels
    for out, c, s in zip(outs, channels, strides):
        assert tuple(out.shape) == (1, c, -(-size[0] // s), -(-size[1] // s))


def test_full_size_channels():
    # MMSeg's defaults: MiT-B0, UNet-S5-D16, MobileNetV2 (1.0x), Fast-SCNN.
    assert build_backbone(dict(type="MixVisionTransformer")).out_channels == (32, 64, 160, 256)
    assert build_backbone(dict(type="MixVisionTransformer", embed_dims=64)).out_channels == (64, 128, 320, 512)
    assert build_backbone(dict(type="UNet", base_channels=8)).out_channels == (128, 64, 32, 16, 8)
    assert build_backbone(dict(type="MobileNetV2")).out_channels == (24, 32, 96, 320)
    assert build_backbone(dict(type="FastSCNN")).out_channels == (64, 128, 128)


def test_mobilenet_v2_d8_and_fast_scnn_out_indices():
    net = build_backbone(dict(type="MobileNetV2", widen_factor=0.25, strides=(1, 2, 2, 1, 1, 1, 1),
                              dilations=(1, 1, 1, 2, 2, 4, 4))).eval()
    with torch.no_grad():
        outs = net(torch.randn(1, 3, 64, 64))
    assert [o.shape[-1] for o in outs] == [16, 8, 8, 8]
    assert net.layer4[0].conv[1].conv.dilation == (2, 2) and net.layer4[1].conv[1].conv.dilation == (1, 1)
    one = build_backbone(dict(type="MobileNetV2", widen_factor=0.25, out_indices=(6,))).eval()
    assert len(one(torch.randn(1, 3, 32, 32))) == 1  # still a tuple (MMSeg returns a bare tensor here)
    fast = build_backbone(tiny("FastSCNN", out_indices=(2,))).eval()
    (fused,) = fast(torch.randn(1, 3, 64, 64))
    assert fused.shape == (1, 16, 8, 8) and fast.out_channels == (16,)


def test_unet_stride_conv_and_deconv_variants():
    net = build_backbone(dict(type="UNet", base_channels=4, num_stages=4, strides=(1, 2, 1, 1),
                              enc_num_convs=(1, 1, 1, 1), dec_num_convs=(1, 1, 1),
                              downsamples=(True, True, False), enc_dilations=(1, 1, 1, 1), dec_dilations=(1, 1, 1),
                              upsample_cfg=dict(type="DeconvModule", kernel_size=4, scale_factor=2))).eval()
    assert net.downsample_rate == 4
    assert not isinstance(net.encoder[1][0], nn.MaxPool2d)  # strided conv replaces the pool
    keys = set(net.state_dict())
    assert "decoder.0.upsample.deconv_upsamping.0.weight" in keys  # MMSeg's spelling
    assert "decoder.2.upsample.conv.weight" in keys  # no downsampling in stage 3: a 1x1 ConvModule
    with torch.no_grad():
        outs = net(torch.randn(1, 3, 32, 32))
    assert [tuple(o.shape[1:]) for o in outs] == [(32, 8, 8), (16, 8, 8), (8, 16, 16), (4, 32, 32)]
    with pytest.raises(ValueError, match="divisible"):
        build_backbone(tiny("UNet"))(torch.randn(1, 3, 40, 40))


# ---------------------------------------------------------------- MMSeg parameter names
MMSEG_KEYS = {
    "MixVisionTransformer": (dict(type="MixVisionTransformer"), {
        "layers.0.0.projection.weight": (32, 3, 7, 7), "layers.0.0.norm.weight": (32,),
        "layers.0.1.0.norm1.weight": (32,),
        "layers.0.1.0.attn.attn.in_proj_weight": (96, 32), "layers.0.1.0.attn.attn.in_proj_bias": (96,),
        "layers.0.1.0.attn.attn.out_proj.weight": (32, 32), "layers.0.1.0.attn.attn.out_proj.bias": (32,),
        "layers.0.1.0.attn.sr.weight": (32, 32, 8, 8), "layers.0.1.0.attn.norm.weight": (32,),
        "layers.0.1.0.norm2.bias": (32,),
        "layers.0.1.0.ffn.layers.0.weight": (128, 32, 1, 1), "layers.0.1.0.ffn.layers.1.weight": (128, 1, 3, 3),
        "layers.0.1.0.ffn.layers.4.weight": (32, 128, 1, 1), "layers.0.2.weight": (32,),
        "layers.1.0.projection.weight": (64, 32, 3, 3), "layers.2.1.1.attn.sr.weight": (160, 160, 2, 2),
        "layers.3.1.1.attn.attn.in_proj_weight": (768, 256), "layers.3.2.bias": (256,)},
        ["layers.3.1.0.attn.sr.weight"]),  # sr_ratio 1: no reduction conv
    "UNet": (dict(type="UNet"), {
        "encoder.0.0.convs.0.conv.weight": (64, 3, 3, 3), "encoder.0.0.convs.0.bn.weight": (64,),
        "encoder.0.0.convs.1.conv.weight": (64, 64, 3, 3), "encoder.1.1.convs.0.conv.weight": (128, 64, 3, 3),
        "encoder.4.1.convs.1.bn.running_var": (1024,),
        "decoder.0.upsample.interp_upsample.1.conv.weight": (64, 128, 1, 1),
        "decoder.0.upsample.interp_upsample.1.bn.weight": (64,),
        "decoder.0.conv_block.convs.0.conv.weight": (64, 128, 3, 3),
        "decoder.3.upsample.interp_upsample.1.conv.weight": (512, 1024, 1, 1),
        "decoder.3.conv_block.convs.1.bn.running_mean": (512,)},
        ["encoder.0.0.convs.0.conv.bias", "encoder.1.0.weight"]),  # no conv bias before BN; MaxPool has no params
    "MobileNetV2": (dict(type="MobileNetV2"), {
        "conv1.conv.weight": (32, 3, 3, 3), "conv1.bn.weight": (32,),
        "layer1.0.conv.0.conv.weight": (32, 1, 3, 3), "layer1.0.conv.1.conv.weight": (16, 32, 1, 1),
        "layer1.0.conv.1.bn.running_mean": (16,),
        "layer2.0.conv.0.conv.weight": (96, 16, 1, 1), "layer2.0.conv.1.conv.weight": (96, 1, 3, 3),
        "layer2.0.conv.2.conv.weight": (24, 96, 1, 1), "layer4.3.conv.2.bn.weight": (64,),
        "layer7.0.conv.2.bn.running_var": (320,)},
        ["layer1.0.conv.2.conv.weight", "layer8.0.conv.0.conv.weight"]),
    "FastSCNN": (dict(type="FastSCNN"), {
        "learning_to_downsample.conv.conv.weight": (32, 3, 3, 3),
        "learning_to_downsample.conv.bn.weight": (32,),
        "learning_to_downsample.dsconv1.depthwise_conv.conv.weight": (32, 1, 3, 3),
        "learning_to_downsample.dsconv1.depthwise_conv.bn.weight": (32,),
        "learning_to_downsample.dsconv1.pointwise_conv.conv.weight": (48, 32, 1, 1),
        "learning_to_downsample.dsconv2.pointwise_conv.bn.running_mean": (64,),
        "global_feature_extractor.bottleneck1.0.conv.0.conv.weight": (384, 64, 1, 1),
        "global_feature_extractor.bottleneck1.0.conv.1.conv.weight": (384, 1, 3, 3),
        "global_feature_extractor.bottleneck2.2.conv.2.conv.weight": (96, 576, 1, 1),
        "global_feature_extractor.bottleneck3.0.conv.2.bn.weight": (128,),
        "global_feature_extractor.ppm.0.1.conv.weight": (32, 128, 1, 1),
        "global_feature_extractor.ppm.3.1.bn.weight": (32,),
        "global_feature_extractor.out.conv.weight": (128, 256, 3, 3),
        "feature_fusion.dwconv.conv.weight": (128, 1, 3, 3), "feature_fusion.dwconv.bn.weight": (128,),
        "feature_fusion.conv_lower_res.conv.weight": (128, 128, 1, 1),
        "feature_fusion.conv_lower_res.bn.running_var": (128,),
        "feature_fusion.conv_higher_res.conv.weight": (128, 64, 1, 1)},
        ["feature_fusion.conv_lower_res.conv.bias"]),
}


@pytest.mark.parametrize("name", sorted(MMSEG_KEYS))
def test_state_dict_names_match_mmseg(name):
    cfg, expected, absent = MMSEG_KEYS[name]
    state = build_backbone(cfg).state_dict()
    for key, shape in expected.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, (key, tuple(state[key].shape))
    for key in absent:
        assert key not in state, key


def test_mit_block_counts_and_param_count():
    net = build_backbone(dict(type="MixVisionTransformer"))
    assert [len(stage[1]) for stage in net.layers] == [2, 2, 2, 2]
    # MiT-B0 encoder: 3.32M parameters (the SegFormer paper rounds it to 3.4M).
    assert 3.2e6 < sum(p.numel() for p in net.parameters()) < 3.4e6
    b2 = build_backbone(dict(type="MixVisionTransformer", embed_dims=64, num_layers=(3, 4, 6, 3)))
    assert "layers.2.1.5.ffn.layers.4.weight" in b2.state_dict()


def test_sep_fcn_head_names_and_dw_act():
    head = build_head(dict(type="DepthwiseSeparableFCNHead", in_channels=16, channels=8, num_classes=NUM_CLASSES,
                           in_index=-1, norm_cfg=dict(type="BN")))
    keys = set(head.state_dict())
    for key in ["convs.0.depthwise_conv.conv.weight", "convs.0.depthwise_conv.bn.weight",
                "convs.0.pointwise_conv.conv.weight", "convs.0.pointwise_conv.bn.running_mean",
                "convs.1.depthwise_conv.conv.weight", "conv_cat.depthwise_conv.conv.weight",
                "conv_cat.pointwise_conv.conv.weight", "conv_seg.weight"]:
        assert key in keys, key
    assert head.convs[0].depthwise_conv.conv.groups == 16
    assert not head.convs[0].depthwise_conv.with_activation and head.convs[0].pointwise_conv.with_activation
    act = build_head(dict(type="DepthwiseSeparableFCNHead", in_channels=16, channels=8, num_classes=NUM_CLASSES,
                          concat_input=False, dw_act_cfg=dict(type="ReLU")))
    assert act.convs[0].depthwise_conv.with_activation and not hasattr(act, "conv_cat")
    assert act([torch.randn(2, 16, 8, 8)]).shape == (2, NUM_CLASSES, 8, 8)


def test_sep_fcn_head_loads_its_own_checkpoint(tmp_path):
    cfg = dict(type="DepthwiseSeparableFCNHead", in_channels=16, channels=8, num_classes=NUM_CLASSES)
    src = build_head(cfg)
    path = tmp_path / "head.pth"
    torch.save({"state_dict": {"decode_head." + k: v for k, v in src.state_dict().items()}}, path)
    dst = build_head(dict(cfg, init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="decode_head.")))
    assert torch.equal(dst.convs[0].depthwise_conv.conv.weight, src.convs[0].depthwise_conv.conv.weight)


# ---------------------------------------------------------------- in an EncoderDecoder
def _head(name):
    """A decode head that suits each backbone's outputs, as in MMSeg's configs."""
    channels = TINY_BACKBONES[name][1]
    common = dict(channels=8, num_classes=NUM_CLASSES, norm_cfg=dict(type="BN"))
    if name == "MixVisionTransformer" and "SegformerHead" in HEADS:
        return dict(type="SegformerHead", in_channels=list(channels), in_index=[0, 1, 2, 3], **common)
    if name == "HRNet":  # every branch feeds the head, as in MMSeg's fcn_hr18
        return dict(type="FCNHead", in_channels=list(channels), in_index=[0, 1, 2, 3], input_transform="resize_concat",
                    kernel_size=1, num_convs=1, concat_input=False, **common)
    if name == "FastSCNN":
        return dict(type="DepthwiseSeparableFCNHead", in_channels=channels[-1], in_index=-1, concat_input=False,
                    **common)
    return dict(type="FCNHead", in_channels=channels[-1], in_index=len(channels) - 1, num_convs=1,
                concat_input=False, **common)


@pytest.mark.parametrize("name", sorted(TINY_BACKBONES))
def test_encoder_decoder_train_and_slide(name):
    torch.manual_seed(0)
    channels = TINY_BACKBONES[name][1]
    aux = dict(type="FCNHead", in_channels=channels[-2], in_index=len(channels) - 2, channels=4, num_convs=1,
               concat_input=False, num_classes=NUM_CLASSES, loss_decode=dict(type="CrossEntropyLoss", loss_weight=0.4))
    model = build_segmentor(dict(type="EncoderDecoder", backbone=tiny(name), decode_head=_head(name),
                                 auxiliary_head=aux, test_cfg=dict(mode="slide", crop_size=(32, 32), stride=(16, 16))))
    model.train()
    y = torch.randint(0, NUM_CLASSES, (2, 64, 48))
    y[:, :3] = 255
    losses = model(torch.randn(2, 3, 64, 48), y)
    assert {"decode.loss_ce", "decode.acc_seg", "aux.loss_ce", "aux.acc_seg"} <= set(losses)
    sum(v for k, v in losses.items() if "loss" in k).backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    model.eval()
    with torch.no_grad():
        logits = model.inference(torch.randn(1, 3, 48, 80), ori_shape=(48, 80))
        assert logits.shape == (1, NUM_CLASSES, 48, 80) and torch.isfinite(logits).all()
        pred = model.predict(torch.randn(1, 3, 32, 32))
        assert pred.shape == (1, 32, 32)


def test_mobilenet_frozen_stages():
    # norm_eval and init_cfg of every backbone: test_registered_parts.py (BaseBackbone).
    net = build_backbone(tiny("MobileNetV2", frozen_stages=2)).train()
    assert not any(p.requires_grad for p in net.conv1.parameters())
    assert not any(p.requires_grad for p in net.layer2.parameters()) and not net.layer2.training
    assert all(p.requires_grad for p in net.layer3.parameters()) and net.layer3.training


def test_with_cp_matches_plain():
    for name in ("MixVisionTransformer", "UNet", "MobileNetV2"):
        # No stochastic depth, so both runs are deterministic.
        cfg = tiny(name, drop_path_rate=0.0) if name == "MixVisionTransformer" else tiny(name)
        plain = build_backbone(cfg)
        ckpt = build_backbone(dict(cfg, with_cp=True))
        ckpt.load_state_dict(plain.state_dict())
        x = torch.randn(2, 3, 32, 32, requires_grad=True)
        a, b = plain(x), ckpt(x)
        assert all(torch.allclose(u, v, atol=1e-6) for u, v in zip(a, b))
        sum(o.sum() for o in b).backward()
        assert x.grad is not None


# ---------------------------------------------------------------- base model YAMLs
def _load_yaml(name):
    with open(os.path.join(ROOT, "configs", "_base_", "models", f"{name}.yaml")) as f:
        return yaml.safe_load(f)["model"]


@pytest.mark.parametrize("name,head,size,classes", [
    ("segformer_mit-b0", "SegformerHead", (64, 64), 19),
    ("fcn_unet_s5-d16", "FCNHead", (32, 32), 2),
    ("fast_scnn", "DepthwiseSeparableFCNHead", (64, 64), 19),
    ("fcn_m-v2-d8", "FCNHead", (32, 32), 19)])
def test_zoo_base_model_yaml_builds(name, head, size, classes):
    if head not in HEADS:
        pytest.skip(f"{head} not registered")
    cfg = _load_yaml(name)
    assert uses_sync_bn(cfg)
    if name == "fcn_unet_s5-d16":
        cfg["test_cfg"] = dict(mode="slide", crop_size=32, stride=16)  # keep the full-width UNet cheap
    model = build_segmentor(cfg).eval()
    assert type(model.decode_head).__name__ == head and model.num_classes == classes
    with torch.no_grad():
        out = model.inference(torch.randn(1, 3, *size))
    assert out.shape == (1, classes, *size)


# ---------------------------------------------------------------- config errors
@pytest.mark.parametrize("name,key", [("MixVisionTransformer", "embed_dim"), ("UNet", "base_channel"),
                                      ("MobileNetV2", "widen_factr"), ("FastSCNN", "out_indexes")])
def test_unknown_backbone_argument_is_named(name, key):
    with pytest.raises(ConfigError, match=key):
        build_backbone(tiny(name, **{key: 1}))


def test_unknown_head_argument_is_named():
    with pytest.raises(ConfigError, match="Did you mean 'channels'"):
        build_head(dict(type="DepthwiseSeparableFCNHead", in_channels=8, chanels=8, num_classes=2))
    with pytest.raises(ConfigError, match="num_convs"):
        build_head(dict(type="DepthwiseSeparableFCNHead", in_channels=8, channels=8, num_classes=2, num_convs=0))


@pytest.mark.parametrize("cfg,match", [
    (dict(type="UNet", dcn=dict(type="DCNv2")), "dcn"),
    (dict(type="UNet", plugins=[dict(type="X")]), "plugins"),
    (dict(type="UNet", strides=(1, 1, 1)), "strides"),
    (dict(type="UNet", upsample_cfg=dict(type="Bilinear")), "upsample_cfg"),
    (dict(type="UNet", upsample_cfg=dict(type="InterpConv", conv_frist=True)), "conv_frist"),
    (dict(type="MixVisionTransformer", num_heads=(1, 2)), "num_heads"),
    (dict(type="MixVisionTransformer", norm_cfg=dict(type="BN")), "LN"),
    (dict(type="MixVisionTransformer", out_indices=(4,)), "out_indices"),
    (dict(type="MobileNetV2", strides=(1, 2)), "strides"),
    (dict(type="MobileNetV2", out_indices=(7,)), "out_indices"),
    (dict(type="MobileNetV2", strides=(1, 3, 2, 2, 1, 2, 1)), "stride"),
    (dict(type="FastSCNN", global_in_channels=32), "higher_in_channels"),
    (dict(type="FastSCNN", act_cfg=dict(type="Swishy")), "Swishy"),
    (dict(type="MobileNetV2", pretrained="open-mmlab://mobilenet_v2"), "not a local file"),
])
def test_bad_backbone_values_are_config_errors(cfg, match):
    with pytest.raises(ConfigError, match=match):
        build_backbone(cfg)
