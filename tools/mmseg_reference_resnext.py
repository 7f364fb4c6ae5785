#!/usr/bin/env python
"""MMSegmentation 1.x reference fixture for the ResNeXt backbone (issue #14).

Run in the MMSeg venv (see tools/make_mmseg_reference.py)::

    /tmp/mmseg-venv/bin/python tools/mmseg_reference_resnext.py

One tiny model, MMSeg's own ``EncoderDecoder`` on a ResNeXt-50-D8 (2 groups, base width 2, base channels 4) with an
FCN head and an auxiliary FCN head, randomised and written by ``write_reference`` (fixture index 500:
``tests/fixtures/mmseg/fcn_resnext.*``).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_mmseg_reference import (BN, OUT, aux_head, head_common, import_mmseg, mmseg_versions,  # noqa: E402
                                  write_reference)

TOOL = "mmseg_reference_resnext.py"
FIRST_INDEX = 500


def tiny_config():
    backbone = dict(type="ResNeXt", depth=50, groups=2, base_width=2, stem_channels=8, base_channels=4,
                    num_stages=4, out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4), strides=(1, 2, 1, 1),
                    norm_cfg=BN, norm_eval=False, style="pytorch", contract_dilation=True)
    chans = [4 * 2 ** i * 4 for i in range(4)]  # 16/32/64/128
    return dict(type="EncoderDecoder", pretrained=None, backbone=backbone,
                decode_head=dict(type="FCNHead", num_convs=2, concat_input=True, **head_common(chans[3], 3, 8)),
                auxiliary_head=aux_head(chans), train_cfg=dict(), test_cfg=dict(mode="whole"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)
    versions = mmseg_versions(import_mmseg())
    os.makedirs(args.out, exist_ok=True)
    write_reference("fcn_resnext", tiny_config(), FIRST_INDEX, args.out, versions, tool=TOOL)


if __name__ == "__main__":
    main()
