"""User parts without editing rayseg: ``custom_imports``, ``custom_hooks``, MMSeg's guide examples with only their
import lines changed, ``weighted_loss``, and ``jobs/convert_weights.py``; one end-to-end run trains with a
backbone, loss, transform, dataset, optimizer and hook from a package outside rayseg on the session's Ray head."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conftest import REPO_ROOT

from rayseg.errors import ConfigError

TINY_CONFIG = REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml"


# --------------------------------------------------------------------------------------------------------------
# fixtures: throw-away packages, and registries left as they were (tests/models/test_registered_parts.py fails
# for any registered part without a tiny config)

@pytest.fixture
def clean_registries():
    import rayseg.models  # noqa: F401  (registers rayseg's own parts first)
    import rayseg.optim  # noqa: F401
    from rayseg import custom_imports, registry

    tables = {name: dict(reg._entries) for name, reg in vars(registry).items() if isinstance(reg, registry.Registry)}
    path, modules = list(sys.path), set(sys.modules)
    custom_imports.reset_for_tests()
    yield
    for name, entries in tables.items():
        reg = getattr(registry, name)
        reg._entries.clear()
        reg._entries.update(entries)
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        if name.startswith("userpkg_"):
            del sys.modules[name]
    custom_imports.reset_for_tests()


def write_package(root: Path, name: str, modules: dict) -> Path:
    """``root/name/{__init__.py, <module>.py …}``; returns ``root``."""
    pkg = root / name
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text("")
    for module, text in modules.items():
        (pkg / f"{module}.py").write_text(textwrap.dedent(text))
    return root


# MMSeg 0.x's guide (docs/en/tutorials/customize_models.md, "Add new losses"), verbatim but for the two import
# lines: ``from ..builder import LOSSES`` and ``from .utils import weighted_loss``.
GUIDE_LOSS = '''
import torch
import torch.nn as nn

from rayseg.registry import LOSSES
from rayseg.models.losses.utils import weighted_loss

@weighted_loss
def my_loss(pred, target):
    assert pred.size() == target.size() and target.numel() > 0
    loss = torch.abs(pred - target)
    return loss

@LOSSES.register_module
class MyLoss(nn.Module):

    def __init__(self, reduction='mean', loss_weight=1.0):
        super(MyLoss, self).__init__()
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(self,
                pred,
                target,
                weight=None,
                avg_factor=None,
                reduction_override=None):
        assert reduction_override in (None, 'none', 'mean', 'sum')
        reduction = (
            reduction_override if reduction_override else self.reduction)
        loss = self.loss_weight * my_loss(
            pred, target, weight, reduction=reduction, avg_factor=avg_factor)
        return loss
'''

# The guide's "Add new backbones" example (``from ..builder import BACKBONES``), its ``pass`` bodies filled in.
GUIDE_BACKBONE = '''
import torch.nn as nn

from rayseg.registry import BACKBONES


@BACKBONES.register_module()
class MobileNet(nn.Module):

    def __init__(self, arg1, arg2):
        super().__init__()
        self.stem = nn.Conv2d(3, arg1, 3, stride=4, padding=1)
        self.stage = nn.Conv2d(arg1, arg2, 3, stride=2, padding=1)
        self.initialised_with = "never"

    def forward(self, x):  # should return a tuple
        x = self.stem(x)
        return (x, self.stage(x))

    def init_weights(self, pretrained=None):
        nn.init.constant_(self.stem.bias, 0.5)
        self.initialised_with = repr(pretrained)
'''


def guide_model_cfg(loss=None):
    return dict(type="EncoderDecoder",
                backbone=dict(type="MobileNet", arg1=8, arg2=16),
                decode_head=dict(type="FCNHead", in_channels=16, in_index=1, channels=8, num_convs=1,
                                 num_classes=3, norm_cfg=dict(type="BN"),
                                 loss_decode=loss or dict(type="CrossEntropyLoss", loss_weight=1.0)))


# --------------------------------------------------------------------------------------------------------------
# registries

def test_register_module_takes_every_mmcv_spelling(clean_registries):
    from rayseg.registry import Registry

    reg = Registry("thing")

    @reg.register_module
    class Bare:
        pass

    @reg.register_module()
    class Called:
        pass

    @reg.register_module(name=["Alias1", "Alias2"])
    class Named:
        pass

    class Given:
        pass

    assert reg.register_module(module=Given) is Given
    assert reg.get("Bare") is Bare and reg.get("Called") is Called and reg.get("Given") is Given
    assert reg.get("Alias1") is Named and reg.get("Alias2") is Named
    with pytest.raises(KeyError, match="'Bare' is already registered.*force=True"):
        reg.register_module(name="Bare")(Called)
    assert reg.register_module(name="Bare", force=True)(Called) is Called and reg.get("Bare") is Called


# --------------------------------------------------------------------------------------------------------------
# weighted_loss: MMSeg's semantics, against hand computations

def test_weighted_loss_matches_a_hand_computation():
    from rayseg.models.losses.utils import weight_reduce_loss, weighted_loss

    @weighted_loss
    def l1(pred, target, scale=1.0):
        return scale * (pred - target).abs()

    pred = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    target = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    elem = torch.tensor([[1.0, 2.0], [2.0, 0.5]])  # |pred - target|
    weight = torch.tensor([[1.0, 0.0], [2.0, 1.0]])
    assert l1(pred, target).item() == pytest.approx(5.5 / 4)
    assert l1(pred, target, reduction="sum").item() == pytest.approx(5.5)
    assert torch.equal(l1(pred, target, reduction="none"), elem)
    assert l1(pred, target, weight).item() == pytest.approx((1 + 0 + 4 + 0.5) / 4)
    assert l1(pred, target, weight, avg_factor=2).item() == pytest.approx(5.5 / 2, rel=1e-6)
    assert torch.equal(l1(pred, target, weight, reduction="none", avg_factor=2), elem * weight)
    assert l1(pred, target, scale=2.0, reduction="sum").item() == pytest.approx(11.0)  # kwargs reach the function
    with pytest.raises(ValueError, match="avg_factor can not be used with reduction=\"sum\""):
        l1(pred, target, avg_factor=2, reduction="sum")
    # A per-pixel weight broadcasts over channels (dimension 1 of size 1), as in MMSeg.
    loss4 = torch.ones(2, 3, 2, 2)
    assert weight_reduce_loss(loss4, torch.zeros(2, 1, 2, 2), reduction="sum").item() == 0
    with pytest.raises(ValueError, match="dimension 1"):
        weight_reduce_loss(loss4, torch.ones(2, 2, 2, 2))


# --------------------------------------------------------------------------------------------------------------
# MMSeg's guide examples, with only their import lines changed

def test_guides_custom_loss_runs_in_a_decode_head(clean_registries, tmp_path):
    from rayseg.custom_imports import import_custom_modules
    from rayseg.models import build_head
    from rayseg.models.losses.utils import ElementwiseLossAdapter

    root = write_package(tmp_path, "userpkg_loss", {"my_loss": GUIDE_LOSS})
    sys.path.append(str(root))
    import_custom_modules({"custom_imports": {"imports": ["userpkg_loss.my_loss"]}})
    head = build_head(dict(type="FCNHead", in_channels=4, channels=4, num_convs=1, num_classes=3,
                           norm_cfg=dict(type="BN"), loss_decode=dict(type="MyLoss", loss_weight=2.0)))
    assert isinstance(head.loss_decode, ElementwiseLossAdapter) and head.loss_decode.loss_name == "loss_my"

    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    label = torch.randint(0, 3, (2, 4, 4))
    label[0, 0, :] = 255  # ignored pixels add nothing
    losses = head.losses(logits, label)
    onehot = torch.nn.functional.one_hot(label.clamp(max=2), 3).permute(0, 3, 1, 2).float()
    valid = (label != 255).float().unsqueeze(1)
    expected = 2.0 * ((logits - onehot).abs() * valid).sum() / logits.numel()
    assert losses["loss_my"].item() == pytest.approx(expected.item(), rel=1e-5)
    losses["loss_my"].backward()
    assert logits.grad is not None and logits.grad[0, :, 0, :].abs().sum() == 0
    # What a pixel sampler asks for: the per-pixel loss.
    per_pixel = head.loss_decode(logits.detach(), label, reduction_override="none")
    assert per_pixel.shape == (2, 4, 4) and per_pixel[0, 0].abs().sum() == 0


def test_guides_custom_backbone_builds_initialises_and_trains(clean_registries, tmp_path):
    from rayseg.custom_imports import import_custom_modules
    from rayseg.models import build_segmentor

    root = write_package(tmp_path, "userpkg_backbone", {"mobilenet": GUIDE_BACKBONE, "my_loss": GUIDE_LOSS})
    sys.path.append(str(root))
    import_custom_modules({"custom_imports": {"imports": ["userpkg_backbone.mobilenet", "userpkg_backbone.my_loss"]}})
    model = build_segmentor(guide_model_cfg(dict(type="MyLoss")))
    # MMSeg's segmentor calls init_weights() on its backbone; rayseg's registry does it for foreign backbones.
    assert model.backbone.initialised_with == "None" and torch.all(model.backbone.stem.bias == 0.5)
    img = torch.randn(2, 3, 32, 32)
    seg = torch.randint(0, 3, (2, 32, 32))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = model.forward_train(img, seg) if hasattr(model, "forward_train") else model(img, seg)
    total = sum(v for k, v in losses.items() if "loss" in k)
    total.backward()
    optimizer.step()
    assert any(k.endswith("loss_my") for k in losses)
    model.eval()
    with torch.no_grad():
        assert model.encode_decode(img).shape == (2, 3, 32, 32)


# --------------------------------------------------------------------------------------------------------------
# custom_imports

def test_custom_imports_errors_name_the_module(clean_registries, tmp_path):
    from rayseg.custom_imports import import_custom_modules, resolve_custom_imports

    with pytest.raises(ConfigError, match=r"custom_imports: cannot import 'userpkg_missing\.head'.*PYTHONPATH"):
        import_custom_modules({"custom_imports": {"imports": ["userpkg_missing.head"]}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        spec = import_custom_modules({"custom_imports": {"imports": "userpkg_missing.head",
                                                          "allow_failed_imports": True}})
    assert spec.modules == ("userpkg_missing.head",)
    assert any("userpkg_missing.head" in str(w.message) and "skipped" in str(w.message) for w in caught)
    root = write_package(tmp_path, "userpkg_broken", {"bad": "import torch\nraise KeyError('no such thing')\n"})
    sys.path.append(str(root))
    with pytest.raises(ConfigError, match=r"importing 'userpkg_broken\.bad' failed: KeyError.*bad\.py:2"):
        import_custom_modules({"custom_imports": {"imports": ["userpkg_broken.bad"]}})
    for bad, match in [({"imports": [1]}, "custom_imports.imports"), ([1], "expected a mapping"), ({"imports": ["a/b.py"]}, "not a module name"),
                       ({"imports": ["x"], "allow": True}, "unknown key"),
                       ({"imports": ["x"], "allow_failed_imports": "yes"}, "allow_failed_imports")]:
        with pytest.raises(ConfigError, match=match):
            resolve_custom_imports(bad)


def test_custom_imports_find_modules_in_the_current_directory(clean_registries, tmp_path, monkeypatch):
    from rayseg.custom_imports import import_custom_modules
    from rayseg.registry import BACKBONES

    write_package(tmp_path, "userpkg_cwd", {"mobilenet": GUIDE_BACKBONE})
    monkeypatch.chdir(tmp_path)
    sys.path[:] = [p for p in sys.path if p not in ("", ".", str(tmp_path))]
    spec = import_custom_modules({"custom_imports": {"imports": ["userpkg_cwd.mobilenet"]}})
    assert "MobileNet" in BACKBONES and spec.paths == (str(tmp_path),)


def test_config_keys_resolve_into_the_run_spec(clean_registries, tmp_path, demo_data):
    from rayseg.config import load_config
    from rayseg.spec.resolve import resolve_run

    write_package(tmp_path, "userpkg_spec", {"hooks": '''
        from rayseg.engine.hooks import Hook
        from rayseg.registry import HOOKS

        @HOOKS.register_module()
        class EarlyHook(Hook):
            priority = "HIGH"

        @HOOKS.register_module()
        class ArgHook(Hook):
            def __init__(self, every=1):
                self.every = every

        @HOOKS.register_module()
        class NotAHook:
            pass
        ''', "mobilenet": GUIDE_BACKBONE})
    sys.path.append(str(tmp_path))
    config = tmp_path / "cfg.yaml"
    config.write_text(f"_base_: {TINY_CONFIG}\n" + textwrap.dedent("""
        custom_imports: {imports: [userpkg_spec.hooks, userpkg_spec.mobilenet], allow_failed_imports: false}
        custom_hooks:
          - {type: ArgHook, every: 3}
          - {type: EarlyHook}
          - {type: ArgHook, priority: 0}
          - {type: ArgHook, priority: LOWEST}
        """))
    options = [f"data.{s}.data_root={demo_data}" for s in ("train", "val", "test")]
    spec = resolve_run(load_config(str(config), options), work_dir=str(tmp_path / "work"))
    assert spec.custom_imports.modules == ("userpkg_spec.hooks", "userpkg_spec.mobilenet")
    assert str(tmp_path) in spec.custom_imports.paths
    assert [(h["type"], h["priority"]) for h in spec.custom_hooks] == [
        ("ArgHook", 0), ("EarlyHook", 30), ("ArgHook", 50), ("ArgHook", 100)]
    assert spec.custom_hooks[2]["every"] == 3
    for hooks, match in [("[{type: NoSuchHook}]", r"custom_hooks\.0\.type: unknown hook type 'NoSuchHook'"),
                         ("[{type: ArgHook, evry: 2}]", r"custom_hooks\.0: hook 'ArgHook': unknown argument 'evry'"),
                         ("[{type: ArgHook, priority: 101}]", r"custom_hooks\.0\.priority"),
                         ("[{type: NotAHook}]", "must derive from rayseg.engine.hooks.Hook")]:
        with pytest.raises(ConfigError, match=match):
            resolve_run(load_config(str(config), options + [f"custom_hooks={hooks}"]), work_dir=str(tmp_path / "w"))
    with pytest.raises(ConfigError, match="custom_imports.imports"):
        load_config(str(config), options + ["custom_imports.imports=3"])


def test_workers_import_the_modules_from_the_jobs_runtime_env(clean_registries, tmp_path):
    """What Ray's worker_process_setup_hook does in every worker process, in a fresh interpreter whose sys.path
    lacks the package's folder."""
    from rayseg.custom_imports import ENV_VAR, import_custom_modules
    from rayseg.utils.ray_session import job_runtime_env

    assert ENV_VAR not in job_runtime_env().get("env_vars", {})
    write_package(tmp_path, "userpkg_env", {"mobilenet": GUIDE_BACKBONE})
    sys.path.append(str(tmp_path))
    import_custom_modules({"custom_imports": {"imports": ["userpkg_env.mobilenet"]}})
    runtime_env = job_runtime_env()
    assert runtime_env["worker_process_setup_hook"] == "rayseg.utils.ray_session.quiet_ray_process"
    env = dict(os.environ, **runtime_env["env_vars"])
    env.pop("PYTHONPATH", None)
    code = ("import os, sys; from rayseg.custom_imports import import_from_environment; import_from_environment(); "
            "from rayseg.registry import BACKBONES; print('MobileNet' in BACKBONES)")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(REPO_ROOT), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "True", out.stderr[-2000:]


