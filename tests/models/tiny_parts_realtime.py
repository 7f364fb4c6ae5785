"""Tiny configs of the real-time model-zoo parts (MobileNetV3, LR-ASPP, BiSeNetV2, STDC,
BiSeNetV1) for the shared tester in
test_registered_parts.py.

TINY_BACKBONES: name -> (config, channels of each output, stride of each output).
TINY_HEADS: name -> config taking features of channels (8, 16, 32, 64) at strides (4, 8, 16, 32).
HEAD_OUTPUT_STRIDE: name -> stride of the head's logits when not 32.
"""
_BN = dict(type="BN")
# MobileNetV3-small's table at tiny widths (MMSeg's row count, activations, SE flags and strides).
_V3_SMALL = [[3, 16, 16, True, "ReLU", 2], [3, 8, 4, False, "ReLU", 2], [3, 8, 4, False, "ReLU", 1],
             [5, 8, 8, True, "HSwish", 2], [5, 16, 8, True, "HSwish", 1], [5, 16, 8, True, "HSwish", 1],
             [5, 16, 8, True, "HSwish", 1], [5, 16, 8, True, "HSwish", 1], [5, 16, 12, True, "HSwish", 2],
             [5, 24, 12, True, "HSwish", 1], [5, 24, 12, True, "HSwish", 1]]
_STDC = dict(type="STDCNet", stdc_type="STDCNet1", channels=(4, 8, 16, 16, 32), bottleneck_type="cat")
TINY_BACKBONES = {
    # LR-ASPP's outputs: stem (stride 2), first block (4), last 1x1 conv (576 channels, dilated, stride 8).
    "MobileNetV3": (dict(type="MobileNetV3", arch="small", layer_settings=_V3_SMALL, out_indices=(0, 1, 12)),
                    (16, 16, 576), (2, 4, 8)),
    # BGA output (stride 8) then the semantic stages (strides 4, 8, 16, 32).
    "BiSeNetV2": (dict(type="BiSeNetV2", detail_channels=(4, 4, 8), semantic_channels=(4, 4, 8, 8),
                       semantic_expansion_ratio=2, bga_channels=8),
                  (8, 4, 4, 8, 8), (8, 4, 8, 16, 32)),
    # STDCNet1: the last three stages (strides 8, 16, 32).
    "STDCNet": (_STDC, (16, 16, 32), (8, 16, 32)),
    # STDC stage 2 (stride 8), the two context-path maps (strides 16, 8) and the fused map (stride 8).
    "STDCContextPathNet": (dict(type="STDCContextPathNet", backbone_cfg=_STDC, last_in_channels=(32, 16),
                                out_channels=8, ffm_cfg=dict(in_channels=24, out_channels=16, scale_factor=4)),
                           (16, 8, 8, 16), (8, 16, 8, 8)),
    # BiSeNetV1 on a ResNet-18 at base 4: fused map (stride 8), context maps (strides 8, 16).
    "BiSeNetV1": (dict(type="BiSeNetV1", context_channels=(8, 16, 32), spatial_channels=(4, 4, 4, 8), out_channels=16,
                       backbone_cfg=dict(type="ResNet", depth=18, base_channels=4, stem_channels=8)),
                  (16, 8, 8), (8, 8, 16)),
}
TINY_HEADS = {
    # The image pool reads the last selected input (stride 32 here: smaller than 49, so a global pool).
    "LRASPPHead": dict(type="LRASPPHead", in_channels=(8, 16, 64), in_index=(0, 1, 3), branch_channels=(4, 8),
                       input_transform="multiple_select", channels=8, num_classes=3, norm_cfg=_BN),
    # Trained on boundary targets it computes from the labels (its losses are still loss_ce / acc_seg here).
    "STDCHead": dict(type="STDCHead", in_channels=8, in_index=0, channels=4, num_convs=1, concat_input=False,
                     num_classes=3, norm_cfg=_BN),
}
HEAD_OUTPUT_STRIDE = {"LRASPPHead": 4, "STDCHead": 4}
