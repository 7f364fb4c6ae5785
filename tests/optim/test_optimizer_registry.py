"""The optimizer registry, optimizer constructors (MMCV's paramwise rules, MMSeg's layer-wise lr decay)."""
from __future__ import annotations

import pytest
import torch

from conftest import REPO_ROOT
from rayseg.config import load_config
from rayseg.errors import ConfigError
from rayseg.models.backbones.mit import MixVisionTransformer
from rayseg.optim import (OPTIMIZER_CONSTRUCTORS, OPTIMIZERS, DefaultOptimizerConstructor, build_lr_schedule,
                          build_optimizer)


class _Net(torch.nn.Module):
    """A conv, a depth-wise conv, a BatchNorm, a LayerNorm and a head."""

    def __init__(self):
        super().__init__()
        self.backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                            torch.nn.Conv2d(4, 4, 3, groups=4))
        self.neck = torch.nn.LayerNorm(4)
        self.decode_head = torch.nn.Conv2d(4, 2, 1)


def _by_name(optimizer):
    return {g["name"]: g for g in optimizer.param_groups}


@pytest.fixture
def registered():
    """Registers names for one test and removes them after it."""
    names = []

    def register(registry, name):
        names.append((registry, name))
        return registry.register(name)

    yield register
    for registry, name in names:
        registry._entries.pop(name, None)


def test_every_torch_optimizer_is_registered_by_name():
    for name in ("SGD", "Adam", "AdamW", "RMSprop", "Adagrad", "RAdam", "NAdam"):
        assert OPTIMIZERS.get(name) is getattr(torch.optim, name)
    opt = build_optimizer(_Net(), {"type": "RMSprop", "lr": 0.01, "alpha": 0.9, "momentum": 0.5})
    assert isinstance(opt, torch.optim.RMSprop) and opt.defaults["alpha"] == 0.9
    assert all(g["lr_mult"] == 1.0 and g["momentum"] == 0.5 for g in opt.param_groups)


def test_a_user_optimizer_registered_by_name(registered):
    @registered(OPTIMIZERS, "MySGD")
    class MySGD(torch.optim.SGD):
        """SGD with one extra argument."""

        def __init__(self, params, lr: float, nesterov_boost: float = 0.0, **kwargs):
            super().__init__(params, lr=lr, **kwargs)
            self.nesterov_boost = nesterov_boost

    opt = build_optimizer(_Net(), {"type": "MySGD", "lr": 0.1, "nesterov_boost": 2.0, "momentum": 0.9})
    assert type(opt) is MySGD and opt.nesterov_boost == 2.0 and opt.defaults["momentum"] == 0.9


def test_unknown_optimizer_names_it_and_lists_the_registered_ones():
    with pytest.raises(ConfigError, match=r"^optimizer.type: unknown optimizer type 'AdamWW'\. Did you mean 'AdamW'"
                                          r".*Registered: .*Adam, AdamW, .*SGD"):
        build_optimizer(_Net(), {"type": "AdamWW", "lr": 0.1})
    with pytest.raises(ConfigError, match="'momentun'"):
        build_optimizer(_Net(), {"type": "SGD", "lr": 0.1, "momentun": 0.9})
    with pytest.raises(ConfigError, match=r"^optimizer.lr is required"):
        build_optimizer(_Net(), {"type": "SGD"})