# --------------------------------------------------------------------------------------------------------------
# custom_hooks

def test_hooks_run_in_priority_order_at_each_point():
    from rayseg.engine.hooks import PRIORITIES, Hook, HookList, HookRunner, resolve_priority

    calls = []

    class Recorder(Hook):
        def __init__(self, name):
            self.name = name

        def before_run(self, runner):
            calls.append((self.name, "before_run", runner.iter))

        def before_train(self, runner):
            calls.append((self.name, "before_train", runner.iter))

        def after_train_iter(self, runner, batch_idx=None, outputs=None):
            calls.append((self.name, "after_train_iter", runner.iter, batch_idx, outputs))

        def after_val_epoch(self, runner, metrics=None):
            calls.append((self.name, "after_val_epoch", metrics))

        def before_save_checkpoint(self, runner, checkpoint=None):
            checkpoint[self.name] = runner.iter

        def after_run(self, runner):
            calls.append((self.name, "after_run", runner.iter, self.is_last_iter(runner)))

    class Old(Hook):  # MMCV 1.x style: the runner only
        def after_train_iter(self, runner):
            calls.append(("old", "after_train_iter", runner.iter, self.every_n_iters(runner, 2)))

    hooks = [Recorder("low"), Old(), Recorder("high")]
    priorities = [resolve_priority("LOW", "p"), resolve_priority("NORMAL", "p"), resolve_priority(10, "p")]
    order = sorted(range(3), key=lambda i: priorities[i])
    runner = HookRunner(model=nn.Linear(1, 1), optimizer=None, max_iters=4, work_dir="/tmp")
    hook_list = HookList([hooks[i] for i in order], runner)
    hook_list.call("before_run", 0)
    hook_list.call("after_train_iter", 1, outputs={"loss": 0.5})
    hook_list.call("after_val_epoch", 1, metrics={"mIoU": 10.0})
    checkpoint = {}
    hook_list.call("before_save_checkpoint", 1, checkpoint=checkpoint)
    hook_list.call("after_run", 4)
    assert calls == [
        ("high", "before_run", 0), ("high", "before_train", 0), ("low", "before_run", 0), ("low", "before_train", 0),
        ("high", "after_train_iter", 1, 1, {"loss": 0.5}), ("old", "after_train_iter", 1, True),
        ("low", "after_train_iter", 1, 1, {"loss": 0.5}),
        ("high", "after_val_epoch", {"mIoU": 10.0}), ("low", "after_val_epoch", {"mIoU": 10.0}),
        ("high", "after_run", 4, False), ("low", "after_run", 4, False)]
    assert checkpoint == {"high": 1, "low": 1}
    assert runner.outputs == {"loss": 0.5} and runner.metrics == {"mIoU": 10.0}
    assert PRIORITIES["VERY_HIGH"] < PRIORITIES["NORMAL"] < PRIORITIES["LOWEST"]


