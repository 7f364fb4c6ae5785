"""The Swin / ViT converters (rayseg.models.converters, jobs/convert_weights.py) give exactly the key names of
rayseg's SwinTransformer / VisionTransformer (MMSeg's), and Swin's reordered patch-merging weights compute what
Microsoft's PatchMerging computes."""
import torch
import torch.nn as nn

from rayseg.models import build_backbone
from rayseg.models.backbones.swin import PatchMerging
from rayseg.models.converters import convert_state_dict

torch.set_num_threads(1)


def _microsoft_swin_keys(depths, dims):
    """Key names and shapes of Microsoft's Swin release (swin_transformer.py), classifier included."""
    keys = {"patch_embed.proj.weight": (dims, 3, 4, 4), "patch_embed.proj.bias": (dims,),
            "patch_embed.norm.weight": (dims,), "patch_embed.norm.bias": (dims,)}
    for i, depth in enumerate(depths):
        c = dims * 2 ** i
        for j in range(depth):
            p = f"layers.{i}.blocks.{j}."
            keys.update({p + "norm1.weight": (c,), p + "norm1.bias": (c,),
                         p + "attn.relative_position_bias_table": (25, 2), p + "attn.relative_position_index": (9, 9),
                         p + "attn.qkv.weight": (3 * c, c), p + "attn.qkv.bias": (3 * c,),
                         p + "attn.proj.weight": (c, c), p + "attn.proj.bias": (c,),
                         p + "norm2.weight": (c,), p + "norm2.bias": (c,),
                         p + "mlp.fc1.weight": (4 * c, c), p + "mlp.fc1.bias": (4 * c,),
                         p + "mlp.fc2.weight": (c, 4 * c), p + "mlp.fc2.bias": (c,)})
        if i < len(depths) - 1:
            keys.update({f"layers.{i}.downsample.reduction.weight": (2 * c, 4 * c),
                         f"layers.{i}.downsample.norm.weight": (4 * c,),
                         f"layers.{i}.downsample.norm.bias": (4 * c,)})
    last = dims * 2 ** (len(depths) - 1)
    keys.update({"norm.weight": (last,), "norm.bias": (last,), "head.weight": (10, last), "head.bias": (10,)})
    return {k: torch.randn(shape) for k, shape in keys.items()}


def test_swin_converter_gives_rayseg_swin_keys_and_shapes():
    net = build_backbone(dict(type="SwinTransformer", embed_dims=8, depths=(2, 2), num_heads=(2, 2), window_size=3,
                              strides=(4, 2), out_indices=(0, 1)))
    converted = convert_state_dict("swin", _microsoft_swin_keys((2, 2), 8))
    own = net.state_dict()
    # Microsoft's single final ``norm`` has no place in MMSeg's per-output ``norm{i}`` (MMSeg ignores it too).
    assert set(converted) - set(own) == {"norm.weight", "norm.bias"}
    assert set(own) - set(converted) == {"norm0.weight", "norm0.bias", "norm1.weight", "norm1.bias"}
    for key in set(own) & set(converted):
        assert converted[key].shape == own[key].shape, key


def test_converted_patch_merging_computes_microsofts():
    c, h, w = 4, 6, 8
    norm, reduction = nn.LayerNorm(4 * c), nn.Linear(4 * c, 2 * c, bias=False)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    x = torch.randn(2, h * w, c)
    # Microsoft's PatchMerging: the 2×2 neighbours as (0,0), (1,0), (0,1), (1,1), concatenated channel-last.
    grid = x.view(2, h, w, c)
    cat = torch.cat([grid[:, 0::2, 0::2], grid[:, 1::2, 0::2], grid[:, 0::2, 1::2], grid[:, 1::2, 1::2]], -1)
    expected = reduction(norm(cat.view(2, -1, 4 * c)))
    ours = PatchMerging(c, 2 * c, 2, dict(type="LN"))
    state = convert_state_dict("swin", {"layers.0.downsample.reduction.weight": reduction.weight.detach(),
                                        "layers.0.downsample.norm.weight": norm.weight.detach(),
                                        "layers.0.downsample.norm.bias": norm.bias.detach()})
    ours.load_state_dict({k[len("stages.0.downsample."):]: v for k, v in state.items()})
    with torch.no_grad():
        got, hw = ours(x, (h, w))
    assert hw == (h // 2, w // 2)
    torch.testing.assert_close(got, expected.detach(), rtol=1e-5, atol=1e-5)


def test_vit_converter_gives_rayseg_vit_keys_and_shapes():
    dims, layers = 16, 2
    timm = {"cls_token": (1, 1, dims), "pos_embed": (1, 17, dims), "patch_embed.proj.weight": (dims, 3, 8, 8),
            "patch_embed.proj.bias": (dims,), "norm.weight": (dims,), "norm.bias": (dims,),
            "head.weight": (10, dims), "head.bias": (10,)}
    for i in range(layers):
        p = f"blocks.{i}."
        timm.update({p + "norm1.weight": (dims,), p + "norm1.bias": (dims,), p + "attn.qkv.weight": (3 * dims, dims),
                     p + "attn.qkv.bias": (3 * dims,), p + "attn.proj.weight": (dims, dims),
                     p + "attn.proj.bias": (dims,), p + "norm2.weight": (dims,), p + "norm2.bias": (dims,),
                     p + "mlp.fc1.weight": (4 * dims, dims), p + "mlp.fc1.bias": (4 * dims,),
                     p + "mlp.fc2.weight": (dims, 4 * dims), p + "mlp.fc2.bias": (dims,)})
    converted = convert_state_dict("vit", {k: torch.randn(s) for k, s in timm.items()})
    net = build_backbone(dict(type="VisionTransformer", img_size=32, patch_size=8, embed_dims=dims, num_layers=layers,
                              num_heads=2, final_norm=True, patch_bias=True))
    own = net.state_dict()
    assert set(converted) == set(own)
    for key in own:
        assert converted[key].shape == own[key].shape, key
