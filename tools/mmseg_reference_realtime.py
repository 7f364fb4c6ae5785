#!/usr/bin/env python
"""MMSegmentation 1.x reference fixtures for the real-time families (index 100+): MobileNetV3 + LR-ASPP,
BiSeNetV2 + FCN,
STDC1/STDC2 (STDCContextPathNet + FCN, FCN and STDCHead auxiliary heads),
BiSeNetV1 on ResNet-18 + FCN.

Run in the MMSeg venv (see tools/make_mmseg_reference.py)::

    /tmp/mmseg-venv/bin/python tools/mmseg_reference_realtime.py [--only lraspp_m-v3s ...]

MobileNetV3 has fixed widths in MMSeg (no widen factor), so the tiny models swap MMSeg's own ``MobileNetV3``
block table for a narrow one of the same length: the script registers, in MMSeg's registry, a subclass that takes
``layer_settings`` (rayseg's MobileNetV3 takes the same argument) and otherwise runs MMSeg's code unchanged.
LR-ASPP pools with a fixed 49×49 window at output stride 8, so MMSeg needs inputs of at least 385 pixels a side:
these fixtures use 392×392 inputs.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_mmseg_reference  # noqa: E402
from make_mmseg_reference import BN, NUM_CLASSES, OUT, head_common, import_mmseg, mmseg_versions, write_reference  # noqa: E402

_randomise = make_mmseg_reference.randomise
INDEX = 100
LRASPP_SIZE = 392
# Narrow block tables with MMSeg's row counts, activations, SE flags and strides.
TINY_V3 = {
    "small": [[3, 16, 16, True, "ReLU", 2], [3, 8, 4, False, "ReLU", 2], [3, 8, 4, False, "ReLU", 1],
              [5, 8, 8, True, "HSwish", 2], [5, 16, 8, True, "HSwish", 1], [5, 16, 8, True, "HSwish", 1],
              [5, 16, 8, True, "HSwish", 1], [5, 16, 8, True, "HSwish", 1], [5, 16, 12, True, "HSwish", 2],
              [5, 24, 12, True, "HSwish", 1], [5, 24, 12, True, "HSwish", 1]],
    "large": [[3, 16, 16, False, "ReLU", 1], [3, 8, 4, False, "ReLU", 2], [3, 8, 4, False, "ReLU", 1],
              [5, 8, 8, True, "ReLU", 2], [5, 16, 8, True, "ReLU", 1], [5, 16, 8, True, "ReLU", 1],
              [3, 16, 8, False, "HSwish", 2], [3, 16, 8, False, "HSwish", 1], [3, 16, 8, False, "HSwish", 1],
              [3, 16, 8, False, "HSwish", 1], [3, 16, 12, True, "HSwish", 1], [3, 24, 12, True, "HSwish", 1],
              [5, 24, 16, True, "HSwish", 2], [5, 32, 16, True, "HSwish", 1], [5, 32, 16, True, "HSwish", 1]],
}


def register_tiny_mobilenet_v3():
    """Make MMSeg's ``MobileNetV3`` take ``layer_settings`` (its block table); everything else is MMSeg's."""
    from mmseg.models.backbones.mobilenet_v3 import MobileNetV3
    from mmseg.registry import MODELS

    @MODELS.register_module(name="MobileNetV3", force=True)
    class MobileNetV3WithTable(MobileNetV3):
        def __init__(self, arch="small", layer_settings=None, **kwargs):
            if layer_settings is not None:
                self.arch_settings = {arch: [list(row) for row in layer_settings]}
            super().__init__(arch=arch, **kwargs)


def lraspp(arch):
    out_indices, in_channels = ((0, 1, 12), (16, 16, 576)) if arch == "small" else ((1, 3, 16), (16, 4, 960))
    backbone = dict(type="MobileNetV3", arch=arch, layer_settings=TINY_V3[arch], out_indices=out_indices,
                    norm_cfg=dict(BN, eps=0.001))
    head = dict(type="LRASPPHead", branch_channels=(4, 8), input_transform="multiple_select",
                act_cfg=dict(type="ReLU"), **head_common(in_channels, (0, 1, 2), 8))
    head["norm_cfg"] = dict(BN, eps=0.001)
    return dict(type="EncoderDecoder", pretrained=None, backbone=backbone, decode_head=head, train_cfg=dict(),
                test_cfg=dict(mode="whole"))


def _randomise_with_aux_list(model, gen, calib):
    """``make_mmseg_reference.randomise`` calls ``model.auxiliary_head.forward(feats)``; MMSeg keeps a list of
    auxiliary heads in a ModuleList (no forward), so give that list, for the calibration only, a forward that
    runs every head (their BatchNorm statistics are then measured as the single-head models' are)."""
    heads = getattr(model, "auxiliary_head", None)
    if isinstance(heads, torch.nn.ModuleList):
        heads.forward = lambda feats: [head.forward(feats) for head in heads]
    try:
        _randomise(model, gen, calib)
    finally:
        if isinstance(heads, torch.nn.ModuleList):
            del heads.forward


def fcn(in_channels, in_index, channels, num_convs):
    head = dict(type="FCNHead", num_convs=num_convs, concat_input=False, **head_common(in_channels, in_index, channels))
    return head


def bisenetv2():
    """MMSeg's _base_/models/bisenetv2.py at tiny widths: FCN on the BGA output, four FCN auxiliary heads."""
    backbone = dict(type="BiSeNetV2", detail_channels=(4, 4, 8), semantic_channels=(4, 4, 8, 8),
                    semantic_expansion_ratio=2, bga_channels=8, out_indices=(0, 1, 2, 3, 4), init_cfg=None,
                    align_corners=False)
    aux = [fcn(c, i + 1, ch, 2) for i, (c, ch) in enumerate([(4, 4), (4, 4), (8, 8), (8, 8)])]
    return dict(type="EncoderDecoder", pretrained=None, backbone=backbone, decode_head=fcn(8, 0, 16, 1),
                auxiliary_head=aux, train_cfg=dict(), test_cfg=dict(mode="whole"))


def stdc(stdc_type, bottleneck_type):
    """MMSeg's _base_/models/stdc.py at tiny widths (OHEM samplers kept; STDCHead with sigmoid CE + Dice)."""
    backbone = dict(type="STDCContextPathNet",
                    backbone_cfg=dict(type="STDCNet", stdc_type=stdc_type, in_channels=3, channels=(4, 8, 16, 16, 32),
                                      bottleneck_type=bottleneck_type, num_convs=4, norm_cfg=BN,
                                      act_cfg=dict(type="ReLU"), with_final_conv=False),
                    last_in_channels=(32, 16), out_channels=8, ffm_cfg=dict(in_channels=24, out_channels=16,
                                                                            scale_factor=4))
    ohem = dict(type="OHEMPixelSampler", thresh=0.7, min_kept=10000)
    decode = dict(fcn(16, 3, 8, 1), align_corners=True, sampler=ohem)
    aux = [dict(fcn(8, 2, 4, 1), sampler=ohem), dict(fcn(8, 1, 4, 1), sampler=ohem),
           dict(fcn(16, 0, 4, 1), type="STDCHead", num_classes=2, boundary_threshold=0.1, align_corners=True,
                loss_decode=[dict(type="CrossEntropyLoss", loss_name="loss_ce", use_sigmoid=True, loss_weight=1.0),
                             dict(type="DiceLoss", loss_name="loss_dice", loss_weight=1.0)])]
    return dict(type="EncoderDecoder", pretrained=None, backbone=backbone, decode_head=decode, auxiliary_head=aux,
                train_cfg=dict(), test_cfg=dict(mode="whole"))


def bisenetv1():
    """MMSeg's _base_/models/bisenetv1_r18-d32.py at tiny widths (a BasicBlock ResNet-18 at base 4)."""
    backbone = dict(type="BiSeNetV1", in_channels=3, context_channels=(8, 16, 32), spatial_channels=(4, 4, 4, 8),
                    out_indices=(0, 1, 2), out_channels=16,
                    backbone_cfg=dict(type="ResNet", in_channels=3, depth=18, num_stages=4, base_channels=4,
                                      out_indices=(0, 1, 2, 3), dilations=(1, 1, 1, 1), strides=(1, 2, 2, 2),
                                      norm_cfg=BN, norm_eval=False, style="pytorch", contract_dilation=True),
                    norm_cfg=BN, align_corners=False, init_cfg=None)
    return dict(type="EncoderDecoder", pretrained=None, backbone=backbone, decode_head=fcn(16, 0, 16, 1),
                auxiliary_head=[fcn(8, 1, 4, 1), fcn(8, 2, 4, 1)], train_cfg=dict(), test_cfg=dict(mode="whole"))


def tiny_configs():
    """name -> (MMSeg model dict, input size); the index of each is INDEX + its place here (append only)."""
    return {"lraspp_m-v3s": (lraspp("small"), LRASPP_SIZE), "lraspp_m-v3": (lraspp("large"), LRASPP_SIZE),
            "bisenetv2_fcn": (bisenetv2(), 64),
            # stdc1 as MMSeg's zoo ('cat' blocks); stdc2 with 'add' blocks so both STDC block kinds are checked.
            "stdc1": (stdc("STDCNet1", "cat"), 64), "stdc2_add": (stdc("STDCNet2", "add"), 64),
            "bisenetv1_r18": (bisenetv1(), 64)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--only", nargs="+", metavar="ARCH")
    args = parser.parse_args()
    torch.set_num_threads(1)
    versions = mmseg_versions(import_mmseg())
    register_tiny_mobilenet_v3()
    make_mmseg_reference.randomise = _randomise_with_aux_list  # write_reference looks it up there
    assert NUM_CLASSES == 3
    for i, (name, (cfg, size)) in enumerate(tiny_configs().items()):
        if args.only and name not in args.only:
            continue
        # LR-ASPP needs a 392-pixel input (MMSeg's fixed 49x49 pool at stride 8): a seeded input and every 8th
        # logit keep its reference small.
        write_reference(name, cfg, INDEX + i, args.out, versions, tool="mmseg_reference_realtime.py", size=size,
                        logits_stride=8 if size > 128 else 1)


if __name__ == "__main__":
    main()