# --------------------------------------------------------------------------------------------------------------
# jobs/convert_weights.py: small generated state dicts under the official key names

def segformer_state_dict(dims=(8, 16), heads=(1, 2), depths=(1, 2), srs=(2, 1), mlp_ratio=4, in_ch=3):
    """A tiny MiT under SegFormer's (NVlabs) key names and shapes."""
    sd, prev = {}, in_ch
    for i, (d, r) in enumerate(zip(dims, srs), start=1):
        k = 7 if i == 1 else 3
        sd[f"patch_embed{i}.proj.weight"] = torch.randn(d, prev, k, k)
        sd[f"patch_embed{i}.proj.bias"] = torch.randn(d)
        sd[f"patch_embed{i}.norm.weight"] = torch.randn(d)
        sd[f"patch_embed{i}.norm.bias"] = torch.randn(d)
        for j in range(depths[i - 1]):
            b = f"block{i}.{j}."
            hidden = d * mlp_ratio
            for name, shape in [("norm1.weight", (d,)), ("norm1.bias", (d,)), ("attn.q.weight", (d, d)),
                                ("attn.q.bias", (d,)), ("attn.kv.weight", (2 * d, d)), ("attn.kv.bias", (2 * d,)),
                                ("attn.proj.weight", (d, d)), ("attn.proj.bias", (d,)), ("norm2.weight", (d,)),
                                ("norm2.bias", (d,)), ("mlp.fc1.weight", (hidden, d)), ("mlp.fc1.bias", (hidden,)),
                                ("mlp.dwconv.dwconv.weight", (hidden, 1, 3, 3)), ("mlp.dwconv.dwconv.bias", (hidden,)),
                                ("mlp.fc2.weight", (d, hidden)), ("mlp.fc2.bias", (d,))]:
                sd[b + name] = torch.randn(*shape)
            if r > 1:
                sd[b + "attn.sr.weight"] = torch.randn(d, d, r, r)
                sd[b + "attn.sr.bias"] = torch.randn(d)
                sd[b + "attn.norm.weight"] = torch.randn(d)
                sd[b + "attn.norm.bias"] = torch.randn(d)
        sd[f"norm{i}.weight"] = torch.randn(d)
        sd[f"norm{i}.bias"] = torch.randn(d)
        prev = d
    sd["head.weight"] = torch.randn(10, dims[-1])
    sd["head.bias"] = torch.randn(10)
    return sd


