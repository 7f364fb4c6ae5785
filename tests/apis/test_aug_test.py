"""EncoderDecoder.aug_test / aug_predict: MMSeg 0.x test-time augmentation (average softmax, un-flip)."""
import numpy as np
import pytest
import torch

from rayseg.datasets import build_pipeline
from rayseg.datasets.ray_data import DeviceNormalizer
from rayseg.models import build_segmentor

torch.set_num_threads(1)
NUM_CLASSES = 3
NORM = {"type": "Normalize", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "to_rgb": True}


def tiny_segmentor():
    """A small ResNetV1c-18 + FCN, eval mode, with a classifier scaled up so the classes' probabilities
    differ clearly (at initialisation they are almost uniform, which would hide un-flipping errors)."""
    torch.manual_seed(0)
    cfg = {"type": "EncoderDecoder",
           "backbone": {"type": "ResNetV1c", "depth": 18, "base_channels": 8, "stem_channels": 8,
                        "strides": (1, 2, 1, 1), "dilations": (1, 1, 2, 4), "contract_dilation": True},
           "decode_head": {"type": "FCNHead", "in_channels": 64, "channels": 8, "in_index": 3,
                           "num_classes": NUM_CLASSES, "num_convs": 1, "norm_cfg": {"type": "BN"}}}
    model = build_segmentor(cfg).eval()
    with torch.no_grad():
        model.decode_head.conv_seg.weight.mul_(200)
    return model


def make_flip_equivariant(model):
    """Make every conv kernel left-right symmetric. With an image width that stays odd through every
    stride-2 step (65 → 33 → 17 → 9), the network then commutes with a horizontal flip."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                module.weight.copy_((module.weight + module.weight.flip(-1)) / 2)
    return model


@torch.no_grad()
def test_one_unflipped_variant_equals_softmax_of_inference():
    model = tiny_segmentor()
    img = torch.randn(2, 3, 40, 48)
    probs = model.aug_test([img], [(False, "horizontal")], ori_shape=(50, 60))
    expected = model.inference(img, (50, 60)).softmax(dim=1)
    assert probs.shape == (2, NUM_CLASSES, 50, 60)
    assert torch.allclose(probs, expected, atol=1e-6)
    assert torch.allclose(probs.sum(dim=1), torch.ones(2, 50, 60), atol=1e-5)
    assert torch.equal(model.aug_predict([img], [(False, "horizontal")], (50, 60)), expected.argmax(dim=1))


@torch.no_grad()
def test_flipped_variant_is_flipped_back_for_a_flip_equivariant_model():
    model = make_flip_equivariant(tiny_segmentor())
    img = torch.randn(1, 3, 40, 65)
    plain = model.inference(img).softmax(dim=1)
    flipped_in = img.flip(3)
    assert torch.allclose(model.inference(flipped_in).flip(3).softmax(dim=1), plain, atol=1e-5)  # premise
    both = model.aug_test([img, flipped_in], [(False, "horizontal"), (True, "horizontal")], ori_shape=(40, 65))
    assert torch.allclose(both, plain, atol=1e-5)
    only_flipped = model.aug_test([flipped_in], [(True, "horizontal")], ori_shape=(40, 65))
    assert torch.allclose(only_flipped, plain, atol=1e-5)
    # Without un-flipping, the answer would be visibly different: the check above is not vacuous.
    not_unflipped = model.aug_test([flipped_in], [(False, "horizontal")], ori_shape=(40, 65))
    assert (not_unflipped - plain).abs().max() > 0.05


@torch.no_grad()
def test_vertical_flip_is_undone_on_the_height_axis():
    model = tiny_segmentor()
    img = torch.randn(1, 3, 36, 44)
    got = model.aug_test([img.flip(2)], [(True, "vertical")], ori_shape=(36, 44))
    assert torch.allclose(got, model.inference(img.flip(2)).softmax(dim=1).flip(2), atol=1e-6)
    assert not torch.allclose(got, model.inference(img.flip(2)).softmax(dim=1), atol=1e-3)


@torch.no_grad()
def test_scales_are_averaged_at_the_original_size():
    model = tiny_segmentor()
    small, large = torch.randn(1, 3, 24, 32), torch.randn(1, 3, 48, 64)
    flips = [(False, "horizontal"), (False, "horizontal")]
    got = model.aug_test([small, large], flips, ori_shape=(36, 48))
    expected = (model.inference(small, (36, 48)).softmax(1) + model.inference(large, (36, 48)).softmax(1)) / 2
    assert got.shape == (1, NUM_CLASSES, 36, 48) and torch.allclose(got, expected, atol=1e-6)
    assert model.aug_predict([small, large], flips, (36, 48)).shape == (1, 36, 48)


def test_aug_test_argument_errors():
    model = tiny_segmentor()
    img = torch.randn(1, 3, 16, 16)
    with pytest.raises(ValueError, match="1 image batch.*2 flip"):
        model.aug_test([img], [(False, "horizontal"), (True, "horizontal")], (16, 16))
    with pytest.raises(ValueError, match="0 image batch"):
        model.aug_test([], [], (16, 16))
    with pytest.raises(ValueError, match="'sideways'"):
        model.aug_test([img], [(True, "sideways")], (16, 16))


@torch.no_grad()
def test_pipeline_variants_feed_aug_test_end_to_end():
    """MultiScaleFlipAug output → DeviceNormalizer → aug_test: with the flip-equivariant model, the flip
    variants add nothing, so flip=True gives the same probabilities as flip=False at the same scale."""
    model = make_flip_equivariant(tiny_segmentor())
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(40, 65, 3), dtype=np.uint8)
    pipeline = [{"type": "MultiScaleFlipAug", "img_scale": None, "img_ratios": [1.0], "flip": True,
                 "transforms": [{"type": "Resize", "keep_ratio": True}, {"type": "RandomFlip"}]}]
    normalizer = DeviceNormalizer(NORM["mean"], NORM["std"], to_rgb=True)
    out = build_pipeline(pipeline)({"img": image, "ori_shape": image.shape})
    variants = out["aug_variants"]
    assert [v["flip"] for v in variants] == [False, True]
    imgs = [normalizer(torch.from_numpy(np.ascontiguousarray(v["img"]))[None]) for v in variants]
    probs = model.aug_test(imgs, [(v["flip"], v["flip_direction"]) for v in variants], (40, 65))
    assert torch.allclose(probs, model.inference(imgs[0]).softmax(dim=1), atol=1e-5)
