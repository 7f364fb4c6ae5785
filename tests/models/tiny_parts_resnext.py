"""Tiny config of the ResNeXt backbone for the shared tester in test_registered_parts.py.

TINY_BACKBONES: name -> (config, channels of each output, stride of each output).
"""
TINY_BACKBONES = {
    # base 8, 4 groups of width 4: the grouped 3×3 convs are 16/32/64/128 wide (wider than their planes)
    "ResNeXt": (dict(type="ResNeXt", depth=50, stem_channels=8, base_channels=8, groups=4, base_width=4,
                     out_indices=(0, 1, 2, 3)),
                (32, 64, 128, 256), (4, 8, 16, 32)),
}