def test_mit_conversion_loads_strictly_into_raysegs_backbone():
    from rayseg.models.converters import convert_state_dict
    from rayseg.registry import BACKBONES

    official = segformer_state_dict()
    converted = convert_state_dict("mit", official)
    mit = BACKBONES.get("MixVisionTransformer")(embed_dims=8, num_stages=2, num_layers=[1, 2], num_heads=[1, 2],
                                                patch_sizes=[7, 3], strides=[4, 2], sr_ratios=[2, 1],
                                                out_indices=(0, 1))
    mit.load_state_dict(converted, strict=True)
    own = mit.state_dict()
    q, kv = official["block1.0.attn.q.weight"], official["block1.0.attn.kv.weight"]
    assert torch.equal(own["layers.0.1.0.attn.attn.in_proj_weight"], torch.cat([q, kv]))
    assert torch.equal(own["layers.1.1.1.ffn.layers.0.weight"], official["block2.1.mlp.fc1.weight"][:, :, None, None])
    assert torch.equal(own["layers.1.2.weight"], official["norm2.weight"])
    assert not any(k.startswith("head") for k in converted)


def test_swin_vit_beit_stdc_keys_follow_mmsegs_converters():
    from rayseg.models.converters import convert_state_dict

    c = 4
    red = torch.arange(2 * 4 * c, dtype=torch.float32).reshape(2, 4 * c)
    swin = convert_state_dict("swin", {
        "patch_embed.proj.weight": torch.zeros(c, 3, 4, 4), "patch_embed.norm.weight": torch.ones(c),
        "layers.0.blocks.0.attn.qkv.weight": torch.zeros(3 * c, c),
        "layers.0.blocks.0.attn.relative_position_bias_table": torch.zeros(49, 1),
        "layers.0.blocks.0.mlp.fc1.weight": torch.zeros(4 * c, c), "layers.0.blocks.0.mlp.fc2.bias": torch.zeros(c),
        "layers.0.blocks.0.norm1.weight": torch.ones(c), "layers.0.downsample.reduction.weight": red,
        "layers.0.downsample.norm.weight": torch.arange(4 * c, dtype=torch.float32), "norm.weight": torch.ones(8),
        "head.weight": torch.zeros(10, 8)})
    assert sorted(swin) == sorted([
        "patch_embed.projection.weight", "patch_embed.norm.weight", "stages.0.blocks.0.attn.w_msa.qkv.weight",
        "stages.0.blocks.0.attn.w_msa.relative_position_bias_table", "stages.0.blocks.0.ffn.layers.0.0.weight",
        "stages.0.blocks.0.ffn.layers.1.bias", "stages.0.blocks.0.norm1.weight",
        "stages.0.downsample.reduction.weight", "stages.0.downsample.norm.weight", "norm.weight"])
    # Swin's 2×2 merge order x0,x1,x2,x3 = (0,0),(1,0),(0,1),(1,1) → nn.Unfold's channel-major (0,0),(0,1),(1,0),(1,1).
    expected = red.reshape(2, 4, c)[:, [0, 2, 1, 3], :].transpose(1, 2).reshape(2, 4 * c)
    assert torch.equal(swin["stages.0.downsample.reduction.weight"], expected)
    assert swin["stages.0.downsample.norm.weight"].tolist() == [0, 8, 4, 12, 1, 9, 5, 13, 2, 10, 6, 14, 3, 11, 7, 15]

    vit = convert_state_dict("vit", {
        "cls_token": torch.zeros(1, 1, c), "pos_embed": torch.zeros(1, 5, c), "patch_embed.proj.weight": torch.zeros(c),
        "blocks.0.norm1.weight": torch.ones(c), "blocks.0.attn.qkv.weight": torch.zeros(3 * c, c),
        "blocks.0.attn.qkv.bias": torch.zeros(3 * c), "blocks.0.attn.proj.weight": torch.zeros(c, c),
        "blocks.0.mlp.fc1.weight": torch.zeros(4 * c, c), "blocks.0.mlp.fc2.weight": torch.zeros(c, 4 * c),
        "norm.weight": torch.ones(c), "head.weight": torch.zeros(10, c)})
    assert sorted(vit) == sorted([
        "cls_token", "pos_embed", "patch_embed.projection.weight", "layers.0.ln1.weight",
        "layers.0.attn.attn.in_proj_weight", "layers.0.attn.attn.in_proj_bias", "layers.0.attn.attn.out_proj.weight",
        "layers.0.ffn.layers.0.0.weight", "layers.0.ffn.layers.1.weight", "ln1.weight"])

    beit = convert_state_dict("beit", {
        "cls_token": torch.zeros(1), "patch_embed.proj.weight": torch.zeros(1), "blocks.0.norm1.weight": torch.ones(1),
        "blocks.0.gamma_1": torch.ones(1), "blocks.0.attn.qkv.weight": torch.zeros(1),
        "blocks.0.attn.relative_position_bias_table": torch.zeros(1), "blocks.0.mlp.fc1.weight": torch.zeros(1),
        "blocks.0.mlp.fc2.bias": torch.zeros(1)})
    assert sorted(beit) == sorted([
        "cls_token", "patch_embed.projection.weight", "layers.0.ln1.weight", "layers.0.gamma_1",
        "layers.0.attn.qkv.weight", "layers.0.attn.relative_position_bias_table", "layers.0.ffn.layers.0.0.weight",
        "layers.0.ffn.layers.1.bias"])

    stdc_official = {"features.0.conv.weight": torch.zeros(1), "features.2.conv_list.0.conv.weight": torch.zeros(1),
                     "features.2.avd_layer.0.weight": torch.zeros(1), "features.2.avd_layer.1.running_mean": torch.zeros(1),
                     "features.5.conv_list.1.bn.weight": torch.zeros(1), "fc.weight": torch.zeros(1),
                     "linear.weight": torch.zeros(1)}
    assert sorted(convert_state_dict("stdc1", stdc_official)) == sorted([
        "stages.0.conv.weight", "stages.2.0.layers.0.conv.weight", "stages.2.0.downsample.conv.weight",
        "stages.2.0.downsample.bn.running_mean", "stages.3.1.layers.1.bn.weight"])
    assert "stages.2.3.layers.1.bn.weight" in convert_state_dict("stdc2", stdc_official)
    with pytest.raises(ConfigError, match="features.13.*STDC1"):
        convert_state_dict("stdc1", {"features.13.conv.weight": torch.zeros(1)})
    with pytest.raises(ConfigError, match="unknown weights kind 'resnet'"):
        convert_state_dict("resnet", stdc_official)
    with pytest.raises(ConfigError, match="lacks 'block1.0.attn.kv.weight'"):
        convert_state_dict("mit", {"block1.0.attn.q.weight": torch.zeros(1)})


