"""Tiny configs of the model-zoo decode heads for the shared tester in test_models.py.

TINY_BACKBONES: name -> (config, channels of each output, stride of each output).
TINY_HEADS: name -> config taking features of channels (8, 16, 32, 64) at strides (4, 8, 16, 32).
HEAD_OUTPUT_STRIDE: name -> stride of the head's logits when not 32.
"""
TINY_BACKBONES = {}
_BN = dict(type="BN")
_MULTI = dict(in_channels=[8, 16, 32, 64], in_index=[0, 1, 2, 3], channels=8, num_classes=3, norm_cfg=_BN)
TINY_HEADS = {
    "ASPPHead": dict(type="ASPPHead", in_channels=64, in_index=3, channels=8, dilations=(1, 2, 3),
                     num_classes=3, norm_cfg=_BN),
    # DeepLabV3+: ASPP on the stride-32 map, decoder on inputs[0] (stride 4).
    "DepthwiseSeparableASPPHead": dict(type="DepthwiseSeparableASPPHead", in_channels=64, in_index=3, channels=8,
                                       dilations=(1, 2, 3), c1_in_channels=8, c1_channels=4, num_classes=3,
                                       norm_cfg=_BN),
    "UPerHead": dict(type="UPerHead", pool_scales=(1, 2, 3), **_MULTI),
    "SegformerHead": dict(type="SegformerHead", **_MULTI),
    # Semantic FPN: one conv tower per level, summed at stride 4.
    "FPNHead": dict(type="FPNHead", feature_strides=[4, 8, 16, 32], **_MULTI),
    # OCRNet's second stage: forward(inputs, prev_output), prev_output = logits at the stride-4 map
    # (see CASCADE_PREV_CLASSES).
    "OCRHead": dict(type="OCRHead", in_channels=[8, 16, 32, 64], in_index=[0, 1, 2, 3],
                    input_transform="resize_concat", channels=8, ocr_channels=4, num_classes=3, norm_cfg=_BN),
}
HEAD_OUTPUT_STRIDE = {"ASPPHead": 32, "DepthwiseSeparableASPPHead": 4, "UPerHead": 4, "SegformerHead": 4,
                      "FPNHead": 4, "OCRHead": 4}
# Cascade heads (BaseCascadeDecodeHead) also take the previous stage's logits: name -> its number of classes,
# given at the head's own output size.
CASCADE_PREV_CLASSES = {"OCRHead": 3}
