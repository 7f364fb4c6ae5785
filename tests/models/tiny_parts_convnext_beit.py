"""Tiny configs of the ConvNeXt and BEiT backbones for the shared tester in test_registered_parts.py.

TINY_BACKBONES: name -> (config, channels of each output, stride of each output).
LAYER_NORM_ONLY: backbones here without BatchNorm.
"""
TINY_BACKBONES = {
    # Three stages (strides 4, 8, 16): ConvNeXt does not pad, and the tester's 48×80 input is not a multiple of 32.
    "ConvNeXt": (dict(type="ConvNeXt", arch=dict(depths=[1, 2, 1], channels=[8, 16, 32]), out_indices=[0, 1, 2],
                      drop_path_rate=0.1, layer_scale_init_value=1.0, gap_before_final_norm=False),
                 (8, 16, 32), (4, 8, 16)),
    # Relative-position grid 10×10 (img_size 80, patch 8): the tester's 8×8 and 6×10 grids use part of it.
    "BEiT": (dict(type="BEiT", img_size=80, patch_size=8, embed_dims=16, num_layers=3, num_heads=2,
                  out_indices=(0, 2), drop_path_rate=0.1, final_norm=True, norm_cfg=dict(type="LN", eps=1e-6)),
             (16, 16), (8, 8)),
}
LAYER_NORM_ONLY = {"ConvNeXt", "BEiT"}