def test_convert_weights_job(tmp_path):
    src, dst = tmp_path / "mit_b0.pth", tmp_path / "out" / "mit_b0_rayseg.pth"
    official = segformer_state_dict()
    torch.save({"state_dict": official}, src)
    job = [sys.executable, str(REPO_ROOT / "jobs" / "convert_weights.py")]
    proc = subprocess.run(job + ["mit", str(src), str(dst)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"wrote {dst}" in proc.stdout
    converted = torch.load(dst, weights_only=True)
    assert "layers.0.1.0.attn.attn.in_proj_weight" in converted and "head.weight" not in converted
    bad = subprocess.run(job + ["swim", str(src), str(dst)], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error:") and "unknown KIND 'swim'" in bad.stderr
    missing = subprocess.run(job + ["mit", str(tmp_path / "nope.pth"), str(dst)], capture_output=True, text=True,
                             timeout=300)
    assert missing.returncode == 2 and "nope.pth" in missing.stderr and "Traceback" not in missing.stderr


# --------------------------------------------------------------------------------------------------------------
# end to end: every kind of part from a package outside rayseg, trained and evaluated on the session's Ray head

E2E_PARTS = '''
import os

import torch
import torch.nn as nn

from rayseg.datasets.demo import DemoShapesDataset
from rayseg.engine.hooks import Hook
from rayseg.registry import BACKBONES, DATASETS, HOOKS, OPTIMIZERS, TRANSFORMS


def mark(folder, kind):
    """One empty file per (kind, process): which processes ran this part."""
    open(os.path.join(folder, f"{kind}-{os.getpid()}"), "a").close()


@BACKBONES.register_module()
class TinyUserNet(nn.Module):
    def __init__(self, channels=8, marks=None):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, channels, 3, stride=2, padding=1), nn.ReLU())
        self.stage = nn.Sequential(nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.ReLU())
        if marks:
            mark(marks, "backbone")

    def forward(self, x):
        x = self.stem(x)
        return (x, self.stage(x))


@TRANSFORMS.register_module()
class MarkProcess:
    def __init__(self, marks):
        self.marks = marks

    def __call__(self, results):
        mark(self.marks, "transform")
        return results


@DATASETS.register_module()
class UserShapesDataset(DemoShapesDataset):
    def prepare_train(self, sample):
        mark(self.marks, "dataset")
        return super().prepare_train(sample)

    def __init__(self, marks=None, **kwargs):
        self.marks = marks
        super().__init__(**kwargs)


@OPTIMIZERS.register_module()
class UserSGD(torch.optim.SGD):
    def __init__(self, params, lr, momentum=0.0, weight_decay=0.0, marks=None):
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        if marks:
            mark(marks, "optimizer")


@HOOKS.register_module()
class PointsHook(Hook):
    def __init__(self, out_dir):
        self.out_dir = out_dir

    def _write(self, runner, point, **info):
        if runner.rank == 0:
            with open(os.path.join(self.out_dir, f"{point}-{runner.iter}.json"), "w") as f:
                json_info = {"pid": os.getpid(), "world": runner.world_size, **info}
                f.write(__import__("json").dumps(json_info))

    def before_run(self, runner):
        self._write(runner, "before_run")

    def before_train_iter(self, runner):
        self._write(runner, "before_train_iter")

    def after_train_iter(self, runner, outputs=None):
        self._write(runner, "after_train_iter", loss_keys=sorted(outputs or {}))

    def after_val_epoch(self, runner, metrics=None):
        self._write(runner, "after_val_epoch", mIoU=(metrics or {}).get("mIoU"))

    def before_save_checkpoint(self, runner, checkpoint=None):
        checkpoint["points_hook"] = {"iter": runner.iter}
        self._write(runner, "before_save_checkpoint")

    def after_run(self, runner):
        self._write(runner, "after_run")
'''


@pytest.mark.slow
def test_user_package_trains_and_evaluates_on_ray(ray_head, demo_data, tmp_path):
    pkg_root = write_package(tmp_path / "src", "userpkg_e2e", {"parts": E2E_PARTS, "my_loss": GUIDE_LOSS})
    marks, points = tmp_path / "marks", tmp_path / "points"
    marks.mkdir()
    points.mkdir()
    norm = "{type: Normalize, mean: [123.675, 116.28, 103.53], std: [58.395, 57.12, 57.375], to_rgb: true}"
    config = tmp_path / "user_parts.yaml"
    config.write_text(f"_base_: {TINY_CONFIG}\n" + textwrap.dedent(f"""
        custom_imports: {{imports: [userpkg_e2e.parts, userpkg_e2e.my_loss], allow_failed_imports: false}}
        custom_hooks: [{{type: PointsHook, out_dir: {points}, priority: LOW}}]
        model:
          _delete_: true
          type: EncoderDecoder
          backbone: {{type: TinyUserNet, channels: 8, marks: {marks}}}
          decode_head:
            type: FCNHead
            in_channels: 16
            in_index: 1
            channels: 8
            num_convs: 1
            num_classes: 4
            norm_cfg: {{type: BN}}
            loss_decode: [{{type: MyLoss, loss_weight: 0.5}}, {{type: CrossEntropyLoss, loss_weight: 1.0}}]
          test_cfg: {{mode: whole}}
        data:
          train:
            type: UserShapesDataset
            marks: {marks}
            data_root: {demo_data}
            pipeline:
              - {{type: LoadImageFromFile}}
              - {{type: LoadAnnotations}}
              - {{type: MarkProcess, marks: {marks}}}
              - {{type: Resize, img_scale: [48, 48], keep_ratio: false}}
              - {norm}
          val: {{type: UserShapesDataset, marks: {marks}, data_root: {demo_data}}}
          test: {{type: UserShapesDataset, marks: {marks}, data_root: {demo_data}}}
        optimizer: {{_delete_: true, type: UserSGD, lr: 0.01, momentum: 0.9, marks: {marks}}}
        runner: {{max_iters: 4}}
        evaluation: {{interval: 2}}
        checkpoint_config: {{interval: 2}}
        log_config: {{interval: 1}}
        scaling: {{num_workers: 2}}
        """))
    # The package is on the driver's PYTHONPATH only: the session's head (started before the package existed)
    # and its workers learn its folder from the job's runtime env.
    env = dict(os.environ, RAY_ADDRESS=ray_head.address, PYTHONPATH=str(pkg_root),
               MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}")
    work = tmp_path / "work"
    train = subprocess.Popen([sys.executable, "jobs/train.py", str(config), "--work-dir", str(work)],
                             cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = train.communicate(timeout=600)
    assert train.returncode == 0, out[-5000:]

    def pids(kind):
        return {int(p.rsplit("-", 1)[1]) for p in glob.glob(str(marks / f"{kind}-*"))}

    # Each part ran in Ray processes, not only in the driver (which builds everything once to check it).
    for kind in ("backbone", "optimizer"):
        assert len(pids(kind) - {train.pid}) >= 2, (kind, pids(kind), train.pid)  # both training workers
    for kind in ("transform", "dataset"):
        assert pids(kind) - {train.pid}, (kind, pids(kind))  # the decode/augment actors

    # The hook ran on rank 0 of the two workers at every point, in a worker process.
    written = {p.name for p in points.iterdir()}
    expected = ({"before_run-0.json", "after_run-4.json"}
                | {f"{point}-{i}.json" for point in ("before_train_iter", "after_train_iter") for i in range(4)}
                | {f"{point}-{i}.json" for point in ("after_val_epoch", "before_save_checkpoint") for i in (1, 3)})
    assert written == expected, sorted(written)
    info = json.loads((points / "after_train_iter-3.json").read_text())
    assert info["world"] == 2 and info["pid"] != train.pid and info["pid"] in pids("optimizer")
    assert "decode.loss_my" in info["loss_keys"] and "decode.loss_ce" in info["loss_keys"], info
    assert json.loads((points / "after_val_epoch-3.json").read_text())["mIoU"] is not None
    logged = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines() if line.strip()]
    assert any("decode.loss_my" in "".join(record) for record in logged), logged[-1]
    # What before_save_checkpoint added is in the checkpoint.
    from rayseg.engine.checkpoint import read_checkpoint

    saved = sorted(glob.glob(str(work / "**" / "checkpoint.pt"), recursive=True))
    assert saved and read_checkpoint(saved[-1]).get("points_hook") == {"iter": 3}

    # Evaluation actors build the user's model and dataset too.
    seen = pids("backbone")
    test = subprocess.run([sys.executable, "jobs/test.py", str(config), str(work / "latest.pth"), "--split", "val",
                           "--num-workers", "1", "--no-progress"], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert test.returncode == 0, (test.stdout + test.stderr)[-5000:]
    assert "mIoU" in test.stdout
    # jobs/test.py's driver builds the model once to check the checkpoint; the actor builds it again.
    assert len(pids("backbone") - seen) >= 2, "no evaluation actor built the user's backbone"


# --------------------------------------------------------------------------------------------------------------
# the same keys in MMSeg 1.x .py configs, and in init_model

USER_HOOK = '''
from rayseg.engine.hooks import Hook
from rayseg.registry import HOOKS


@HOOKS.register_module()
class CountingHook(Hook):
    def __init__(self, every=1):
        self.every = every
'''


def test_mmseg_1x_config_keeps_custom_imports_and_user_hooks(clean_registries, tmp_path):
    from rayseg.config import load_config
    from rayseg.mmseg_config import load_mmseg_config

    root = write_package(tmp_path, "userpkg_1x", {"hooks": USER_HOOK, "mobilenet": GUIDE_BACKBONE})
    sys.path.append(str(root))
    base = REPO_ROOT / "tests" / "fixtures" / "mmseg_configs" / "1.x" / "fcn" / "fcn_r50-d8_4xb4-20k_voc12aug-512x512.py"
    path = tmp_path / "mine.py"
    path.write_text(textwrap.dedent(f"""\
        _base_ = ['{base}']
        custom_imports = dict(imports=['userpkg_1x.hooks', 'userpkg_1x.mobilenet'], allow_failed_imports=False)
        custom_hooks = [dict(type='CountingHook', every=5, priority='LOW'), dict(type='EMAHook')]
    """))
    _, report = load_mmseg_config(str(path))
    assert [e.path for e in report.untranslatable] == ["custom_hooks.1"]
    assert "'EMAHook' is MMEngine's" in report.untranslatable[0].reason
    path.write_text(path.read_text().replace(", dict(type='EMAHook')", ""))
    cfg = load_config(str(path))
    assert cfg["custom_imports"] == {"imports": ["userpkg_1x.hooks", "userpkg_1x.mobilenet"],
                                     "allow_failed_imports": False}
    assert cfg["custom_hooks"] == [{"type": "CountingHook", "every": 5, "priority": "LOW"}]

    from rayseg.custom_imports import import_custom_modules
    from rayseg.engine.hooks import resolve_custom_hooks

    import_custom_modules(cfg)
    assert resolve_custom_hooks(cfg["custom_hooks"])[0]["priority"] == 70  # LOW, as in MMEngine


def test_init_model_imports_the_configs_custom_imports(clean_registries, tmp_path):
    from rayseg.apis import init_model
    from rayseg.registry import BACKBONES

    root = write_package(tmp_path, "userpkg_init", {"mobilenet": GUIDE_BACKBONE})
    sys.path.append(str(root))
    assert "MobileNet" not in BACKBONES
    cfg = {"model": guide_model_cfg(), "custom_imports": {"imports": ["userpkg_init.mobilenet"]}}
    model = init_model(cfg)
    assert type(model.backbone).__module__ == "userpkg_init.mobilenet" and not model.training
