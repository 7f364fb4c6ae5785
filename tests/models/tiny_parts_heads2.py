"""Tiny configs of the attention decode heads (NLHead, DAHead, ISAHead) and PointRend's PointHead for the shared tester in
test_registered_parts.py: features of channels (8, 16, 32, 64) at strides (4, 8, 16, 32)."""
TINY_BACKBONES = {}
_BN = dict(type="BN")
_LAST = dict(in_channels=64, in_index=3, channels=8, num_classes=3, norm_cfg=_BN)
TINY_HEADS = {
    "NLHead": dict(type="NLHead", reduction=2, use_scale=True, mode="embedded_gaussian", **_LAST),
    "DAHead": dict(type="DAHead", pam_channels=4, **_LAST),
    # 2x2 / 2x3 maps with local groups of 2x2: even and padded widths.
    "ISAHead": dict(type="ISAHead", isa_channels=4, down_factor=(2, 2), **_LAST),
}
# PointRend's refinement on the stride-4 map, one subdivision step without upsampling (scale_factor 1), so its
# logits keep the previous stage's size; 200 points: all cells of the 16x16 map, the most uncertain of 12x20.
TINY_HEADS["PointHead"] = dict(type="PointHead", in_channels=[8], in_index=[0], channels=8, num_fcs=2,
                               num_classes=3, dropout_ratio=-1, num_points=32, subdivision_steps=1,
                               subdivision_num_points=200, scale_factor=1)
HEAD_OUTPUT_STRIDE = {"PointHead": 4}
CASCADE_PREV_CLASSES = {"PointHead": 3}
