"""Pretrained weights reach every part MMSeg loads them into, reshaped as MMSeg reshapes them.

- ``without_pretrained`` / the job check clear (and check) every Pretrained ``init_cfg`` at any depth, STDC's and
  BiSeNetV1's inner ``backbone_cfg`` included;
- a checkpoint named by the inner backbone's ``init_cfg`` survives building STDC's context path and BiSeNetV1
  (the outer backbone's default init leaves the inner one alone);
- ViT resizes a pretrained ``pos_embed`` of another grid, BEiT drops ``relative_position_index`` and resamples its
  relative position bias tables (MMSeg's geometric-sequence interpolation), Swin resizes its tables;
- a missing local file MMSeg's configs name (``pretrain/...``) fails saying how to make it.
Every checkpoint is written by the test.
"""
import pytest
import torch
import torch.nn as nn

from rayseg.errors import CheckpointError, ConfigError
from rayseg.inference import without_pretrained
from rayseg.models.backbones.beit import geometric_sequence_interpolation
from rayseg.models.pretrained import load_pretrained_weights, pretrained_sources
from rayseg.registry import BACKBONES, build
from rayseg.spec.check import _without_pretrained

torch.set_num_threads(1)
STDC = dict(type="STDCNet", stdc_type="STDCNet1", channels=(4, 8, 16, 16, 32), bottleneck_type="cat")
CONTEXT = dict(type="STDCContextPathNet", backbone_cfg=STDC, last_in_channels=(32, 16), out_channels=8,
               ffm_cfg=dict(in_channels=24, out_channels=16, scale_factor=4))
RESNET = dict(type="ResNet", depth=18, base_channels=4, stem_channels=8)
BISENET = dict(type="BiSeNetV1", context_channels=(8, 16, 32), spatial_channels=(4, 4, 4, 8), out_channels=16,
               backbone_cfg=RESNET)


def marked(module, value=0.25):
    """``module``'s state dict with every float tensor set to ``value`` (unlike any init)."""
    return {k: torch.full_like(v, value) if v.is_floating_point() else v for k, v in module.state_dict().items()}


def with_init(cfg, path):
    return dict(cfg, init_cfg=dict(type="Pretrained", checkpoint=str(path)))


# ------------------------------------------------------------------ nested init_cfg cleared and checked
def test_without_pretrained_clears_every_depth():
    model = dict(type="EncoderDecoder", pretrained="a.pth",
                 backbone=dict(CONTEXT, pretrained=None, backbone_cfg=with_init(STDC, "pretrain/stdc1.pth")),
                 decode_head=dict(type="FCNHead", init_cfg=[dict(type="Normal", std=0.01),
                                                            dict(type="Pretrained", checkpoint="h.pth")]))
    assert [w for w, _ in pretrained_sources(model)] == [
        "model.pretrained", "model.backbone.backbone_cfg.init_cfg.checkpoint",
        "model.decode_head.init_cfg[1].checkpoint"]
    cleared = without_pretrained(model)
    assert cleared["pretrained"] is None and cleared["backbone"]["backbone_cfg"]["init_cfg"] is None
    assert cleared["decode_head"]["init_cfg"] == [dict(type="Normal", std=0.01)]  # other inits stay
    assert pretrained_sources(cleared) == []
    assert model["backbone"]["backbone_cfg"]["init_cfg"]["checkpoint"] == "pretrain/stdc1.pth"  # input untouched


def test_check_names_the_nested_missing_file_and_how_to_make_it():
    model = dict(type="EncoderDecoder", backbone=dict(CONTEXT, backbone_cfg=with_init(STDC, "pretrain/nope.pth")))
    with pytest.raises(ConfigError, match=r"^model.backbone.backbone_cfg.init_cfg.checkpoint: checkpoint file not "
                                          r"found: pretrain/nope.pth"):
        _without_pretrained(model)
    setr = dict(type="EncoderDecoder", backbone=with_init(dict(type="VisionTransformer"), "pretrain/vit_large_p16.pth"))
    with pytest.raises(ConfigError, match=r"jobs/convert_weights.py vit SRC pretrain/vit_large_p16.pth"):
        _without_pretrained(setr)


def test_missing_local_beit_file_fails_the_load_saying_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as info:
        load_pretrained_weights(nn.Linear(2, 2), "pretrain/beit_base_patch16_224_pt22k_ft22k.pth")
    text = str(info.value)
    assert "checkpoint file not found: pretrain/beit_base_patch16_224_pt22k_ft22k.pth" in text
    assert "jobs/convert_weights.py beit SRC pretrain/beit_base_patch16_224_pt22k_ft22k.pth" in text


# ------------------------------------------------------------------ the inner backbone's weights survive
@pytest.mark.parametrize("outer,inner_key", [(CONTEXT, "backbone"), (BISENET, "context_path.backbone")],
                         ids=["stdc", "bisenetv1"])
