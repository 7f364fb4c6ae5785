"""Tiny configs of the model-zoo backbones (and their own heads) for the shared tester in test_models.py.

TINY_BACKBONES: name -> (config, channels of each output, stride of each output).
TINY_HEADS: name -> config taking features of channels (8, 16, 32, 64) at strides (4, 8, 16, 32).
HEAD_OUTPUT_STRIDE: name -> stride of the head's logits when not 32.
"""
TINY_BACKBONES = {
    "ResNetV1b": (dict(type="ResNetV1b", depth=18, base_channels=8, stem_channels=8), (8, 16, 32, 64),
                  (4, 8, 16, 32)),
    # MiT with 1 block per stage; drop_path_rate > 0 so stochastic depth runs in train mode.
    "MixVisionTransformer": (dict(type="MixVisionTransformer", embed_dims=4, num_layers=(1, 1, 1, 1),
                                  num_heads=(1, 2, 2, 4), drop_path_rate=0.1),
                             (4, 8, 8, 16), (4, 8, 16, 32)),
    # UNet-S5-D16 shape at base_channels 4: decoder outputs, deepest first.
    "UNet": (dict(type="UNet", base_channels=4), (64, 32, 16, 8, 4), (16, 8, 4, 2, 1)),
    "MobileNetV2": (dict(type="MobileNetV2", widen_factor=0.25), (8, 8, 24, 80), (4, 8, 16, 32)),
    "FastSCNN": (dict(type="FastSCNN", downsample_dw_channels=(4, 8), global_in_channels=8,
                      global_block_channels=(8, 8, 16), global_out_channels=16, higher_in_channels=8,
                      lower_in_channels=16, fusion_out_channels=16),
                 (8, 16, 16), (8, 32, 8)),
    # HRNet: the stem is 64 channels whatever the widths; four branches at strides 4..32, a two-module stage.
    "HRNet": (dict(type="HRNet", extra=dict(
        stage1=dict(num_modules=1, num_branches=1, block="BOTTLENECK", num_blocks=(1,), num_channels=(4,)),
        stage2=dict(num_modules=1, num_branches=2, block="BASIC", num_blocks=(1, 1), num_channels=(4, 8)),
        stage3=dict(num_modules=2, num_branches=3, block="BASIC", num_blocks=(1, 1, 1), num_channels=(4, 8, 16)),
        stage4=dict(num_modules=1, num_branches=4, block="BASIC", num_blocks=(1, 1, 1, 1),
                    num_channels=(4, 8, 16, 32)))),
              (4, 8, 16, 32), (4, 8, 16, 32)),
}
TINY_HEADS = {
    "DepthwiseSeparableFCNHead": dict(type="DepthwiseSeparableFCNHead", in_channels=64, channels=8, in_index=3,
                                      num_classes=3, norm_cfg=dict(type="BN")),
}
HEAD_OUTPUT_STRIDE = {}
