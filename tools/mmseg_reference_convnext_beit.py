#!/usr/bin/env python
"""MMSegmentation 1.x reference fixtures for ConvNeXt (mmpretrain's, + UPerNet) and BEiT (+ Feature2Pyramid +
UPerNet).

Run in the MMSeg venv (see ``tools/make_mmseg_reference.py``; ConvNeXt also needs ``mmpretrain``), never from
CI::

    /tmp/mmseg-venv/bin/python tools/mmseg_reference_convnext_beit.py            # all of them
    /tmp/mmseg-venv/bin/python tools/mmseg_reference_convnext_beit.py --only upernet_beit

Writes ``tests/fixtures/mmseg/<arch>.pth`` / ``<arch>_io.pt`` / ``<arch>.yaml`` with seeds from index 400 + the
architecture's place in ``tiny_configs()`` (append new ones so the others stay byte-identical). The rayseg YAML
names the backbone ``ConvNeXt`` (MMSeg's ``mmpretrain.ConvNeXt`` without the scope).
"""
from __future__ import annotations

import argparse
import copy
import importlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_mmseg_reference  # noqa: E402
from make_mmseg_reference import (BN, OUT, aux_head, head_common, import_mmseg,  # noqa: E402
                                  mmseg_versions, write_reference)

INDEX = 400


def convnext():
    """ConvNeXt at widths 8/16/32/64, depths 1/2/2/1, layer scale 1.0 and stochastic depth as MMSeg's UPerNet
    configs (64×64 input: 16×16 … 2×2 maps)."""
    return dict(type="mmpretrain.ConvNeXt", arch=dict(depths=[1, 2, 2, 1], channels=[8, 16, 32, 64]),
                out_indices=[0, 1, 2, 3], drop_path_rate=0.4, layer_scale_init_value=1.0,
                gap_before_final_norm=False)


def beit():
    """BEiT at width 16, 5 layers of 2 heads, patch 8, img_size 64 (an 8×8 grid and its relative position
    tables); layers 1-4 are the outputs, as MMSeg's (3, 5, 7, 11) of 12."""
    return dict(type="BEiT", img_size=(64, 64), patch_size=8, in_channels=3, embed_dims=16, num_layers=5,
                num_heads=2, mlp_ratio=4, out_indices=(1, 2, 3, 4), qv_bias=True, attn_drop_rate=0.0,
                drop_path_rate=0.1, norm_cfg=dict(type="LN", eps=1e-6), act_cfg=dict(type="GELU"),
                norm_eval=False, init_values=0.1)


def tiny_configs():
    """The tiny models, as MMSeg ``model`` dicts (MMSeg 1.x spelling)."""
    cfgs = {}
    ch = [8, 16, 32, 64]
    cfgs["upernet_convnext"] = dict(backbone=convnext(),
                                    decode_head=dict(type="UPerHead", pool_scales=(1, 2, 3, 6),
                                                     **head_common(ch, [0, 1, 2, 3], 8)),
                                    auxiliary_head=aux_head(ch))
    cfgs["upernet_beit"] = dict(backbone=beit(),
                                neck=dict(type="Feature2Pyramid", embed_dim=16, rescales=[4, 2, 1, 0.5],
                                          norm_cfg=BN),
                                decode_head=dict(type="UPerHead", pool_scales=(1, 2, 3, 6),
                                                 **head_common([16] * 4, [0, 1, 2, 3], 8)),
                                auxiliary_head=dict(aux_head([16] * 4), in_channels=16))
    out = {}
    for name, parts in cfgs.items():
        out[name] = dict(type="EncoderDecoder", pretrained=None, **parts, train_cfg=dict(),
                         test_cfg=dict(mode="whole"))
    return out


_rayseg_config = make_mmseg_reference.rayseg_config


def rayseg_config(model_cfg):
    """The rayseg YAML: as make_mmseg_reference's, with the registry scope dropped from ``mmpretrain.X``."""
    cfg = copy.deepcopy(model_cfg)
    backbone = cfg.get("backbone", {})
    if str(backbone.get("type", "")).startswith("mmpretrain."):
        backbone["type"] = backbone["type"].split(".", 1)[1]
    return _rayseg_config(cfg)


make_mmseg_reference.rayseg_config = rayseg_config


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
    # Registers mmpretrain.ConvNeXt, as the configs' custom_imports does.
    importlib.import_module("mmpretrain.models")

    os.makedirs(args.out, exist_ok=True)
    for index, (name, cfg) in enumerate(configs.items()):
        if args.only and name not in args.only:
            continue
        write_reference(name, cfg, INDEX + index, args.out, versions, tool="mmseg_reference_convnext_beit.py")


if __name__ == "__main__":
    main()
