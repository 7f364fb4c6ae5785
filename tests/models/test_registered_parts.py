"""Shared tester for registered backbones, heads and segmentors (tiny sizes: each case runs in well under a second).

Every registered backbone and head must have a tiny config in ``TINY_BACKBONES`` / ``TINY_HEADS``;
``test_every_registered_part_has_a_tiny_config`` fails otherwise, so new parts get the same checks.
"""
import copy
import os

import pytest
import torch
import torch.nn as nn
import yaml

from rayseg.errors import CheckpointError, ConfigError
from rayseg.inference import without_pretrained
from rayseg.models import build_backbone, build_head, build_segmentor, uses_sync_bn
from rayseg.models.backbones import BaseBackbone
from rayseg.models.heads import BaseDecodeHead
from rayseg.registry import BACKBONES, HEADS, MODELS

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NUM_CLASSES = 3
SIZES = [(64, 64), (48, 80)]
D8 = dict(strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4))

# name -> (config, channels of the 4 outputs)
TINY_BACKBONES = {
    "ResNet": (dict(type="ResNet", depth=18, base_channels=8, stem_channels=8), (8, 16, 32, 64)),
    "ResNetV1c": (dict(type="ResNetV1c", depth=50, base_channels=4, stem_channels=8, **D8,
                       contract_dilation=True), (16, 32, 64, 128)),
    "ResNetV1d": (dict(type="ResNetV1d", depth=34, base_channels=8, stem_channels=8), (8, 16, 32, 64)),
}
_HEAD_BASE = dict(in_channels=64, channels=8, in_index=3, num_classes=NUM_CLASSES, norm_cfg=dict(type="BN"))
TINY_HEADS = {
    "FCNHead": dict(type="FCNHead", **_HEAD_BASE),
    "PSPHead": dict(type="PSPHead", pool_scales=(1, 2, 3), **_HEAD_BASE),
}


# Model-zoo parts keep their tiny configs in their own modules, tests/models/tiny_parts_<group>.py (one per group
# of parts), each found here by name.
import importlib  # noqa: E402
import pathlib  # noqa: E402

_GROUPS = [importlib.import_module(p.stem) for p in sorted(pathlib.Path(__file__).parent.glob("tiny_parts_*.py"))]

BACKBONE_STRIDES = {}  # name -> output strides, when not (4, 8, 16, 32)
HEAD_OUTPUT_STRIDE = {}  # name -> stride of the head's logits w.r.t. the image, when not 32
CASCADE_PREV_CLASSES = {}  # name -> classes of the previous head's logits a cascade head also takes (OCRHead)
LAYER_NORM_ONLY = {"MixVisionTransformer", "SwinTransformer", "VisionTransformer"}  # backbones without BatchNorm
for _group in _GROUPS:
    for _name, (_cfg, _channels, _strides) in getattr(_group, "TINY_BACKBONES", {}).items():
        TINY_BACKBONES[_name] = (_cfg, _channels)
        BACKBONE_STRIDES[_name] = _strides
    TINY_HEADS.update(getattr(_group, "TINY_HEADS", {}))
    HEAD_OUTPUT_STRIDE.update(getattr(_group, "HEAD_OUTPUT_STRIDE", {}))
    CASCADE_PREV_CLASSES.update(getattr(_group, "CASCADE_PREV_CLASSES", {}))
    LAYER_NORM_ONLY |= set(getattr(_group, "LAYER_NORM_ONLY", ()))


def tiny_model_cfg(head="PSPHead", aux=True, test_cfg=None):
    backbone = dict(type="ResNetV1c", depth=18, base_channels=8, stem_channels=8, **D8, contract_dilation=True)
    cfg = dict(type="EncoderDecoder", backbone=backbone, decode_head=copy.deepcopy(TINY_HEADS[head]),
               test_cfg=test_cfg or dict(mode="whole"))
    if aux is True:
        cfg["auxiliary_head"] = dict(type="FCNHead", in_channels=32, channels=8, in_index=2, num_convs=1,
                                     concat_input=False, num_classes=NUM_CLASSES, norm_cfg=dict(type="BN"),
                                     loss_decode=dict(type="CrossEntropyLoss", loss_weight=0.4))
    elif aux == "list":
        cfg["auxiliary_head"] = [dict(type="FCNHead", in_channels=32, channels=8, in_index=2, num_convs=1,
                                      num_classes=NUM_CLASSES),
                                 dict(type="FCNHead", in_channels=16, channels=16, in_index=1, num_convs=0,
                                      num_classes=NUM_CLASSES)]
    return cfg


