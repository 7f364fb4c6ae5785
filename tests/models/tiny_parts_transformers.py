"""Tiny configs of the transformer families (Swin, ViT, SETR heads) for the shared tester in
test_registered_parts.py.

TINY_BACKBONES: name -> (config, channels of each output, stride of each output).
TINY_HEADS: name -> config taking features of channels (8, 16, 32, 64) at strides (4, 8, 16, 32).
HEAD_OUTPUT_STRIDE: name -> stride of the head's logits when not 32.
"""
_BN = dict(type="BN")
TINY_BACKBONES = {
    # Window 3 with 2 blocks per stage: every stage pads to whole windows and runs one shifted block.
    "SwinTransformer": (dict(type="SwinTransformer", embed_dims=8, depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4),
                             window_size=3, drop_path_rate=0.1),
                        (8, 16, 32, 64), (4, 8, 16, 32)),
    # Pretraining grid 4×4 (img_size 32): the test sizes interpolate the position embedding.
    "VisionTransformer": (dict(type="VisionTransformer", img_size=32, patch_size=8, embed_dims=16, num_layers=3,
                               num_heads=2, out_indices=(0, 2), drop_path_rate=0.1, final_norm=True,
                               interpolate_mode="bilinear"),
                          (16, 16), (8, 8)),
}
TINY_HEADS = {
    # On the stride-8 map (the test sizes divide 8, so the ×2 steps land on exact strides).
    "SETRUPHead": dict(type="SETRUPHead", in_channels=16, in_index=1, channels=8, num_convs=2, up_scale=2,
                       kernel_size=3, num_classes=3, norm_cfg=_BN),
    # One input here: SETR-MLA's inputs share one size (the shared features do not).
    "SETRMLAHead": dict(type="SETRMLAHead", in_channels=[16], in_index=[1], channels=4, mla_channels=4,
                        up_scale=2, num_classes=3, norm_cfg=_BN),
}
HEAD_OUTPUT_STRIDE = {"SETRUPHead": 2, "SETRMLAHead": 4}