def test_inner_backbone_init_cfg_survives_the_outer_init(tmp_path, outer, inner_key):
    inner_cfg = outer["backbone_cfg"]
    weights = marked(build(inner_cfg, BACKBONES))
    path = tmp_path / "inner.pth"
    torch.save({"state_dict": weights}, path)
    model = build(dict(outer, backbone_cfg=with_init(inner_cfg, path)), BACKBONES)
    inner = model.get_submodule(inner_key).state_dict()
    assert all(torch.equal(inner[k], v) for k, v in weights.items())
    # The outer layers still get their default init (Kaiming convs: not the marked value, not all zeros).
    outer_convs = [m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and not n.startswith(inner_key)]
    assert outer_convs and all(m.weight.std() > 0 for m in outer_convs)


# ------------------------------------------------------------------ ViT: pos_embed resized on load
def test_vit_resizes_a_pretrained_pos_embed_of_another_grid(tmp_path):
    small = dict(type="VisionTransformer", img_size=32, patch_size=8, embed_dims=16, num_layers=1, num_heads=2)
    weights = build(small, BACKBONES).state_dict()  # 4×4 grid
    path = tmp_path / "vit.pth"
    torch.save(weights, path)
    big = build(with_init(dict(small, img_size=64), path), BACKBONES)  # 8×8 grid
    pos = big.pos_embed.detach()
    assert pos.shape == (1, 65, 16)
    assert torch.equal(pos[:, :1], weights["pos_embed"][:, :1])  # the class token's slot is kept
    expected = big.resize_pos_embed(weights["pos_embed"], (8, 8), (4, 4), "bicubic")
    assert torch.allclose(pos, expected)
    assert torch.equal(big.layers[0].ln1.weight.detach(), weights["layers.0.ln1.weight"])


# ------------------------------------------------------------------ BEiT: relative position tables resampled
def test_geometric_interpolation_keeps_the_centre_and_constants():
    src, dst, heads = 7, 11, 2
    table = torch.randn(src * src, heads)
    out = geometric_sequence_interpolation(src, dst, table)
    assert out.shape == (dst * dst, heads)
    centre_src, centre_dst = (src * src) // 2, (dst * dst) // 2  # offset (0, 0): a knot of the spline
    assert torch.allclose(out[centre_dst], table[centre_src], atol=1e-5)
    const = geometric_sequence_interpolation(src, dst, torch.full((src * src, heads), 0.5))
    assert torch.allclose(const, torch.full_like(const, 0.5), atol=1e-5)


def test_beit_224_checkpoint_loads_into_a_640_model(tmp_path):
    """BEiT's release is pretrained at 224² (14×14 tokens); MMSeg's ADE20K configs run at 640² (40×40). Tiny
    widths, the same grids: the tables are resampled, the class-token rows and every other weight kept."""
    cfg = dict(type="BEiT", patch_size=16, embed_dims=8, num_layers=1, num_heads=2)
    weights = marked(build(dict(cfg, img_size=224), BACKBONES))
    key = "layers.0.attn.relative_position_bias_table"
    weights[key] = torch.randn(weights[key].shape)
    path = tmp_path / "beit_224.pth"
    torch.save({"state_dict": weights}, path)
    model = build(dict(cfg, img_size=640, pretrained=str(path)), BACKBONES)
    got = model.state_dict()
    assert got[key].shape == ((2 * 40 - 1) ** 2 + 3, 2) and weights[key].shape == ((2 * 14 - 1) ** 2 + 3, 2)
    assert torch.equal(got[key][-3:], weights[key][-3:])
    expected = geometric_sequence_interpolation(27, 79, weights[key][:-3])
    assert torch.allclose(got[key][:-3], expected)
    # the model's own index (40×40 grid), not the checkpoint's
    assert got["layers.0.attn.relative_position_index"].max() == (2 * 40 - 1) ** 2 + 2
    for k, v in weights.items():
        if "relative_position" not in k:
            assert torch.equal(got[k], v), k


# ------------------------------------------------------------------ Swin: tables of another window resized
def test_swin_resizes_bias_tables_and_drops_the_backbone_prefix(tmp_path):
    cfg = dict(type="SwinTransformer", embed_dims=8, depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4))
    weights = build(dict(cfg, window_size=3), BACKBONES).state_dict()
    tables = {k for k in weights if "relative_position_bias_table" in k}
    path = tmp_path / "swin.pth"
    torch.save({"state_dict": {"backbone." + k: v for k, v in weights.items() if "relative_position_index" not in k}},
               path)
    got = build(with_init(dict(cfg, window_size=5), path), BACKBONES).state_dict()
    for k in tables:
        assert got[k].shape == ((2 * 5 - 1) ** 2, weights[k].shape[1])
    assert torch.equal(got["patch_embed.projection.weight"], weights["patch_embed.projection.weight"])
