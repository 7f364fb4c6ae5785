"""The MMSeg 0.x steps of rayseg.datasets.transforms_extra and mosaic: shapes, dtypes, values against MMSeg's
formulas, seeded randomness, label maps (nearest, ignore fill) and the refusals' messages."""
import cv2
import numpy as np
import pytest

from rayseg.datasets import build_pipeline, split_device_steps
from rayseg.errors import ConfigError, DataError
from rayseg.registry import TRANSFORMS, build

MMSEG_0X_STEPS = ["LoadImageFromFile", "LoadAnnotations", "MultiScaleFlipAug", "ResizeToMultiple", "Resize",
                  "RandomFlip", "Pad", "Normalize", "Rerange", "CLAHE", "RandomCrop", "RandomRotate", "RGB2Gray",
                  "AdjustGamma", "SegRescale", "PhotoMetricDistortion", "RandomCutOut", "RandomMosaic", "ToTensor",
                  "ImageToTensor", "Transpose", "ToDataContainer", "DefaultFormatBundle", "Collect"]


def step(cfg):
    return build(cfg, TRANSFORMS)


def sample(h=20, w=30, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    seg = rng.integers(0, 4, size=(h, w), dtype=np.uint8)
    return {"img": img, "gt_semantic_seg": seg, "seg_fields": ["gt_semantic_seg"], "filename": "x.png",
            "img_shape": img.shape, "ori_shape": img.shape}


def test_every_mmseg_0x_step_is_registered():
    missing = [name for name in MMSEG_0X_STEPS if name not in TRANSFORMS]
    assert missing == []


def test_resize_to_multiple_rounds_up_and_keeps_labels():
    r = sample(20, 30)
    labels = set(np.unique(r["gt_semantic_seg"]))
    out = step({"type": "ResizeToMultiple", "size_divisor": 16})(r)
    assert out["img"].shape == (32, 32, 3) and out["gt_semantic_seg"].shape == (32, 32)
    assert out["img"].dtype == np.uint8 and set(np.unique(out["gt_semantic_seg"])) <= labels
    assert out["img_shape"] == (32, 32, 3)
    with pytest.raises(ConfigError, match="interpolation must be one of"):
        step({"type": "ResizeToMultiple", "interpolation": "cubic"})


def test_rerange_stretches_to_the_range_as_uint8():
    r = sample()
    r["img"] = np.clip(r["img"], 50, 150)
    out = step({"type": "Rerange", "min_value": 10, "max_value": 210})(r)
    img = out["img"]
    assert img.dtype == np.uint8 and img.min() == 10 and img.max() == 210
    expected = np.rint((np.clip(sample()["img"], 50, 150).astype(np.float32) - 50) / 100 * 200 + 10)
    assert np.array_equal(img, expected.astype(np.uint8))
    with pytest.raises(ConfigError, match="leaves 0..255"):
        step({"type": "Rerange", "min_value": 0, "max_value": 1})  # fine
        step({"type": "Rerange", "min_value": -1, "max_value": 1})
    flat = sample()
    flat["img"][:] = 7
    with pytest.raises(DataError, match="x.png has the single value 7"):
        step({"type": "Rerange"})(flat)


def test_clahe_matches_opencv_per_channel_and_leaves_input():
    r = sample(64, 64)
    before = r["img"].copy()
    out = step({"type": "CLAHE", "clip_limit": 2.0, "tile_grid_size": [4, 4]})(r)
    clahe = cv2.createCLAHE(2.0, (4, 4))
    for c in range(3):
        assert np.array_equal(out["img"][:, :, c], clahe.apply(np.ascontiguousarray(before[:, :, c])))
    assert np.array_equal(r["img"] if r["img"] is not out["img"] else before, before)
    with pytest.raises(ConfigError, match="tile_grid_size"):
        step({"type": "CLAHE", "tile_grid_size": [8]})


def test_random_rotate_by_90_matches_numpy_and_pads_labels_with_ignore():
    r = sample(16, 16)
    img, seg = r["img"].copy(), r["gt_semantic_seg"].copy()
    rot = step({"type": "RandomRotate", "prob": 1.0, "degree": [90, 90]})
    out = rot(r)
    # mmcv rotates clockwise for a positive angle: np.rot90 with k=-1 on a square image.
    assert np.array_equal(out["gt_semantic_seg"], np.rot90(seg, k=-1))
    assert np.array_equal(out["img"], np.rot90(img, k=-1))
    r = sample(16, 24)
    out = step({"type": "RandomRotate", "prob": 1.0, "degree": [45, 45], "seg_pad_val": 255, "pad_val": 9})(r)
    seg = out["gt_semantic_seg"]
    assert seg.shape == (16, 24) and seg[0, 0] == 255 and set(np.unique(seg)) <= {0, 1, 2, 3, 255}
    assert (out["img"][0, 0] == 9).all()  # every channel, not only the first
    bound = step({"type": "RandomRotate", "prob": 1.0, "degree": [90, 90], "auto_bound": True})(sample(16, 24))
    assert bound["img"].shape == (24, 16, 3) and bound["gt_semantic_seg"].shape == (24, 16)


def test_random_rotate_is_seeded_and_draws_as_mmseg():
    rot = step({"type": "RandomRotate", "prob": 0.5, "degree": 30})
    assert rot.degree == (-30.0, 30.0)
    outs = []
    for _ in range(2):
        np.random.seed(3)
        outs.append(rot(sample())["img"])
    assert np.array_equal(outs[0], outs[1])
    # Two draws per call whether or not it rotates (MMSeg's order): the RNG advances the same either way.
    np.random.seed(5)
    step({"type": "RandomRotate", "prob": 0.0, "degree": 30})(sample())
    after = np.random.rand()
    np.random.seed(5)
    np.random.rand(), np.random.uniform(-30, 30)
    assert after == np.random.rand()
    with pytest.raises(ConfigError, match="degree -5 should be positive"):
        step({"type": "RandomRotate", "prob": 0.5, "degree": -5})
    with pytest.raises(ConfigError, match="prob must be a number in"):
        step({"type": "RandomRotate", "prob": 2, "degree": 5})


def test_rgb2gray_weights_in_channel_order():
    r = sample()
    img = r["img"].astype(np.float64)
    out = step({"type": "RGB2Gray"})(r)
    expected = np.rint(img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114).astype(np.uint8)
    assert out["img"].shape == (20, 30, 3) and out["img"].dtype == np.uint8
    assert all(np.array_equal(out["img"][..., c], expected) for c in range(3))
    one = step({"type": "RGB2Gray", "out_channels": 1})(sample())
    assert one["img"].shape == (20, 30, 1) and one["img_shape"] == (20, 30, 1)
    with pytest.raises(DataError, match="expected 2 channels"):
        step({"type": "RGB2Gray", "weights": [0.5, 0.5]})(sample())


def test_adjust_gamma_is_mmsegs_table():
    r = sample()
    img = r["img"].copy()
    out = step({"type": "AdjustGamma", "gamma": 2.0})(r)
    table = np.array([(i / 255.0) ** 0.5 * 255 for i in range(256)]).astype(np.uint8)
    assert np.array_equal(out["img"], table[img])
    with pytest.raises(ConfigError, match="positive number"):
        step({"type": "AdjustGamma", "gamma": 0})


def test_seg_rescale_scales_only_the_labels_nearest():
    r = sample(20, 30)
    seg = r["gt_semantic_seg"].copy()
    out = step({"type": "SegRescale", "scale_factor": 0.5})(r)
    assert out["img"].shape == (20, 30, 3) and out["gt_semantic_seg"].shape == (10, 15)
    assert np.array_equal(out["gt_semantic_seg"], seg[::2, ::2])
    assert step({"type": "SegRescale", "scale_factor": 1})(sample())["gt_semantic_seg"].shape == (20, 30)


def test_random_cutout_fills_image_and_labels():
    np.random.seed(0)
    cut = step({"type": "RandomCutOut", "prob": 1.0, "n_holes": [2, 4], "cutout_shape": [[4, 6], [5, 5]],
                "fill_in": [1, 2, 3], "seg_fill_in": 255})
    r = sample()
    original = r["img"].copy()
    out = cut(r)
    holes = out["gt_semantic_seg"] == 255
    assert holes.any() and np.array_equal(r["img"] if "img" not in out else original, original)
    assert (out["img"][holes] == [1, 2, 3]).all()
    assert np.array_equal(out["img"][~holes], original[~holes])
    ratio = step({"type": "RandomCutOut", "prob": 1.0, "n_holes": 1, "cutout_ratio": [0.5, 0.5]})
    np.random.seed(1)
    out = ratio(sample())
    assert (out["gt_semantic_seg"] != 255).all()  # seg_fill_in None: labels untouched
    assert step({"type": "RandomCutOut", "prob": 0.0, "n_holes": 1, "cutout_shape": [2, 2]})(sample())["img"] is not None
    with pytest.raises(ConfigError, match="exactly one of cutout_shape and cutout_ratio"):
        step({"type": "RandomCutOut", "prob": 1.0, "n_holes": 1})


def _mix_sample(value, h, w):
    return {"img": np.full((h, w, 3), value, np.uint8), "gt_semantic_seg": np.full((h, w), value, np.uint8),
            "seg_fields": ["gt_semantic_seg"], "filename": f"{value}.png"}


def test_random_mosaic_places_four_tiles_around_the_centre():
    mosaic = step({"type": "RandomMosaic", "prob": 1.0, "img_scale": [20, 30], "center_ratio_range": [1.0, 1.0],
                   "seg_pad_val": 255, "pad_val": 0})
    r = _mix_sample(1, 20, 30)
    r["mix_results"] = [_mix_sample(2, 10, 30), _mix_sample(3, 40, 60), _mix_sample(0, 20, 30)]
    out = mosaic(r)
    img, seg = out["img"], out["gt_semantic_seg"]
    assert img.shape == (40, 60, 3) and seg.shape == (40, 60) and img.dtype == np.uint8
    assert (seg[:20, :30] == 1).all()                                   # top left: own image fills its quadrant
    assert (seg[10:20, 30:] == 2).all() and (seg[:10, 30:] == 255).all()  # a 10×30 tile: bottom of its quadrant
    assert (seg[20:, :30] == 3).all()                                   # 40×60 scaled down to 20×30
    assert (seg[20:, 30:] == 0).all()
    assert np.array_equal(img[..., 0][seg != 255], seg[seg != 255]) and (img[seg == 255] == 0).all()
    assert out["img_shape"] == (40, 60, 3)


def test_random_mosaic_is_seeded_and_refused_outside_mix_dataset():
    mosaic = step({"type": "RandomMosaic", "prob": 1.0, "img_scale": [16, 16]})

    def run():
        r = _mix_sample(1, 16, 16)
        r["mix_results"] = [_mix_sample(v, 16, 16) for v in (2, 3, 4)]
        return mosaic(r)["gt_semantic_seg"]

    np.random.seed(7)
    a = run()
    np.random.seed(7)
    assert np.array_equal(a, run())
    np.random.seed(0)
    assert all(0 <= i < 5 for i in mosaic.get_indexes(range(5)))
    with pytest.raises(ConfigError, match="put it in the pipeline of a MultiImageMixDataset"):
        mosaic(_mix_sample(1, 16, 16))
    with pytest.raises(ConfigError, match="img_scale must be"):
        step({"type": "RandomMosaic", "prob": 1.0, "img_scale": 640})


def test_formatting_steps_are_noops_and_transpose_refuses_layouts():
    r = sample()
    for cfg in ({"type": "ToTensor", "keys": ["img", "gt_semantic_seg"]}, {"type": "ToDataContainer"},
                {"type": "Transpose", "keys": ["img"], "order": [2, 0, 1]}):
        out = step(cfg)(dict(r))
        assert out["img"] is r["img"] and out["img"].shape == (20, 30, 3)
    with pytest.raises(ConfigError, match="Albu"):
        step({"type": "Transpose", "keys": ["img"], "order": [1, 0, 2]})
    with pytest.raises(ConfigError, match="only order \\[2, 0, 1\\] on img"):
        step({"type": "Transpose", "keys": ["gt_semantic_seg"], "order": [2, 0, 1]})


def test_new_steps_run_in_a_pipeline_with_normalize_on_the_device():
    cfgs = [{"type": "RandomRotate", "prob": 1.0, "degree": 10}, {"type": "AdjustGamma", "gamma": 1.5},
            {"type": "CLAHE"}, {"type": "RandomCutOut", "prob": 1.0, "n_holes": 2, "cutout_ratio": [0.2, 0.2]},
            {"type": "Normalize", "mean": [0, 0, 0], "std": [1, 1, 1]},
            {"type": "DefaultFormatBundle"}, {"type": "ToTensor", "keys": ["img"]}]
    cpu, norm = split_device_steps(cfgs)
    np.random.seed(0)
    out = build_pipeline(cpu)(sample())
    assert norm is not None and out["img"].dtype == np.uint8 and out["img"].shape == (20, 30, 3)
