#!/usr/bin/env python
"""MMSegmentation 1.x reference fixtures for the transformer families (Swin + UPerNet, ViT + SETR / MLN).

Run in the MMSeg venv (see ``tools/make_mmseg_reference.py``), never from CI::

    /tmp/mmseg-venv/bin/python tools/mmseg_reference_transformers.py            # all of them
    /tmp/mmseg-venv/bin/python tools/mmseg_reference_transformers.py --only upernet_swin

Writes ``tests/fixtures/mmseg/<arch>.pth`` / ``<arch>_io.pt`` / ``<arch>.yaml`` with seeds from index 200 + the
architecture's place in ``tiny_configs()`` (append new ones so the others stay byte-identical).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_mmseg_reference  # noqa: E402
from make_mmseg_reference import (BN, OUT, aux_head, head_common, import_mmseg,  # noqa: E402
                                  mmseg_versions, write_reference)

_randomise = make_mmseg_reference.randomise


def randomise_with_aux_list(model, gen, calib):
    """make_mmseg_reference's randomise, also for a list of auxiliary heads (SETR has three or four): the
    ModuleList gets a forward running each head while the BN statistics are measured."""
    aux = getattr(model, "auxiliary_head", None)
    if isinstance(aux, nn.ModuleList):
        aux.forward = lambda feats: [head.forward(feats) for head in aux]
    try:
        _randomise(model, gen, calib)
    finally:
        if isinstance(aux, nn.ModuleList):
            del aux.forward


make_mmseg_reference.randomise = randomise_with_aux_list

INDEX = 200
LN = dict(type="LN")


def swin():
    """Swin at widths 8/16/32/64, two blocks per stage (one plain, one shifted window), window 3: the 16×16,
    8×8, 4×4 and 2×2 token maps of a 64×64 input all need window padding, and the shift masks are exercised."""
    return dict(type="SwinTransformer", pretrain_img_size=64, embed_dims=8, patch_size=4, window_size=3,
                mlp_ratio=4, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), strides=(4, 2, 2, 2),
                out_indices=(0, 1, 2, 3), qkv_bias=True, qk_scale=None, patch_norm=True, drop_rate=0.0,
                attn_drop_rate=0.0, drop_path_rate=0.3, use_abs_pos_embed=False, act_cfg=dict(type="GELU"),
                norm_cfg=LN)


def vit(**kw):
    """ViT at width 16, 4 layers of 2 heads, patch 8, pretraining grid 4×4 (img_size 32): a 64×64 input gives
    an 8×8 grid, so the position embedding is interpolated."""
    cfg = dict(type="VisionTransformer", img_size=(32, 32), patch_size=8, in_channels=3, embed_dims=16,
               num_layers=4, num_heads=2, mlp_ratio=4, out_indices=(0, 1, 2, 3), drop_rate=0.1,
               attn_drop_rate=0.1, drop_path_rate=0.1, norm_cfg=dict(type="LN", eps=1e-6, requires_grad=True),
               with_cls_token=True, interpolate_mode="bilinear")
    cfg.update(kw)
    return cfg


def setr_up(in_index, num_convs, up_scale, kernel_size, loss_weight=1.0):
    common = head_common(16, in_index, 8)
    common.update(dropout_ratio=0, loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False,
                                                    loss_weight=loss_weight))
    return dict(type="SETRUPHead", num_convs=num_convs, up_scale=up_scale, kernel_size=kernel_size, **common)


def tiny_configs():
    """The tiny transformer models, as MMSeg ``model`` dicts (MMSeg 1.x spelling)."""
    cfgs = {}
    ch = [8, 16, 32, 64]
    cfgs["upernet_swin"] = dict(backbone=swin(), decode_head=dict(type="UPerHead", pool_scales=(1, 2, 3, 6),
                                                                  **head_common(ch, [0, 1, 2, 3], 8)),
                                auxiliary_head=aux_head(ch))
    # SETR: naive (1×1 conv, ×4) and PUP (3×3 convs, ×2 each) heads on ViT layers; aux heads as a list.
    cfgs["setr_naive"] = dict(backbone=vit(), decode_head=setr_up(3, 1, 4, 1),
                              auxiliary_head=[setr_up(i, 1, 4, 1, 0.4) for i in (0, 1, 2)])
    cfgs["setr_pup"] = dict(backbone=vit(), decode_head=setr_up(3, 3, 2, 3),
                            auxiliary_head=[setr_up(i, 2, 4, 3, 0.4) for i in (0, 1)])
    # SETR-MLA: no class token, MLANeck with BN + ReLU, SETRMLAHead, FCNHead(num_convs=0) aux heads.
    mla_aux = [dict(type="FCNHead", num_convs=0, kernel_size=1, concat_input=False,
                    **dict(head_common(8, i, 8), dropout_ratio=0, norm_cfg=None,
                           loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4)))
               for i in (0, 3)]
    cfgs["setr_mla"] = dict(backbone=vit(with_cls_token=False),
                            neck=dict(type="MLANeck", in_channels=[16, 16, 16, 16], out_channels=8, norm_cfg=BN,
                                      act_cfg=dict(type="ReLU")),
                            decode_head=dict(type="SETRMLAHead", mla_channels=4, up_scale=4,
                                             **dict(head_common([8, 8, 8, 8], [0, 1, 2, 3], 16), dropout_ratio=0)),
                            auxiliary_head=mla_aux)
    # UPerNet-ViT with MultiLevelNeck (upernet_vit-b16_ln_mln): bicubic pos-embed interpolation, final_norm,
    # pre_norm and patch_norm, out_origin off; the neck resizes by 4, 2, 1 and 0.5.
    cfgs["upernet_vit_mln"] = dict(
        backbone=vit(interpolate_mode="bicubic", final_norm=True, pre_norm=True, patch_norm=True, patch_bias=True,
                     out_indices=(0, 1, 2, 3)),
        neck=dict(type="MultiLevelNeck", in_channels=[16, 16, 16, 16], out_channels=8, scales=[4, 2, 1, 0.5]),
        decode_head=dict(type="UPerHead", pool_scales=(1, 2, 3, 6), **head_common([8, 8, 8, 8], [0, 1, 2, 3], 8)),
        auxiliary_head=dict(aux_head([8, 8, 8, 8]), in_channels=8))
    out = {}
    for name, parts in cfgs.items():
        out[name] = dict(type="EncoderDecoder", pretrained=None, **parts, train_cfg=dict(),
                         test_cfg=dict(mode="whole"))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--only", nargs="+", metavar="ARCH")
    args = parser.parse_args()
    configs = tiny_configs()
    unknown = sorted(set(args.only or []) - set(configs))
    if unknown:
        parser.error(f"unknown architecture(s) {unknown}; choose from {list(configs)}")
    torch.set_num_threads(1)
    versions = mmseg_versions(import_mmseg())
    os.makedirs(args.out, exist_ok=True)
    for index, (name, cfg) in enumerate(configs.items()):
        if args.only and name not in args.only:
            continue
        write_reference(name, cfg, INDEX + index, args.out, versions, tool="mmseg_reference_transformers.py")


if __name__ == "__main__":
    main()