def test_constructor_selection(registered):
    net = _Net()
    default = build_optimizer(net, {"type": "SGD", "lr": 0.1})
    named = build_optimizer(net, {"type": "SGD", "lr": 0.1, "constructor": "DefaultOptimizerConstructor"})
    assert [g["name"] for g in default.param_groups] == [g["name"] for g in named.param_groups]
    assert [g["name"] for g in default.param_groups] == [n for n, _ in net.named_parameters()]

    @registered(OPTIMIZER_CONSTRUCTORS, "HeadOnlyConstructor")
    class HeadOnlyConstructor(DefaultOptimizerConstructor):
        """Trains only the parameters under ``prefix``, with ``lr_mult``."""

        def __init__(self, prefix: str, lr_mult: float = 1.0):
            super().__init__()
            self.prefix, self.mult = prefix, lr_mult

        def param_groups(self, model, base_lr, base_wd):
            groups = [g for g in super().param_groups(model, base_lr, base_wd) if g["name"].startswith(self.prefix)]
            for g in groups:
                g["lr_mult"], g["lr"] = self.mult, base_lr * self.mult
            return groups

    opt = build_optimizer(net, {"type": "SGD", "lr": 0.1, "constructor": "HeadOnlyConstructor",
                                "paramwise_cfg": {"prefix": "decode_head.", "lr_mult": 3.0}})
    assert [g["name"] for g in opt.param_groups] == ["decode_head.weight", "decode_head.bias"]
    assert build_lr_schedule({"policy": "fixed"}, 0.1, 10).apply(opt, 0) == 0.1
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.3, 0.3])
    with pytest.raises(ConfigError, match=r"^optimizer.paramwise_cfg: constructor 'HeadOnlyConstructor': unknown "
                                          r"argument 'prefx'"):
        build_optimizer(net, {"type": "SGD", "lr": 0.1, "constructor": "HeadOnlyConstructor",
                              "paramwise_cfg": {"prefx": "x"}})
    with pytest.raises(ConfigError, match=r"^optimizer.paramwise_cfg.prefix: required by constructor"):
        build_optimizer(net, {"type": "SGD", "lr": 0.1, "constructor": "HeadOnlyConstructor"})
    with pytest.raises(ConfigError, match=r"^optimizer.constructor: unknown optimizer constructor type 'Nope'\. "
                                          r"Registered: .*DefaultOptimizerConstructor"):
        build_optimizer(net, {"type": "SGD", "lr": 0.1, "constructor": "Nope"})


def test_paramwise_keys_follow_mmcv():
    opt = build_optimizer(_Net(), {"type": "SGD", "lr": 0.1, "weight_decay": 0.01, "paramwise_cfg": {
        "bias_lr_mult": 2.0, "bias_decay_mult": 0.5, "norm_decay_mult": 0.0, "dwconv_decay_mult": 0.1,
        "custom_keys": {"decode_head": {"lr_mult": 10.0}}}})
    g = _by_name(opt)
    # conv: weight plain, bias gets the bias multipliers
    assert (g["backbone.0.weight"]["lr"], g["backbone.0.weight"]["weight_decay"]) == pytest.approx((0.1, 0.01))
    assert (g["backbone.0.bias"]["lr"], g["backbone.0.bias"]["weight_decay"]) == pytest.approx((0.2, 0.005))
    assert g["backbone.0.bias"]["lr_mult"] == 2.0
    # norm layers (BatchNorm, LayerNorm): norm_decay_mult for weight and bias; the bias keeps the base lr
    for name in ("backbone.1.weight", "backbone.1.bias", "neck.weight", "neck.bias"):
        assert g[name]["weight_decay"] == 0.0 and g[name]["lr"] == pytest.approx(0.1)
    # depth-wise conv: dwconv_decay_mult (also for its bias), bias_lr_mult still scales the bias lr
    assert g["backbone.2.weight"]["weight_decay"] == pytest.approx(0.001)
    assert (g["backbone.2.bias"]["lr"], g["backbone.2.bias"]["weight_decay"]) == pytest.approx((0.2, 0.001))
    # a custom key wins over every other rule
    assert (g["decode_head.bias"]["lr"], g["decode_head.bias"]["weight_decay"]) == pytest.approx((1.0, 0.01))


def test_decay_multipliers_need_weight_decay_and_optimizer_defaults_are_kept():
    with pytest.raises(ConfigError, match=r"^optimizer.paramwise_cfg: a decay multiplier needs optimizer."
                                          r"weight_decay"):
        build_optimizer(_Net(), {"type": "SGD", "lr": 0.1, "paramwise_cfg": {"norm_decay_mult": 0.0}})
    # Without weight_decay in the config the groups keep the optimizer's own default (AdamW: 0.01), as in MMCV.
    opt = build_optimizer(_Net(), {"type": "AdamW", "lr": 0.1, "paramwise_cfg": {"bias_lr_mult": 2.0}})
    assert all(g["weight_decay"] == 0.01 for g in opt.param_groups)


def test_bypass_duplicate_skips_a_shared_parameter():
    net = _Net()
    net.tied = torch.nn.Conv2d(4, 2, 1)
    net.tied.weight = net.decode_head.weight  # one parameter in two modules
    with pytest.raises(ConfigError, match=r"set paramwise_cfg.bypass_duplicate: true"):
        build_optimizer(net, {"type": "SGD", "lr": 0.1})
    with pytest.warns(UserWarning, match="tied.weight is a duplicate"):
        opt = build_optimizer(net, {"type": "SGD", "lr": 0.1, "paramwise_cfg": {"bypass_duplicate": True}})
    assert "decode_head.weight" in _by_name(opt) and "tied.weight" not in _by_name(opt)


