"""``data.cache_decoded``: the training stream that decodes each sample once into the object store gives the
same rows as the one that decodes every time, treats bad samples the same, and ``auto`` decides by size."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO_ROOT
from rayseg.config import load_config
from rayseg.datasets import CustomDataset
from rayseg.datasets import decoded_cache
from rayseg.errors import ConfigError
from rayseg.spec.resolve import resolve_run

CLASSES = ("a", "b", "c", "d")
PIPELINE = [
    {"type": "LoadImageFromFile"},
    {"type": "LoadAnnotations"},
    {"type": "Resize", "img_scale": [40, 40], "ratio_range": [0.8, 1.2]},
    {"type": "RandomCrop", "crop_size": [24, 24]},
    {"type": "RandomFlip", "prob": 0.5},
    {"type": "PhotoMetricDistortion"},
    {"type": "Normalize", "mean": [0, 0, 0], "std": [1, 1, 1], "to_rgb": True},
    {"type": "Pad", "size": [24, 24], "pad_val": 0, "seg_pad_val": 255},
]


def tagged_dataset(root: Path, n: int = 10, size=(32, 40), pipeline=PIPELINE) -> CustomDataset:
    """Image i is 20*i+5 plus noise (so augmentation leaves a trace), its mask label i % 4."""
    for sub in ("img", "ann"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.full((*size, 3), 20 * i + 5, np.int16) + rng.integers(-3, 4, (*size, 3))
        cv2.imwrite(str(root / "img" / f"{i:03d}.png"), img.clip(0, 255).astype(np.uint8))
        cv2.imwrite(str(root / "ann" / f"{i:03d}.png"), np.full(size, i % 4, np.uint8))
    return CustomDataset(pipeline=pipeline, data_root=str(root), img_dir="img", ann_dir="ann", img_suffix=".png",
                         seg_map_suffix=".png", classes=CLASSES)


# ----------------------------------------------------------------------------------------------- deciding
def test_modes_are_normalised_and_checked():
    assert decoded_cache.normalise_mode(True) == "true"
    assert decoded_cache.normalise_mode(False) == "false"
    assert decoded_cache.normalise_mode("AUTO") == "auto"
    with pytest.raises(ConfigError, match="data.cache_decoded.*'sometimes'"):
        decoded_cache.normalise_mode("sometimes")


def test_auto_caches_when_the_estimate_fits_the_object_store(tmp_path):
    ds = tagged_dataset(tmp_path)
    need = decoded_cache.estimate_bytes(ds)
    assert need >= 10 * 32 * 40 * 4  # ten samples of a 3-channel image and a 1-channel mask
    assert need < 2 * 10 * 32 * 40 * 4
    assert decoded_cache.should_cache("auto", ds, store_bytes=need / decoded_cache.STORE_SHARE + 1)
    assert not decoded_cache.should_cache("auto", ds, store_bytes=need)  # would fill too much of the store
    assert decoded_cache.should_cache("true", ds, store_bytes=1)  # true insists
    assert not decoded_cache.should_cache("false", ds, store_bytes=1e12)


def test_a_pipeline_that_cannot_be_split_is_not_cached(tmp_path):
    from rayseg.datasets.dataset_wrappers import RepeatDataset

    tagged_dataset(tmp_path)
    no_load_first = [{"type": "RandomFlip", "prob": 0.5}] + PIPELINE
    ds = CustomDataset(pipeline=no_load_first, data_root=str(tmp_path), img_dir="img", ann_dir="ann",
                       img_suffix=".png", seg_map_suffix=".png", classes=CLASSES)
    assert decoded_cache.split_load_steps(ds) is None
    assert not decoded_cache.should_cache("auto", ds, store_bytes=1e12)
    with pytest.raises(ConfigError, match="data.cache_decoded: true"):
        decoded_cache.should_cache("true", ds, store_bytes=1e12)
    # A RepeatDataset prepares its samples with the inner dataset: that one is cached.
    inner = tagged_dataset(tmp_path)
    base, steps = decoded_cache.split_load_steps(RepeatDataset(inner, times=3))
    assert base is inner and steps == 2


def test_the_key_is_resolved_into_the_data_spec():
    config = REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml"

    def spec(*options):
        return resolve_run(load_config(config, list(options)), work_dir="/tmp/rayseg-spec-test/run")

    assert spec().data.cache_decoded == "auto"
    assert spec("data.cache_decoded=false").data.cache_decoded == "false"
    with pytest.raises(ConfigError, match="data.cache_decoded"):
        spec("data.cache_decoded=maybe")


def test_first_use_order_follows_the_stream():
    from rayseg.datasets.ray_data import stream_indices

    order = decoded_cache.first_use_order(7, seed=3, start_position=12)
    assert sorted(order) == list(range(7))
    assert order[:2] == [int(i) for i in stream_indices(np.array([12, 13]), 7, 3)]


# ----------------------------------------------------------------------------------------------- streams
def _rows(ds, cache, **kwargs):
    from rayseg.datasets.ray_data import build_train_stream

    rows = build_train_stream(ds, num_actors=2, actor_num_cpus=0.5, cache_decoded=cache, **kwargs).take_all()
    return sorted(row["img"].tobytes() + row["gt_semantic_seg"].tobytes() for row in rows)


@pytest.mark.slow
def test_cached_stream_gives_the_same_rows_as_decoding_each_time(ray_head, tmp_path):
    ds = tagged_dataset(tmp_path)
    # Starting mid-epoch and spanning three epochs: positions, not actors, decide each row's augmentation.
    kwargs = {"num_rows": 25, "seed": 2, "start_position": 7}
    cached = _rows(ds, "true", **kwargs)
    assert len(cached) == 25 and len(set(cached)) == 25  # every row augmented its own way
    assert cached == _rows(ds, "false", **kwargs)


@pytest.mark.slow
def test_cached_stream_names_a_bad_file_or_skips_it_as_before(ray_head, tmp_path):
    import ray

    from rayseg.datasets.bad_samples import BadSamplePolicy

    ds = tagged_dataset(tmp_path, n=6)
    bad = tmp_path / "img" / "002.png"
    bad.write_bytes(bad.read_bytes()[:40])  # truncated: decoding fails
    gone = tmp_path / "ann" / "004.png"
    gone.unlink()  # listed, then gone: reading fails
    with pytest.raises(Exception) as info:
        _rows(ds, "true", num_rows=12, seed=0)
    assert str(bad) in str(info.value) or str(gone) in str(info.value)

    policy = BadSamplePolicy.start("skip", max_bad=5)
    cached = _rows(ds, "true", num_rows=12, seed=0, bad_samples=policy)
    assert len(cached) == 12 - 2 * 2  # two epochs, each without the two bad samples
    assert cached == _rows(ds, "false", num_rows=12, seed=0, bad_samples=policy)
    reasons = ray.get(policy.ledger.samples.remote())
    assert sorted(reasons) == sorted([str(bad), str(tmp_path / "img" / "004.png")])
    assert str(gone) in reasons[str(tmp_path / "img" / "004.png")]
