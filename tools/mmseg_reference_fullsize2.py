#!/usr/bin/env python
"""Add the second zoo's families to ``tests/fixtures/mmseg/full_size_models.json``.

``make_mmseg_reference.py --full-size`` records the checkpoint layout (tensor count, values per top-level
part, sha256 of the sorted ``key:shape`` lines) of MMSeg's own full-size models for HRNet, OCRNet and
Semantic FPN. This script builds MMSeg 1.x's models for the zoo configs of the other second-zoo families
(Swin, ViT/SETR, MobileNetV3 + LR-ASPP, BiSeNetV1/V2, STDC, DANet, ISANet, NonLocal, PointRend) and merges
their signatures into the same file, leaving the existing entries as they are (so no other fixture moves).
``tests/models/test_mmseg_equivalence.py`` checks every entry against the rayseg zoo config's model.

Run it in the MMSeg venv (see tools/README.md), never in CI::

    /tmp/mmseg-venv/bin/python tools/mmseg_reference_fullsize2.py     # --out DIR to write elsewhere
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_mmseg_reference import OUT, architecture_signature, import_mmseg  # noqa: E402

# rayseg zoo config -> the MMSeg 1.x config it mirrors (in mmseg's installed .mim/configs).
FULL_SIZE2 = {
    "swin/upernet_swin_tiny_patch4_window7_512x512_160k_ade20k.yaml":
        "swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py",
    "swin/upernet_swin_small_patch4_window7_512x512_160k_ade20k.yaml":
        "swin/swin-small-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py",
    "swin/upernet_swin_base_patch4_window12_512x512_160k_ade20k.yaml":
        "swin/swin-base-patch4-window12-in1k-384x384-pre_upernet_8xb2-160k_ade20k-512x512.py",
    "setr/setr_vit-large_naive_8x1_768x768_80k_cityscapes.yaml": "setr/setr_vit-l_naive_8xb1-80k_cityscapes-768x768.py",
    "setr/setr_vit-large_pup_8x1_768x768_80k_cityscapes.yaml": "setr/setr_vit-l_pup_8xb1-80k_cityscapes-768x768.py",
    "setr/setr_vit-large_mla_8x1_768x768_80k_cityscapes.yaml": "setr/setr_vit-l_mla_8xb1-80k_cityscapes-768x768.py",
    "setr/setr_naive_512x512_160k_b16_ade20k.yaml": "setr/setr_vit-l_naive_8xb2-160k_ade20k-512x512.py",
    "setr/setr_pup_512x512_160k_b16_ade20k.yaml": "setr/setr_vit-l_pup_8xb2-160k_ade20k-512x512.py",
    "setr/setr_mla_512x512_160k_b8_ade20k.yaml": "setr/setr_vit-l-mla_8xb1-160k_ade20k-512x512.py",
    "setr/setr_mla_512x512_160k_b16_ade20k.yaml": "setr/setr_vit-l_mla_8xb2-160k_ade20k-512x512.py",
    "mobilenet_v3/lraspp_m-v3-d8_512x1024_320k_cityscapes.yaml":
        "mobilenet_v3/mobilenet-v3-d8_lraspp_4xb4-320k_cityscapes-512x1024.py",
    "mobilenet_v3/lraspp_m-v3s-d8_512x1024_320k_cityscapes.yaml":
        "mobilenet_v3/mobilenet-v3-d8-s_lraspp_4xb4-320k_cityscapes-512x1024.py",
    "bisenetv1/bisenetv1_r18-d32_4x4_1024x1024_160k_cityscapes.yaml":
        "bisenetv1/bisenetv1_r18-d32_4xb4-160k_cityscapes-1024x1024.py",
    "bisenetv2/bisenetv2_fcn_4x4_1024x1024_160k_cityscapes.yaml": "bisenetv2/bisenetv2_fcn_4xb4-160k_cityscapes-1024x1024.py",
    "stdc/stdc1_512x1024_80k_cityscapes.yaml": "stdc/stdc1_4xb12-80k_cityscapes-512x1024.py",
    "stdc/stdc2_512x1024_80k_cityscapes.yaml": "stdc/stdc2_4xb12-80k_cityscapes-512x1024.py",
    "danet/danet_r50-d8_512x1024_40k_cityscapes.yaml": "danet/danet_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "danet/danet_r50-d8_512x512_80k_ade20k.yaml": "danet/danet_r50-d8_4xb4-80k_ade20k-512x512.py",
    "isanet/isanet_r50-d8_512x1024_40k_cityscapes.yaml": "isanet/isanet_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "isanet/isanet_r50-d8_512x512_80k_ade20k.yaml": "isanet/isanet_r50-d8_4xb4-80k_ade20k-512x512.py",
    "nonlocal_net/nonlocal_r50-d8_512x1024_40k_cityscapes.yaml":
        "nonlocal_net/nonlocal_r50-d8_4xb2-40k_cityscapes-512x1024.py",
    "nonlocal_net/nonlocal_r50-d8_512x512_80k_ade20k.yaml": "nonlocal_net/nonlocal_r50-d8_4xb4-80k_ade20k-512x512.py",
    "point_rend/pointrend_r50_512x1024_80k_cityscapes.yaml": "point_rend/pointrend_r50_4xb2-80k_cityscapes-512x1024.py",
    "point_rend/pointrend_r50_512x512_160k_ade20k.yaml": "point_rend/pointrend_r50_4xb4-160k_ade20k-512x512.py",
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    import_mmseg()
    import mmseg
    from mmengine.config import Config
    from mmseg.registry import MODELS

    root = os.path.join(os.path.dirname(mmseg.__file__), ".mim", "configs")
    path = os.path.join(args.out, "full_size_models.json")
    with open(path) as fh:
        out = json.load(fh)
    for ours, theirs in FULL_SIZE2.items():
        cfg = Config.fromfile(os.path.join(root, theirs))
        # No init_weights: nothing is downloaded, and a pretrained name or init_cfg changes no key or shape.
        model = MODELS.build(cfg.model)
        out[ours] = dict(mmseg_config=theirs, **architecture_signature(model.state_dict()))
        print(ours, out[ours]["tensors"], sum(out[ours]["values"].values()))
    with open(path, "w") as fh:
        json.dump(out, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    main()