class _MiTSegmentor(torch.nn.Module):
    """A MiT backbone (depths 2, 1, 3) and a head, named as in rayseg's EncoderDecoder."""

    def __init__(self):
        super().__init__()
        self.backbone = MixVisionTransformer(embed_dims=4, num_stages=3, num_layers=(2, 1, 3), num_heads=(1, 1, 2),
                                             patch_sizes=(7, 3, 3), strides=(4, 2, 2), sr_ratios=(2, 1, 1),
                                             out_indices=(0, 1, 2))
        self.decode_head = torch.nn.Conv2d(8, 2, 1)


def _groups_of(opt):
    return {name: g for g in opt.param_groups for name in g["param_names"]}


def test_layer_wise_decay_on_mit():
    model = _MiTSegmentor()
    opt = build_optimizer(model, {"type": "AdamW", "lr": 1e-3, "weight_decay": 0.05,
                                  "constructor": "LearningRateDecayOptimizerConstructor",
                                  "paramwise_cfg": {"num_layers": 6, "decay_rate": 0.5, "decay_type": "layer_wise"}})
    groups = _groups_of(opt)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    expected_ids = {
        "backbone.layers.0.0.projection.weight": 0,  # the stem
        "backbone.layers.0.1.0.attn.attn.in_proj_weight": 1, "backbone.layers.0.1.1.norm1.weight": 2,
        "backbone.layers.0.2.weight": 2,  # stage 0's norm: its last block
        "backbone.layers.1.0.projection.weight": 3,  # stage 1's patch embedding: its first block
        "backbone.layers.1.1.0.ffn.layers.0.weight": 3, "backbone.layers.2.0.projection.weight": 4,
        "backbone.layers.2.1.2.ffn.layers.4.weight": 6, "backbone.layers.2.2.bias": 6,
        "decode_head.weight": 7, "decode_head.bias": 7,
    }
    for name, lid in expected_ids.items():
        group = groups[name]
        assert group["layer_id"] == lid, name
        assert group["lr_mult"] == pytest.approx(0.5 ** (6 + 1 - lid)) and group["lr"] == pytest.approx(
            1e-3 * 0.5 ** (7 - lid))
    # MMSeg's no-decay rule: 1-D parameters and biases.
    assert groups["backbone.layers.0.2.weight"]["weight_decay"] == 0.0 and groups["decode_head.bias"]["name"] == (
        "layer_7_no_decay")
    assert groups["decode_head.weight"]["weight_decay"] == 0.05 and groups["decode_head.weight"]["lr_mult"] == 1.0
    # The schedule scales each layer group by its lr_mult.
    schedule = build_lr_schedule({"policy": "poly", "power": 1.0}, 1e-3, 10)
    schedule.apply(opt, 5)
    assert groups["backbone.layers.0.0.projection.weight"]["lr"] == pytest.approx(5e-4 * 0.5 ** 7)


def test_stage_wise_decay_on_mit_and_layer_decay_spelling():
    opt = build_optimizer(_MiTSegmentor(), {"type": "AdamW", "lr": 1e-3,
                                            "constructor": "LearningRateDecayOptimizerConstructor",
                                            "paramwise_cfg": {"num_layers": 3, "decay_rate": 0.9,
                                                              "decay_type": "stage_wise"}})
    groups = _groups_of(opt)
    assert {groups[f"backbone.layers.{s}.{part}"]["layer_id"] for s in range(3)
            for part in ("0.projection.weight", "2.weight")} == {1, 2, 3}
    assert groups["backbone.layers.1.0.projection.weight"]["lr_mult"] == pytest.approx(0.9 ** 2)
    assert groups["decode_head.weight"]["layer_id"] == 4 and groups["decode_head.weight"]["lr_mult"] == 1.0
    old = build_optimizer(_MiTSegmentor(), {"type": "AdamW", "lr": 1e-3,
                                            "constructor": "LayerDecayOptimizerConstructor",
                                            "paramwise_cfg": {"num_layers": 6, "layer_decay_rate": 0.5}})
    assert _groups_of(old)["backbone.layers.1.0.projection.weight"]["lr_mult"] == pytest.approx(0.5 ** 4)


