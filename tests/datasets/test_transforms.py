"""Pipeline steps: alignment of image and mask, MMSeg semantics, config errors."""
import os

import numpy as np
import pytest

from rayseg.datasets import Compose, build_pipeline, split_device_steps
from rayseg.datasets.compose import enable_aug_test
from rayseg.datasets.loading import map_labels
from rayseg.datasets.photometric import PhotoMetricDistortion
from rayseg.datasets.transforms import Pad, RandomCrop, RandomFlip, Resize, rescale_size
from rayseg.errors import ConfigError


def coord_sample(h=40, w=60):
    """Image whose pixels encode their own (y, x) and a mask that encodes the same, so any geometric step
    that keeps the pair aligned keeps img[..., 0] == mask_y and img[..., 1] == mask_x."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([yy, xx, np.zeros_like(yy)], axis=-1).astype(np.uint8)
    return {"img": img, "gt_semantic_seg": (yy * 1000 + xx) % 251, "seg_fields": ["gt_semantic_seg"],
            "ori_shape": img.shape, "img_shape": img.shape}


def test_random_crop_keeps_image_and_mask_aligned():
    np.random.seed(0)
    for _ in range(20):
        r = coord_sample()
        r["gt_semantic_seg"] = r["gt_semantic_seg"].astype(np.int32)
        out = RandomCrop(crop_size=(16, 24))(r)
        img, seg = out["img"], out["gt_semantic_seg"]
        assert img.shape == (16, 24, 3) and seg.shape == (16, 24)
        y, x = img[..., 0].astype(int), img[..., 1].astype(int)
        assert np.array_equal(seg, (y * 1000 + x) % 251)
        assert out["img_shape"] == (16, 24, 3)


def test_random_crop_smaller_image_is_not_padded():
    r = coord_sample(10, 12)
    out = RandomCrop(crop_size=32)(r)
    assert out["img"].shape[:2] == (10, 12)


def _count_balanced_crops(step, seg, trials=50):
    n = 0
    for _ in range(trials):
        out = step({"img": np.zeros(seg.shape + (3,), np.uint8), "gt_semantic_seg": seg.copy(),
                    "seg_fields": ["gt_semantic_seg"]})
        labels, cnt = np.unique(out["gt_semantic_seg"], return_counts=True)
        n += len(labels) == 2 and cnt.max() / cnt.sum() < 0.75
    return n


def test_random_crop_cat_max_ratio_prefers_balanced_crops():
    # Class 1 on the left 30 columns, class 2 on the right 30: of the 41 offsets of a 20x20 crop only 9
    # (~22%) hold both with neither ≥ 75%. With up to 10 retries ~92% of crops should be balanced.
    seg = np.ones((20, 60), np.uint8)
    seg[:, 30:] = 2
    np.random.seed(1)
    with_ratio = _count_balanced_crops(RandomCrop(crop_size=(20, 20), cat_max_ratio=0.75), seg)
    np.random.seed(1)
    without = _count_balanced_crops(RandomCrop(crop_size=(20, 20)), seg)
    assert with_ratio >= 38
    assert without <= 20


def test_cat_max_ratio_ignores_ignore_index():
    seg = np.full((10, 10), 255, np.uint8)
    seg[:, :5] = 1
    seg[:, 5:6] = 2
    np.random.seed(0)
    out = RandomCrop(crop_size=(10, 10), cat_max_ratio=0.9)(
        {"img": np.zeros((10, 10, 3), np.uint8), "gt_semantic_seg": seg, "seg_fields": ["gt_semantic_seg"]})
    assert out["gt_semantic_seg"].shape == (10, 10)


@pytest.mark.parametrize("direction,code", [("horizontal", (slice(None), slice(None, None, -1))),
                                            ("vertical", (slice(None, None, -1), slice(None)))])
def test_flip_moves_image_and_mask_together(direction, code):
    r = coord_sample()
    img0, seg0 = r["img"].copy(), r["gt_semantic_seg"].astype(np.int32)
    r["gt_semantic_seg"] = seg0.copy()
    out = RandomFlip(prob=1.0, direction=direction)(r)
    assert out["flip"] is True
    assert np.array_equal(out["img"], img0[code])
    assert np.array_equal(out["gt_semantic_seg"], seg0[code])


def test_flip_accepts_old_flip_ratio_and_never_flips_at_zero():
    r = coord_sample()
    img0 = r["img"].copy()
    out = build_pipeline([{"type": "RandomFlip", "flip_ratio": 0.0}])(r)
    assert out["flip"] is False and np.array_equal(out["img"], img0)
    with pytest.raises(ConfigError):
        RandomFlip(prob=0.5, flip_ratio=0.5)


def test_resize_keep_ratio_fits_long_and_short_edges():
    r = coord_sample(100, 200)
    out = Resize(img_scale=(300, 120), keep_ratio=True)(r)
    # factor = min(300/200, 120/100) = 1.2
    assert out["img"].shape[:2] == (120, 240)
    assert out["gt_semantic_seg"].shape == (120, 240)
    assert np.allclose(out["scale_factor"], [1.2, 1.2, 1.2, 1.2])
    assert rescale_size(480, 360, (2048, 512)) == (683, 512)


def test_resize_without_keep_ratio_uses_exact_wh():
    out = Resize(img_scale=[64, 32], keep_ratio=False)(coord_sample(100, 200))
    assert out["img"].shape[:2] == (32, 64)


def test_resize_ratio_range_scales_between_bounds():
    np.random.seed(0)
    step = Resize(img_scale=(200, 100), ratio_range=(0.5, 2.0), keep_ratio=True)
    heights = set()
    for _ in range(30):
        out = step(coord_sample(100, 200))
        h, w = out["img"].shape[:2]
        assert 50 <= h <= 200 and abs(w - 2 * h) <= 1
        heights.add(h)
    assert len(heights) > 5  # really random
    # ratio_range without img_scale scales the image's own size
    out = Resize(ratio_range=(2.0, 2.0))(coord_sample(10, 20))
    assert out["img"].shape[:2] == (20, 40)


def test_masks_stay_integral_with_original_values_after_geometric_steps():
    rng = np.random.RandomState(0)
    seg = rng.choice(np.array([0, 3, 7, 255], np.uint8), size=(37, 53))
    img = rng.randint(0, 255, (37, 53, 3)).astype(np.uint8)
    pipe = build_pipeline([
        {"type": "Resize", "img_scale": (90, 70), "ratio_range": (0.5, 2.0)},
        {"type": "RandomCrop", "crop_size": (30, 30), "cat_max_ratio": 0.75},
        {"type": "RandomFlip", "prob": 0.5},
        {"type": "Albu", "transforms": [{"type": "Rotate", "limit": 30, "p": 1.0, "fill_mask": 255},
                                        {"type": "OneOf", "transforms": [
                                            {"type": "Affine", "scale": (0.7, 1.3), "p": 1.0, "fill_mask": 255},
                                            {"type": "HorizontalFlip", "p": 1.0}], "p": 1.0}]},
    ])
    np.random.seed(3)
    for _ in range(10):
        out = pipe({"img": img.copy(), "gt_semantic_seg": seg.copy(), "seg_fields": ["gt_semantic_seg"]})
        m = out["gt_semantic_seg"]
        assert m.dtype == np.uint8
        assert set(np.unique(m).tolist()) <= {0, 3, 7, 255}
        assert m.shape == out["img"].shape[:2]


def test_albu_keeps_image_and_mask_aligned_and_is_seeded_by_numpy():
    r = coord_sample(32, 32)
    r["gt_semantic_seg"] = r["img"][..., 1].copy()  # mask = x coordinate
    step = build_pipeline([{"type": "Albu", "transforms": [{"type": "HorizontalFlip", "p": 0.5},
                                                             {"type": "VerticalFlip", "p": 0.5}]}])
    outs = []
    for seed in (5, 5, 6, 7, 8, 9):
        np.random.seed(seed)
        out = step({**r, "img": r["img"].copy(), "gt_semantic_seg": r["gt_semantic_seg"].copy()})
        assert np.array_equal(out["img"][..., 1], out["gt_semantic_seg"])
        outs.append(out["img"])
    assert np.array_equal(outs[0], outs[1])  # same numpy seed, same augmentation
    assert any(not np.array_equal(outs[0], o) for o in outs[2:])


def test_albu_config_errors():
    with pytest.raises(ConfigError, match="NoSuchTransform"):
        build_pipeline([{"type": "Albu", "transforms": [{"type": "NoSuchTransform"}]}])
    with pytest.raises(ConfigError, match="limt"):
        build_pipeline([{"type": "Albu", "transforms": [{"type": "Rotate", "limt": 10}]}])
    with pytest.raises(ConfigError, match="nearest"):
        build_pipeline([{"type": "Albu", "transforms": [{"type": "Rotate", "mask_interpolation": 1}]}])


def test_map_labels_reduce_zero_label_and_label_map():
    seg = np.array([[0, 1, 2, 255]], np.uint8)
    assert map_labels(seg, None, True).tolist() == [[255, 0, 1, 255]]
    # applied on a copy: 1→2 and 2→3 must not chain into 1→3
    assert map_labels(seg, {1: 2, 2: 3}, False).tolist() == [[0, 2, 3, 255]]
    # label_map first, then reduce_zero_label
    assert map_labels(seg, {2: 0}, True).tolist() == [[255, 0, 255, 255]]
    # the classes-subset map last, on the reduced labels (MMSeg 1.x; see test_custom_dataset.py)
    raw = np.array([[0, 1, 2, 3, 255]], np.uint8)
    assert map_labels(raw, None, True, {0: 255, 1: 0, 2: 1}).tolist() == [[255, 255, 0, 1, 255]]
    assert map_labels(raw, {3: 1}, True, {0: 255, 1: 0, 2: 1}).tolist() == [[255, 255, 0, 255, 255]]
    assert map_labels(raw, None, False, {3: 0, 0: 3}).tolist() == [[3, 1, 2, 0, 255]]
    with pytest.raises(ConfigError, match="subset_label_map"):
        map_labels(raw, None, False, {0: 256})


def test_photometric_distortion_keeps_uint8_and_shape():
    rng = np.random.RandomState(0)
    img = rng.randint(0, 256, (24, 32, 3)).astype(np.uint8)
    step = PhotoMetricDistortion()
    np.random.seed(0)
    changed = 0
    for _ in range(10):
        out = step({"img": img.copy()})["img"]
        assert out.dtype == np.uint8 and out.shape == img.shape
        changed += not np.array_equal(out, img)
    assert changed >= 5
    with pytest.raises(ConfigError):
        step({"img": img.astype(np.float32)})


def test_photometric_brightness_matches_mmseg_convert():
    img = np.array([[[10, 200, 250]]], np.uint8)
    step = PhotoMetricDistortion()
    seed = next(s for s in range(100) if np.random.RandomState(s).randint(2) == 1)  # a seed that applies it
    np.random.seed(seed)
    out = step.brightness(img)
    rs = np.random.RandomState(seed)
    rs.randint(2)
    beta = rs.uniform(-32, 32)
    expected = np.clip(img.astype(np.float32) + beta, 0, 255).astype(np.uint8)
    assert np.array_equal(out, expected)


def test_pad_to_size_and_divisor_with_pad_values():
    r = coord_sample(10, 13)
    out = Pad(size=(16, 20), pad_val=7, seg_pad_val=255)(r)
    assert out["img"].shape == (16, 20, 3) and out["gt_semantic_seg"].shape == (16, 20)
    assert (out["img"][10:] == 7).all() and (out["img"][:, 13:] == 7).all()
    assert (out["gt_semantic_seg"][10:] == 255).all() and (out["gt_semantic_seg"][:, 13:] == 255).all()
    assert out["pad_shape"] == (16, 20, 3)
    out = Pad(size_divisor=8, pad_val=[1, 2, 3])(coord_sample(10, 13))
    assert out["img"].shape[:2] == (16, 16)
    assert out["img"][15, 15].tolist() == [1, 2, 3]
    with pytest.raises(ConfigError):
        Pad()


def test_normalize_flips_bgr_and_standardises():
    img = np.zeros((2, 2, 3), np.uint8)
    img[..., 0] = 10  # blue
    img[..., 2] = 30  # red
    out = build_pipeline([{"type": "Normalize", "mean": [1, 2, 3], "std": [2, 2, 2], "to_rgb": True}])(
        {"img": img})
    assert out["img"].dtype == np.float32
    assert np.allclose(out["img"][0, 0], [(30 - 1) / 2, (0 - 2) / 2, (10 - 3) / 2])


def test_split_device_steps_removes_every_normalize():
    norm = {"type": "Normalize", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "to_rgb": True}
    train = [{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations"}, {"type": "RandomFlip", "prob": 0.5},
             norm, {"type": "Pad", "size": (8, 8), "pad_val": 0, "seg_pad_val": 255},
             {"type": "DefaultFormatBundle"}, {"type": "Collect", "keys": ["img", "gt_semantic_seg"]}]
    cpu, got = split_device_steps(train)
    assert got == norm
    assert [c["type"] for c in cpu] == ["LoadImageFromFile", "LoadAnnotations", "RandomFlip", "Pad",
                                        "DefaultFormatBundle", "Collect"]
    # Padding 0 after Normalize means "the mean colour": on uint8 BGR that is round(mean) reversed.
    assert cpu[3]["pad_val"] == [104, 116, 124]
    assert train[4]["pad_val"] == 0  # input untouched
    test = [{"type": "LoadImageFromFile"},
            {"type": "MultiScaleFlipAug", "img_scale": (64, 32), "flip": False,
             "transforms": [{"type": "Resize", "keep_ratio": True}, {"type": "RandomFlip"}, norm,
                            {"type": "ImageToTensor", "keys": ["img"]}]}]
    cpu, got = split_device_steps(test)
    assert got == norm
    assert [c["type"] for c in cpu[1]["transforms"]] == ["Resize", "RandomFlip", "ImageToTensor"]
    build_pipeline(cpu)  # still a valid pipeline
    assert split_device_steps([{"type": "LoadImageFromFile"}])[1] is None
    with pytest.raises(ConfigError, match="Normalize"):
        split_device_steps([norm, dict(norm, to_rgb=False)])


def test_multi_scale_flip_aug_single_variant_returns_a_plain_results_dict():
    pipe = build_pipeline([{"type": "MultiScaleFlipAug", "img_scale": [40, 20], "flip": False,
                            "transforms": [{"type": "Resize", "keep_ratio": True}, {"type": "RandomFlip"}]}])
    out = pipe(coord_sample(100, 200))
    assert out["img"].shape[:2] == (20, 40) and out["flip"] is False
    assert "aug_variants" not in out
    out = build_pipeline([{"type": "MultiScaleFlipAug", "img_ratios": [0.5],
                           "transforms": [{"type": "Resize", "keep_ratio": True}]}])(coord_sample(100, 200))
    assert out["img"].shape[:2] == (50, 100)


def _tta(**kwargs):
    return build_pipeline([{"type": "MultiScaleFlipAug", **kwargs,
                            "transforms": [{"type": "Resize", "keep_ratio": True}, {"type": "RandomFlip"}]}])


@pytest.mark.parametrize("kwargs,scales", [
    # img_ratios on the image's own size (w=200, h=100)
    ({"img_ratios": [0.5, 1.0, 1.5], "flip": True}, [(100, 50), (200, 100), (300, 150)]),
    # img_ratios on img_scale
    ({"img_scale": (80, 40), "img_ratios": [0.5, 1.0], "flip": True}, [(40, 20), (80, 40)]),
    # several img_scale values, no flip
    ({"img_scale": [(80, 40), (60, 30)], "flip": False}, [(80, 40), (60, 30)]),
])
def test_multi_scale_flip_aug_variants_are_scales_times_flips(kwargs, scales):
    sample = coord_sample(100, 200)
    out = _tta(**kwargs)(sample)
    flips = [False, True] if kwargs.get("flip") else [False]
    variants = out["aug_variants"]
    assert len(variants) == len(scales) * len(flips)
    assert [(v["scale"], v["flip"]) for v in variants] == [(s, f) for s in scales for f in flips]
    for v in variants:
        w, h = v["scale"]
        assert v["img"].shape[:2] == (h, w) and v["flip_direction"] == "horizontal"
    # The top-level dict is the first variant (callers that ignore aug_variants still work).
    assert out["img"] is variants[0]["img"] and "aug_variants" not in variants[0]
    assert sample["img"].shape[:2] == (100, 200) and "scale" not in sample  # input untouched


@pytest.mark.parametrize("direction,axis", [("horizontal", 1), ("vertical", 0)])
def test_multi_scale_flip_aug_flipped_variant_is_the_mirrored_image(direction, axis):
    out = _tta(img_ratios=[0.5, 1.0], flip=True, flip_direction=direction)(coord_sample(40, 60))
    variants = out["aug_variants"]
    for plain, flipped in zip(variants[0::2], variants[1::2]):
        assert plain["flip"] is False and flipped["flip"] is True
        assert flipped["flip_direction"] == direction and plain["scale"] == flipped["scale"]
        assert np.array_equal(flipped["img"], np.flip(plain["img"], axis=axis))
        assert not np.array_equal(flipped["img"], plain["img"])


def test_multi_scale_flip_aug_crosses_flip_directions_like_mmseg():
    out = _tta(img_scale=(60, 40), flip=True, flip_direction=["horizontal", "vertical"])(coord_sample(40, 60))
    assert [(v["flip"], v["flip_direction"]) for v in out["aug_variants"]] == [
        (False, "horizontal"), (False, "vertical"), (True, "horizontal"), (True, "vertical")]


def test_multi_scale_flip_aug_config_errors():
    with pytest.raises(ConfigError, match="RandomFlip"):  # flip without the step that flips
        build_pipeline([{"type": "MultiScaleFlipAug", "img_scale": (64, 32), "flip": True,
                         "transforms": [{"type": "Resize"}]}])
    with pytest.raises(ConfigError, match="flip_direction"):
        _tta(img_scale=(64, 32), flip=True, flip_direction="sideways")
    with pytest.raises(ConfigError, match="img_ratios"):
        _tta(img_ratios=[0.5, -1.0])
    with pytest.raises(ConfigError, match="single img_scale"):
        _tta(img_scale=[(64, 32), (32, 16)], img_ratios=[0.5, 1.0])


def test_enable_aug_test_sets_ratios_and_flip_on_a_copy():
    test = [{"type": "LoadImageFromFile"},
            {"type": "MultiScaleFlipAug", "img_scale": [80, 40], "flip": False,
             "transforms": [{"type": "Resize", "keep_ratio": True},
                            {"type": "Normalize", "mean": [0, 0, 0], "std": [1, 1, 1]}]}]
    got = enable_aug_test(test)
    step = got[1]
    assert step["img_ratios"] == [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] and step["flip"] is True
    assert [t["type"] for t in step["transforms"]] == ["Resize", "RandomFlip", "Normalize"]
    assert test[1]["flip"] is False and "img_ratios" not in test[1] and len(test[1]["transforms"]) == 2
    out = build_pipeline(got[1:])(coord_sample(40, 80))
    assert len(out["aug_variants"]) == 12
    assert out["aug_variants"][-1]["img"].shape[:2] == (70, 140)  # 1.75 × (80, 40)
    small = enable_aug_test(test, ratios=[1.0, 2.0], flip=False)[1]
    assert small["img_ratios"] == [1.0, 2.0] and small["flip"] is False
    assert [t["type"] for t in small["transforms"]] == ["Resize", "Normalize"]
    with pytest.raises(ConfigError, match="MultiScaleFlipAug"):
        enable_aug_test([{"type": "LoadImageFromFile"}, {"type": "Resize", "img_scale": [8, 8]}])


def test_unknown_step_and_argument_are_config_errors():
    with pytest.raises(ConfigError, match="RandomFlipp"):
        build_pipeline([{"type": "RandomFlipp"}])
    with pytest.raises(ConfigError, match="crop_sizee"):
        build_pipeline([{"type": "RandomCrop", "crop_sizee": 4}])
    with pytest.raises(ConfigError):
        build_pipeline([{"type": "RandomCrop"}])  # missing required argument
    assert isinstance(build_pipeline([]), Compose)


def test_albu_asks_nobody_for_albumentations_updates():
    """albumentations asks PyPI for its latest version on import (up to 2 s in every Ray Data actor, and a
    request from every cluster node) unless NO_ALBUMENTATIONS_UPDATE is set: building Albu sets it first."""
    import subprocess
    import sys

    code = ("import sys\n"
            "requests = []\n"
            "sys.addaudithook(lambda event, args: event == 'urllib.Request' and requests.append(args[0]))\n"
            "from rayseg.registry import TRANSFORMS, build\n"
            "import rayseg.datasets\n"
            "build({'type': 'Albu', 'transforms': [{'type': 'HorizontalFlip', 'p': 1.0}]}, TRANSFORMS)\n"
            "assert 'albumentations' in sys.modules\n"
            "print('requests', requests)\n")
    env = {k: v for k, v in os.environ.items() if k != "NO_ALBUMENTATIONS_UPDATE"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "requests []"
