"""Tiny configs of the model-zoo decode heads for the shared tester in test_models.py.

TINY_BACKBONES: name -> (config, channels of each output, stride of each output).
TINY_HEADS: name -> config taking features of channels (8, 16, 32, 64) at strides (4, 8, 16, 32).
HEAD_OUTPUT_STRIDE: name -> stride of the head's logits when not 32.
"""
TINY_BACKBONES = {}
TINY_HEADS = {}
HEAD_OUTPUT_STRIDE = {}