def test_layer_decay_on_the_segformer_config():
    from rayseg.inference import without_pretrained
    from rayseg.models import build_segmentor

    cfg = load_config(REPO_ROOT / "configs" / "segformer" / "segformer_mit-b0_512x512_160k_ade20k.yaml")
    model = build_segmentor(without_pretrained(cfg["model"]))
    opt = build_optimizer(model, {"type": "AdamW", "lr": 6e-5, "weight_decay": 0.01,
                                  "constructor": "LearningRateDecayOptimizerConstructor",
                                  "paramwise_cfg": {"num_layers": 8, "decay_rate": 0.9}})
    ids = {g["layer_id"] for g in opt.param_groups}
    assert ids == set(range(10))  # stem 0, MiT-B0's 8 blocks, the heads 9
    with pytest.raises(ConfigError, match=r"^optimizer.paramwise_cfg.num_layers: 4 is fewer than the backbone's 8 "
                                          r"blocks"):
        build_optimizer(model, {"type": "AdamW", "lr": 6e-5, "constructor": "LearningRateDecayOptimizerConstructor",
                                "paramwise_cfg": {"num_layers": 4, "decay_rate": 0.9}})


class ConvNeXtLike(torch.nn.Module):
    """Parameter names as MMSeg's ConvNeXt: downsample_layers.<stage>, stages.<stage>.<block>."""

    def __init__(self):
        super().__init__()
        self.downsample_layers = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(4)])
        self.stages = torch.nn.ModuleList([torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(n)])
                                           for n in (1, 1, 7, 1)])


class BEiTLike(torch.nn.Module):
    """Parameter names as MMSeg's BEiT: cls_token, patch_embed, layers.<i>."""

    def __init__(self):
        super().__init__()
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, 2))
        self.patch_embed = torch.nn.Linear(2, 2)
        self.layers = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(4)])


def _with(backbone):
    model = torch.nn.Module()
    model.backbone, model.decode_head = backbone, torch.nn.Linear(2, 2)
    return model


def test_mmseg_layer_ids_for_convnext_and_vit_names():
    def ids(backbone, **paramwise):
        opt = build_optimizer(_with(backbone), {"type": "AdamW", "lr": 1.0, "weight_decay": 0.05,
                                                "constructor": "LearningRateDecayOptimizerConstructor",
                                                "paramwise_cfg": {"decay_rate": 0.5, **paramwise}})
        return {n: g["layer_id"] for n, g in _groups_of(opt).items() if n.endswith("weight") or "token" in n}

    conv = ids(ConvNeXtLike(), num_layers=6)  # MMSeg: stage 2 block b → 3 + b // 3, stage 3 → num_layers
    assert [conv[f"backbone.downsample_layers.{s}.weight"] for s in range(4)] == [0, 2, 3, 6]
    assert [conv[f"backbone.stages.2.{b}.weight"] for b in range(7)] == [3, 3, 3, 4, 4, 4, 5]
    assert conv["backbone.stages.3.0.weight"] == 6 and conv["decode_head.weight"] == 7
    stage = ids(ConvNeXtLike(), num_layers=4, decay_type="stage_wise")
    assert stage["backbone.downsample_layers.3.weight"] == 0 and stage["backbone.stages.2.5.weight"] == 3
    assert stage["decode_head.weight"] == 5
    vit = ids(BEiTLike(), num_layers=4)
    assert vit["backbone.cls_token"] == 0 and vit["backbone.patch_embed.weight"] == 0
    assert [vit[f"backbone.layers.{i}.weight"] for i in range(4)] == [1, 2, 3, 4] and vit["decode_head.weight"] == 5
    with pytest.raises(ConfigError, match=r"no layer mapping for backbone BEiTLike"):
        ids(BEiTLike(), num_layers=4, decay_type="stage_wise")
    with pytest.raises(ConfigError, match=r"no layer mapping for backbone Linear; supported: MixVisionTransformer"):
        ids(torch.nn.Linear(2, 2), num_layers=4)
    with pytest.raises(ConfigError, match=r"^optimizer.paramwise_cfg.decay_type: expected layer_wise or stage_wise"):
        ids(BEiTLike(), num_layers=4, decay_type="block_wise")
