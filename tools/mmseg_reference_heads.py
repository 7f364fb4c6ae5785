#!/usr/bin/env python
"""MMSegmentation 1.x reference fixtures for decode heads of issue #14 (NLHead, DAHead, ISAHead, PointHead).

Run in the MMSeg venv (see tools/make_mmseg_reference.py)::

    /tmp/mmseg-venv/bin/python tools/mmseg_reference_heads.py [--only nonlocal danet isanet]

Each tiny model is MMSeg's own ``EncoderDecoder`` on a tiny ResNetV1c-D8 (as MMSeg's ``*_r50-d8`` configs),
randomised and written by ``write_reference`` (fixture index 300+: ``tests/fixtures/mmseg/<arch>.*``).
NLHead needs mmcv's ``NonLocal2d`` (``mmcv.cnn``, pure python, present in mmcv-lite). PointRend needs
``mmcv.ops.point_sample``, which mmcv-lite lacks: this script installs mmcv's pure-python definition
(``F.grid_sample`` of ``2·points − 1``) into MMSeg's point_head module. PointRend's subdivision settings are
MMSeg ``train_cfg`` / ``test_cfg`` keys; rayseg's PointHead takes them as head arguments, so its YAML is
rewritten accordingly.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F
import yaml

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_mmseg_reference import (OUT, aux_head, head_common, import_mmseg, mmseg_versions,  # noqa: E402
                                  plain, resnet, write_reference)

TOOL = "mmseg_reference_heads.py"
FIRST_INDEX = 300


def tiny_configs():
    """name -> MMSeg model dict; the order fixes each one's seeds (append new ones)."""
    cfgs = {}
    bb, ch = resnet(50, 2, d8=True)  # Bottleneck ResNet-50-D8 at base 2: channels 8/16/32/64
    cfgs["nonlocal"] = dict(backbone=bb, decode_head=dict(type="NLHead", reduction=2, use_scale=True,
                                                          mode="embedded_gaussian", **head_common(ch[3], 3, 8)),
                            auxiliary_head=aux_head(ch))
    bb, ch = resnet(50, 2, d8=True)
    cfgs["danet"] = dict(backbone=bb, decode_head=dict(type="DAHead", pam_channels=4, **head_common(ch[3], 3, 8)),
                         auxiliary_head=aux_head(ch))
    bb, ch = resnet(50, 2, d8=True)
    # 64x64 input -> 8x8 map; local groups of 3x3 make the head pad it to 9x9 (uneven, centred padding).
    cfgs["isanet"] = dict(backbone=bb, decode_head=dict(type="ISAHead", isa_channels=4, down_factor=(3, 3),
                                                        **head_common(ch[3], 3, 8)),
                          auxiliary_head=aux_head(ch))
    out = {}
    for name, parts in cfgs.items():
        out[name] = dict(type="EncoderDecoder", pretrained=None, **parts, train_cfg=dict(),
                         test_cfg=dict(mode="whole"))
    bb, ch = resnet(18, 4, d8=False)  # BasicBlock ResNet-18 at base 4: channels 4/8/16/32
    # 64x64 input: FPNHead logits at 16x16, subdivided twice (32x32, 64x64), 100 of 1024 / 4096 points each.
    out["pointrend"] = dict(
        type="CascadeEncoderDecoder", num_stages=2, pretrained=None, backbone=bb,
        neck=dict(type="FPN", in_channels=ch, out_channels=8, num_outs=4),
        decode_head=[dict(type="FPNHead", feature_strides=[4, 8, 16, 32],
                          **dict(head_common([8, 8, 8, 8], [0, 1, 2, 3], 8), dropout_ratio=-1)),
                     dict(type="PointHead", num_fcs=3, coarse_pred_each_layer=True,
                          **dict(head_common([8], [0], 8), dropout_ratio=-1, norm_cfg=None))],
        train_cfg=dict(num_points=64, oversample_ratio=3, importance_sample_ratio=0.75),
        test_cfg=dict(mode="whole", subdivision_steps=2, subdivision_num_points=100, scale_factor=2))
    return out


def mmcv_point_sample(input, points, align_corners=False, **kwargs):
    """mmcv.ops.point_sample (pure python in mmcv): points (N, P, 2) in [0, 1]^2 -> (N, C, P)."""
    add_dim = points.dim() == 3
    if add_dim:
        points = points.unsqueeze(2)
    output = F.grid_sample(input, points * 2.0 - 1.0, align_corners=align_corners, **kwargs)
    return output.squeeze(3) if add_dim else output


def install_point_sample():
    """Give MMSeg's PointHead a working point_sample; and let the calibration passes of ``randomise`` (which
    call ``head.forward(feats, prev)``, PointHead's point-MLP signature) skip it: it has no BatchNorm."""
    from mmseg.models.decode_heads import point_head

    point_head.point_sample = mmcv_point_sample
    mlp = point_head.PointHead.forward

    def forward(self, fine, coarse):
        if isinstance(fine, (list, tuple)):  # the calibration pass: features, not points
            return coarse
        return mlp(self, fine, coarse)

    point_head.PointHead.forward = forward


def rayseg_pointrend(cfg):
    """rayseg's PointRend config: MMSeg's train_cfg/test_cfg point settings move into the PointHead."""
    cfg = plain(cfg)
    train, test = cfg.pop("train_cfg"), cfg.pop("test_cfg")
    cfg["decode_head"][1].update(train)
    cfg["decode_head"][1].update({k: v for k, v in test.items() if k != "mode"})
    cfg["train_cfg"], cfg["test_cfg"] = {}, {"mode": test["mode"]}
    return cfg


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
    install_point_sample()
    os.makedirs(args.out, exist_ok=True)
    for offset, (name, cfg) in enumerate(configs.items()):
        if args.only and name not in args.only:
            continue
        if name == "pointrend":  # MMSeg's PointHead reads its settings as attributes (a ConfigDict)
            from mmengine.config import ConfigDict
            cfg = dict(cfg, train_cfg=ConfigDict(cfg["train_cfg"]), test_cfg=ConfigDict(cfg["test_cfg"]))
        write_reference(name, cfg, FIRST_INDEX + offset, args.out, versions, tool=TOOL)
        if name == "pointrend":
            path = os.path.join(args.out, f"{name}.yaml")
            with open(path) as fh:
                header = fh.readline()
            with open(path, "w") as fh:
                fh.write(header + "# (MMSeg's train_cfg / test_cfg point settings are PointHead arguments here)\n")
                yaml.safe_dump({"model": rayseg_pointrend(cfg)}, fh, sort_keys=False, default_flow_style=None)


if __name__ == "__main__":
    main()