def features(channels=(8, 16, 32, 64), size=(64, 64), strides=(4, 8, 16, 32)):
    return [torch.randn(2, c, size[0] // s, size[1] // s) for c, s in zip(channels, strides)]


def labels(size, n=2):
    y = torch.randint(0, NUM_CLASSES, (n, *size))
    y[:, :4] = 255
    return y


def test_every_registered_part_has_a_tiny_config():
    assert set(BACKBONES.keys()) <= set(TINY_BACKBONES), "add a tiny config for each new backbone"
    assert set(HEADS.keys()) <= set(TINY_HEADS), "add a tiny config for each new head"
    assert "EncoderDecoder" in MODELS


# ---------------------------------------------------------------- backbones
@pytest.mark.parametrize("name", sorted(TINY_BACKBONES))
def test_backbone_forward_backward(name):
    cfg, channels = TINY_BACKBONES[name]
    net = build_backbone(cfg)
    d8 = cfg.get("strides") == D8["strides"]
    for h, w in SIZES:
        net.train()
        outs = net(torch.randn(2, 3, h, w))
        assert isinstance(outs, tuple) and len(outs) == len(channels)
        assert tuple(o.shape[1] for o in outs) == tuple(channels) == tuple(net.out_channels)
        strides = BACKBONE_STRIDES.get(name) or ((4, 8, 8, 8) if d8 else (4, 8, 16, 32))
        for o, s in zip(outs, strides):
            assert o.shape[2:] == (-(-h // s), -(-w // s)), (o.shape, s)
        sum(o.mean() for o in outs).backward()
        assert all(p.grad is not None for p in net.parameters() if p.requires_grad)
        net.eval()
        with torch.no_grad():
            assert all(torch.isfinite(o).all() for o in net(torch.randn(1, 3, h, w)))


@pytest.mark.parametrize("d8", [True, False])
def test_resnetv1c_output_stride(d8):
    net = build_backbone(dict(type="ResNetV1c", depth=18, base_channels=8, stem_channels=8, out_indices=(3,),
                              **(D8 if d8 else {})))
    (out,) = net(torch.randn(2, 3, 64, 64))
    assert out.shape[2:] == ((8, 8) if d8 else (2, 2))


def test_contract_dilation_and_multi_grid():
    net = build_backbone(dict(type="ResNetV1c", depth=50, base_channels=4, stem_channels=8, **D8,
                              contract_dilation=True))
    assert net.layer3[0].conv2.dilation == (1, 1) and net.layer3[1].conv2.dilation == (2, 2)
    assert net.layer4[0].conv2.dilation == (2, 2) and net.layer4[1].conv2.dilation == (4, 4)
    assert net.layer2[0].conv2.stride == (2, 2) and net.layer3[0].conv2.stride == (1, 1)
    plain = build_backbone(dict(type="ResNetV1c", depth=50, base_channels=4, stem_channels=8, **D8))
    assert plain.layer3[0].conv2.dilation == (2, 2)
    grid = build_backbone(dict(type="ResNetV1c", depth=50, base_channels=4, stem_channels=8, **D8,
                               multi_grid=(1, 2, 4)))
    assert [b.conv2.dilation[0] for b in grid.layer4] == [1, 2, 4]
    caffe = build_backbone(dict(type="ResNet", depth=50, base_channels=4, stem_channels=8, style="caffe"))
    assert caffe.layer2[0].conv1.stride == (2, 2) and caffe.layer2[0].conv2.stride == (1, 1)
    v1d = build_backbone(dict(type="ResNetV1d", depth=18, base_channels=8, stem_channels=8))
    assert isinstance(v1d.layer2[0].downsample[0], nn.AvgPool2d)


def test_zero_init_residual():
    net = build_backbone(dict(type="ResNetV1c", depth=50, base_channels=4, stem_channels=8))
    assert (net.layer1[0].bn3.weight == 0).all() and (net.layer1[0].bn2.weight == 1).all()
    net = build_backbone(dict(type="ResNet", depth=18, base_channels=8, zero_init_residual=False))
    assert (net.layer1[0].bn2.weight == 1).all()


def _running_stats(net):
    return {k: v.clone() for k, v in net.state_dict().items() if "running" in k}


@pytest.mark.parametrize("name", sorted(TINY_BACKBONES))
def test_backbone_base_norm_eval_and_init_cfg(name, tmp_path):
    """Every backbone shares BaseBackbone: ``norm_eval`` keeps BatchNorm statistics frozen in train mode,
    ``init_cfg: {type: Pretrained}`` / ``pretrained`` load weights, and giving both is refused."""
    cfg = TINY_BACKBONES[name][0]
    x = torch.randn(2, 3, 64, 64) * 3 + 1
    net = build_backbone(dict(copy.deepcopy(cfg), norm_eval=True))
    assert isinstance(net, BaseBackbone) and net.norm_eval
    net.train()
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert net.training and all(not m.training for m in bns)
    before = _running_stats(net)
    sum(o.mean() for o in net(x)).backward()
    assert all(torch.equal(before[k], v) for k, v in _running_stats(net).items())
    assert any(p.grad is not None for p in net.parameters())
    # Without norm_eval the statistics move (every backbone but the LayerNorm-only transformers has BatchNorms).
    plain = build_backbone(copy.deepcopy(cfg)).train()
    assert bool(bns) == (name not in LAYER_NORM_ONLY)
    before = _running_stats(plain)
    plain(x)
    assert all(not torch.equal(before[k], v) for k, v in _running_stats(plain).items() if "running_mean" in k)
    path = tmp_path / "w.pth"
    torch.save({"state_dict": {"backbone." + k: v for k, v in plain.state_dict().items()}}, path)
    pretrained = dict(type="Pretrained", checkpoint=str(path), prefix="backbone.")
    loaded = build_backbone(dict(copy.deepcopy(cfg), init_cfg=pretrained))
    for k, v in plain.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    with pytest.raises(ConfigError, match="either pretrained or init_cfg"):
        build_backbone(dict(copy.deepcopy(cfg), pretrained=str(path), init_cfg=pretrained))


def test_resnet_variants_are_class_defaults():
    """V1c/V1d differ from ResNet only in the DEEP_STEM / AVG_DOWN class attributes."""
    v1c = build_backbone(dict(type="ResNetV1c", depth=18, base_channels=8, stem_channels=8))
    v1d = build_backbone(dict(type="ResNetV1d", depth=18, base_channels=8, stem_channels=8))
    plain = build_backbone(dict(type="ResNet", depth=18, base_channels=8, stem_channels=8))
    assert (v1c.deep_stem, v1c.avg_down, v1d.deep_stem, v1d.avg_down) == (True, False, True, True)
    assert hasattr(v1c, "stem") and not hasattr(plain, "stem") and hasattr(plain, "conv1")
    assert isinstance(v1d.layer2[0].downsample[0], nn.AvgPool2d)
    assert not isinstance(v1c.layer2[0].downsample[0], nn.AvgPool2d)
    same = build_backbone(dict(type="ResNet", depth=18, base_channels=8, stem_channels=8, deep_stem=True,
                               avg_down=True))
    assert same.state_dict().keys() == v1d.state_dict().keys()


def test_frozen_stages_and_norm_requires_grad():
    net = build_backbone(dict(type="ResNetV1c", depth=18, base_channels=8, stem_channels=8, frozen_stages=1))
    net.train()
    assert all(not p.requires_grad for p in net.stem.parameters())
    assert all(not p.requires_grad for p in net.layer1.parameters()) and not net.layer1.training
    assert all(p.requires_grad for p in net.layer2.parameters()) and net.layer2.training
    net = build_backbone(dict(type="ResNet", depth=18, base_channels=8,
                              norm_cfg=dict(type="BN", requires_grad=False)))
    assert not net.bn1.weight.requires_grad and net.conv1.weight.requires_grad


def test_gn_norm_names():
    net = build_backbone(dict(type="ResNet", depth=18, base_channels=8, norm_cfg=dict(type="GN", num_groups=4)))
    keys = net.state_dict().keys()
    assert "gn1.weight" in keys and "layer1.0.gn2.weight" in keys
    net(torch.randn(1, 3, 32, 32))


# ---------------------------------------------------------------- heads
@pytest.mark.parametrize("name", sorted(TINY_HEADS))
def test_head_forward_losses(name):
    head = build_head(TINY_HEADS[name])
    assert isinstance(head, BaseDecodeHead)
    stride = HEAD_OUTPUT_STRIDE.get(name, 32)

    def run(feats, size):
        if name not in CASCADE_PREV_CLASSES:
            return head(feats)
        return head(feats, torch.randn(2, CASCADE_PREV_CLASSES[name], size[0] // stride, size[1] // stride))

    for size in SIZES:
        head.train()
        feats = features(size=size)
        logits = run(feats, size)
        assert logits.shape == (2, NUM_CLASSES, size[0] // stride, size[1] // stride)
        losses = head.losses(logits, labels(size).unsqueeze(1))
        assert set(losses) == {"loss_ce", "acc_seg"}
        assert not losses["acc_seg"].requires_grad and 0 <= losses["acc_seg"] <= 100
        losses["loss_ce"].backward()
        assert head.conv_seg.weight.grad is not None
        head.eval()
        assert run(features(size=size), size).shape[1] == NUM_CLASSES


def test_head_input_transforms_and_loss_lists():
    head = build_head(dict(type="FCNHead", in_channels=[16, 32, 64], in_index=[1, 2, 3], channels=8,
                           input_transform="resize_concat", num_classes=NUM_CLASSES,
                           loss_decode=[dict(type="CrossEntropyLoss", loss_weight=1.0),
                                        dict(type="CrossEntropyLoss", loss_weight=0.5),
                                        dict(type="CrossEntropyLoss", loss_name="loss_x", use_sigmoid=True)]))
    assert head.in_channels == 112
    logits = head(features())
    assert logits.shape[2:] == (8, 8)  # resized to the first selected map (1/8)
    y = labels((64, 64))
    losses = head.losses(logits, y)
    assert set(losses) == {"loss_ce", "loss_x", "acc_seg"}
    single = build_head(dict(type="FCNHead", in_channels=[16, 32, 64], in_index=[1, 2, 3], channels=8,
                             input_transform="resize_concat", num_classes=NUM_CLASSES))
    single.load_state_dict(head.state_dict())
    assert torch.allclose(losses["loss_ce"], 1.5 * single.losses(logits, y)["loss_ce"])
    multi = BaseDecodeHead(in_channels=[8, 32], channels=8, num_classes=NUM_CLASSES, in_index=[0, 2],
                           input_transform="multiple_select")
    assert [t.shape[1] for t in multi._transform_inputs(features())] == [8, 32]
    with pytest.raises(ConfigError, match="in_index"):
        BaseDecodeHead(in_channels=[8, 32], channels=8, num_classes=NUM_CLASSES, in_index=2,
                       input_transform="resize_concat")


def test_acc_seg_counts_only_valid_pixels():
    head = build_head(TINY_HEADS["FCNHead"])
    logits = torch.zeros(1, NUM_CLASSES, 2, 2)
    logits[0, 1] = 1.0  # predicts class 1 everywhere
    y = torch.tensor([[[1, 0], [255, 255]]])
    assert head.losses(logits, y)["acc_seg"].item() == pytest.approx(50.0, abs=1e-3)


# ---------------------------------------------------------------- segmentors
@pytest.mark.parametrize("head,aux", [("PSPHead", True), ("FCNHead", False), ("FCNHead", "list")])
def test_segmentor_train_and_eval(head, aux):
    model = build_segmentor(tiny_model_cfg(head, aux))
    assert model.num_classes == NUM_CLASSES and model.align_corners is False
    expected = {"decode.loss_ce", "decode.acc_seg"}
    if aux is True:
        expected |= {"aux.loss_ce", "aux.acc_seg"}
    elif aux == "list":
        expected |= {"aux_0.loss_ce", "aux_0.acc_seg", "aux_1.loss_ce", "aux_1.acc_seg"}
    for size in SIZES:
        model.train()
        model.zero_grad()
        losses = model(torch.randn(2, 3, *size), labels(size))
        assert set(losses) == expected
        sum(v for k, v in losses.items() if "loss" in k).backward()
        assert model.backbone.stem[0].weight.grad.abs().sum() > 0
        losses_4d = model(torch.randn(2, 3, *size), labels(size).unsqueeze(1))
        assert set(losses_4d) == expected
        model.eval()
        with torch.no_grad():
            out = model(torch.randn(2, 3, *size))
            assert set(out) == {"out"} and out["out"].shape == (2, NUM_CLASSES, *size)
            pred = model.predict(torch.randn(1, 3, *size), ori_shape=(size[0] * 2, size[1] + 3))
            assert pred.dtype == torch.long and pred.shape == (1, size[0] * 2, size[1] + 3)


def test_slide_inference_matches_whole_when_window_covers_image():
    torch.manual_seed(0)
    model = build_segmentor(tiny_model_cfg(test_cfg=dict(mode="slide", crop_size=(64, 80), stride=(32, 32)))).eval()
    whole = build_segmentor(tiny_model_cfg()).eval()
    whole.load_state_dict(model.state_dict())
    img = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        assert torch.allclose(model.inference(img), whole.inference(img), atol=1e-5)
        # Larger image: overlapping windows, finite and full size.
        big = model.inference(torch.randn(1, 3, 100, 130), ori_shape=(50, 65))
        assert big.shape == (1, NUM_CLASSES, 50, 65) and torch.isfinite(big).all()
        # Smaller than a window: padded, cropped back.
        small = model.inference(torch.randn(1, 3, 40, 50))
        assert small.shape == (1, NUM_CLASSES, 40, 50) and torch.isfinite(small).all()


def test_slide_needs_crop_and_stride():
    with pytest.raises(ConfigError, match="crop_size"):
        build_segmentor(tiny_model_cfg(test_cfg=dict(mode="slide", stride=32)))
    with pytest.raises(ConfigError, match="mdoe"):
        build_segmentor(tiny_model_cfg(test_cfg=dict(mdoe="whole")))


@pytest.mark.parametrize("where,key", [
    ("model", "auxilary_head"), ("backbone", "deph"), ("decode_head", "chanels"), ("auxiliary_head", "kernel"),
    ("loss", "loss_wieght")])
def test_unknown_config_argument_is_named(where, key):
    cfg = tiny_model_cfg()
    target = {"model": cfg, "backbone": cfg["backbone"], "decode_head": cfg["decode_head"],
              "auxiliary_head": cfg["auxiliary_head"], "loss": cfg["auxiliary_head"]["loss_decode"]}[where]
    target[key] = 1
    with pytest.raises(ConfigError, match=key):
        build_segmentor(cfg)


def test_unknown_type_and_bad_norm_are_config_errors():
    cfg = tiny_model_cfg()
    cfg["backbone"]["type"] = "ResNetV1x"
    with pytest.raises(ConfigError, match="ResNetV1x"):
        build_segmentor(cfg)
    cfg = tiny_model_cfg()
    cfg["decode_head"]["norm_cfg"] = dict(type="BN", momentun=0.1)
    with pytest.raises(ConfigError, match="momentun"):
        build_segmentor(cfg)


def test_state_dict_keys_match_mmseg_names():
    keys = set(build_segmentor(tiny_model_cfg("PSPHead", True)).state_dict())
    for k in ["backbone.stem.0.weight", "backbone.stem.1.weight", "backbone.stem.3.weight", "backbone.stem.7.running_var",
              "backbone.layer1.0.conv1.weight", "backbone.layer1.0.bn1.weight", "backbone.layer2.0.downsample.0.weight",
              "backbone.layer2.0.downsample.1.weight", "backbone.layer4.1.bn2.running_mean",
              "decode_head.conv_seg.weight", "decode_head.conv_seg.bias", "decode_head.bottleneck.conv.weight",
              "decode_head.bottleneck.bn.weight", "decode_head.psp_modules.0.1.conv.weight",
              "decode_head.psp_modules.2.1.bn.running_mean", "auxiliary_head.convs.0.conv.weight",
              "auxiliary_head.convs.0.bn.weight", "auxiliary_head.conv_seg.weight"]:
        assert k in keys, k
    assert not any(k.startswith("backbone.conv1") for k in keys)  # deep stem replaces conv1
    assert "decode_head.bottleneck.conv.bias" not in keys  # bias='auto': no bias before a norm
    fcn = set(build_segmentor(tiny_model_cfg("FCNHead", False)).state_dict())
    assert {"decode_head.convs.1.conv.weight", "decode_head.conv_cat.conv.weight"} <= fcn
    plain = set(build_backbone(dict(type="ResNet", depth=50, base_channels=4)).state_dict())
    assert {"conv1.weight", "bn1.weight", "layer1.0.conv3.weight", "layer1.0.bn3.weight"} <= plain


def test_state_dict_round_trip(tmp_path):
    torch.manual_seed(1)
    a = build_segmentor(tiny_model_cfg()).eval()
    torch.manual_seed(2)
    b = build_segmentor(tiny_model_cfg()).eval()
    img = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a(torch.randn(2, 3, 64, 64))
        assert not torch.allclose(a.inference(img), b.inference(img))
        path = tmp_path / "model.pth"
        torch.save(a.state_dict(), path)
        b.load_state_dict(torch.load(path, weights_only=True))
        assert torch.equal(a.inference(img), b.inference(img))


def test_pretrained_backbone_from_local_file(tmp_path):
    torch.manual_seed(3)
    src = build_backbone(tiny_model_cfg()["backbone"])
    path = tmp_path / "backbone.pth"
    torch.save({"state_dict": src.state_dict()}, path)
    model = build_segmentor(dict(tiny_model_cfg(), pretrained=str(path)))
    assert torch.equal(model.backbone.layer1[0].conv1.weight, src.layer1[0].conv1.weight)
    # An MMSeg full-model checkpoint: take the backbone part with init_cfg prefix.
    torch.save({"state_dict": {"backbone." + k: v for k, v in src.state_dict().items()}}, path)
    cfg = tiny_model_cfg()
    cfg["backbone"]["init_cfg"] = dict(type="Pretrained", checkpoint=str(path), prefix="backbone.")
    assert torch.equal(build_segmentor(cfg).backbone.stem[0].weight, src.stem[0].weight)
    with pytest.raises(CheckpointError):
        build_segmentor(dict(tiny_model_cfg(), pretrained=str(path)))  # no key matches without the prefix
    # An unreachable URL is an error naming it (no network is needed for this check).
    with pytest.raises(CheckpointError, match="file:///nonexistent/r50.pth"):
        build_segmentor(dict(tiny_model_cfg(), pretrained="file:///nonexistent/r50.pth"))


def test_uses_sync_bn():
    cfg = tiny_model_cfg()
    assert not uses_sync_bn(cfg)
    cfg["auxiliary_head"]["norm_cfg"] = dict(type="SyncBN", requires_grad=True)
    assert uses_sync_bn(cfg) and uses_sync_bn([{"x": cfg}])
    model = build_segmentor(cfg)  # SyncBN is a plain BatchNorm2d until the engine converts it
    assert isinstance(model.auxiliary_head.convs[0].bn, nn.BatchNorm2d)


@pytest.mark.parametrize("name,head", [("pspnet_r50-d8", "PSPHead"), ("fcn_r50-d8", "FCNHead")])
def test_base_model_yaml_builds(name, head):
    with open(os.path.join(ROOT, "configs", "_base_", "models", f"{name}.yaml")) as f:
        cfg = yaml.safe_load(f)
    assert uses_sync_bn(cfg["model"]) and cfg["model"]["pretrained"] == "open-mmlab://resnet50_v1c"
    model = build_segmentor(without_pretrained(cfg["model"])).eval()  # no network in tests
    assert type(model.decode_head).__name__ == head and model.num_classes == 19
    assert model.backbone.layer4[2].conv3.out_channels == 2048
    with torch.no_grad():
        out = model(torch.randn(1, 3, 32, 32))["out"]
    assert out.shape == (1, 19, 32, 32)


def test_slide_runs_a_small_image_whole_like_mmseg():
    model = build_segmentor(tiny_model_cfg(test_cfg=dict(mode="slide", crop_size=(48, 48), stride=(32, 32)))).eval()
    img = torch.randn(1, 3, 40, 36)
    with torch.no_grad():
        assert torch.allclose(model.inference(img), model.encode_decode(img), atol=1e-6)


def _param_count(module):
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_are_recorded():
    """Counts of every tiny part, compared with tests/fixtures/param_counts.json so a change shows up.

    Regenerate the file with RAYSEG_RECORD_PARAM_COUNTS=1 after an intended change.
    """
    import json

    counts = {f"backbone/{name}": _param_count(build_backbone(cfg)) for name, (cfg, _) in TINY_BACKBONES.items()}
    counts.update({f"head/{name}": _param_count(build_head(cfg)) for name, cfg in TINY_HEADS.items()})
    path = os.path.join(ROOT, "tests", "fixtures", "param_counts.json")
    if os.environ.get("RAYSEG_RECORD_PARAM_COUNTS") == "1":
        with open(path, "w") as f:
            json.dump(dict(sorted(counts.items())), f, indent=1)
    with open(path) as f:
        assert counts == json.load(f)
