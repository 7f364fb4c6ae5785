"""The Ray Data ingest on generated image files: pairing, seeding, eval rows, and decode errors."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from rayseg.datasets import CustomDataset

pytestmark = pytest.mark.slow
CLASSES = ("a", "b", "c", "d")
PIPELINE = [
    {"type": "LoadImageFromFile"},
    {"type": "LoadAnnotations"},
    {"type": "Resize", "img_scale": [40, 40], "ratio_range": [0.8, 1.2]},
    {"type": "RandomCrop", "crop_size": [24, 24]},
    {"type": "RandomFlip", "prob": 0.5},
    {"type": "Normalize", "mean": [0, 0, 0], "std": [1, 1, 1], "to_rgb": True},
    {"type": "Pad", "size": [24, 24], "pad_val": 0, "seg_pad_val": 255},
]


def make_tagged_dataset(root, n=12, size=(32, 40)):
    """Image i is filled with the value 20*i+5 (plus a little noise, so augmentations leave a trace) and
    its mask with label i % 4: any mix-up shows."""
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = np.full((*size, 3), 20 * i + 5, np.int16) + rng.integers(-3, 4, (*size, 3))
        cv2.imwrite(str(root / "img" / f"{i:03d}.png"), img.clip(0, 255).astype(np.uint8))
        cv2.imwrite(str(root / "ann" / f"{i:03d}.png"), np.full(size, i % 4, np.uint8))
    return CustomDataset(pipeline=PIPELINE, data_root=str(root), img_dir="img", ann_dir="ann",
                         img_suffix=".png", seg_map_suffix=".png", classes=CLASSES)


def test_train_stream_keeps_image_and_mask_paired(ray_head, tmp_path):
    from rayseg.datasets.ray_data import build_train_stream

    ds = make_tagged_dataset(tmp_path)
    rows = build_train_stream(ds, num_rows=30, seed=1, num_actors=2, actor_num_cpus=0.5).take_all()
    assert len(rows) == 30
    for row in rows:
        img, seg = row["img"], row["gt_semantic_seg"]
        assert img.dtype == np.uint8 and img.shape == (24, 24, 3) and seg.shape == (24, 24)
        value = int(np.median(img))
        index = (value - 5) // 20
        labels = set(np.unique(seg)) - {255}
        assert labels == {index % 4}, f"image of sample {index} came with mask labels {labels}"


def test_train_stream_is_reproducible(ray_head, tmp_path):
    from rayseg.datasets.ray_data import build_train_stream

    ds = make_tagged_dataset(tmp_path)

    def digest(seed):
        rows = build_train_stream(ds, num_rows=12, seed=seed, num_actors=2, actor_num_cpus=0.5).take_all()
        return sorted(row["img"].tobytes() + row["gt_semantic_seg"].tobytes() for row in rows)

    assert digest(3) == digest(3)
    assert digest(3) != digest(4)


def test_eval_stream_rows_keep_original_size_labels(ray_head, tmp_path):
    from rayseg.datasets.ray_data import build_eval_stream

    test_pipeline = [{"type": "LoadImageFromFile"},
                     {"type": "MultiScaleFlipAug", "img_scale": [20, 16], "flip": False,
                      "transforms": [{"type": "Resize", "keep_ratio": True},
                                     {"type": "Normalize", "mean": [0, 0, 0], "std": [1, 1, 1]}]}]
    make_tagged_dataset(tmp_path, n=5)
    ds = CustomDataset(pipeline=test_pipeline, data_root=str(tmp_path), img_dir="img", ann_dir="ann",
                       img_suffix=".png", seg_map_suffix=".png", classes=CLASSES, test_mode=True)
    rows = build_eval_stream(ds, num_actors=1, actor_num_cpus=0.5).take_all()
    assert sorted(int(r["index"]) for r in rows) == list(range(5))
    for r in rows:
        assert r["gt_semantic_seg"].shape == (32, 40)  # original size
        assert r["img"].shape[:2] != (32, 40)  # resized by the test pipeline
        assert tuple(r["ori_shape"]) == (32, 40)
        assert set(np.unique(r["gt_semantic_seg"])) == {int(r["index"]) % 4}


def test_undecodable_image_error_names_the_file(ray_head, tmp_path):
    from rayseg.datasets.ray_data import build_train_stream

    ds = make_tagged_dataset(tmp_path, n=4)
    bad = tmp_path / "img" / "002.png"
    bad.write_bytes(b"this is not a png")
    with pytest.raises(Exception) as info:
        build_train_stream(ds, num_rows=8, seed=0, num_actors=1, actor_num_cpus=0.5).take_all()
    assert str(bad) in str(info.value)


def test_validation_is_split_completely_and_training_equally(ray_head):
    """101 val images over 2 workers must be evaluated as 101, not trimmed to 100 as an equal split would."""
    import threading

    import ray

    from rayseg.engine.data_config import SegDataConfig

    datasets = {"train": ray.data.range(11, override_num_blocks=11), "val": ray.data.range(5, override_num_blocks=5)}
    shards = SegDataConfig(complete=("val",)).configure(datasets, world_size=2, worker_handles=None,
                                                        worker_node_ids=None)
    rows = {name: [[], []] for name in datasets}

    def consume(rank: int, name: str) -> None:
        rows[name][rank] = [int(r["id"]) for r in shards[rank][name].iter_rows()]

    # A streaming split is consumed by all workers at once, as in training.
    for name in datasets:
        threads = [threading.Thread(target=consume, args=(rank, name)) for rank in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert sorted(rows["val"][0] + rows["val"][1]) == [0, 1, 2, 3, 4]
    assert len(rows["train"][0]) == len(rows["train"][1])  # lockstep DDP needs equal shards


def test_the_train_stream_paces_its_executor(ray_head, tmp_path):
    """Ray Data 2.60's scheduling loop spins while the stream is ahead of training (its queues full):
    rayseg's streams carry a callback that holds the loop to one step per MIN_STEP_S."""
    import time

    from rayseg.datasets.executor_pacing import MIN_STEP_S, IdleExecutorPacer
    from rayseg.datasets.ray_data import build_train_stream

    stream = build_train_stream(make_tagged_dataset(tmp_path), num_rows=4, seed=0, num_actors=1,
                                actor_num_cpus=0.5)
    assert IdleExecutorPacer in stream.context.execution_callback_classes
    assert len(stream.take_all()) == 4

    pacer = IdleExecutorPacer()
    start = time.monotonic()
    for _ in range(6):
        pacer.on_execution_step(executor=None)
    assert time.monotonic() - start >= 5 * MIN_STEP_S


def test_position_blocks_start_small_and_grow_to_the_steady_size():
    from rayseg.datasets.ray_data import position_block_sizes

    sizes = position_block_sizes(64000, 8)
    assert sum(sizes) == 64000
    assert sizes[:6] == [8, 16, 32, 64, 128, 256]
    assert set(sizes[7:-1]) == {320}  # steady: 64000 rows / 200 blocks
    assert len(sizes) <= 210
    assert position_block_sizes(5, 8) == [5]
    assert sum(position_block_sizes(2000, 16)) == 2000 and max(position_block_sizes(2000, 16)) == 64


@pytest.mark.parametrize("cache_decoded", [True, False])
def test_the_first_train_batch_leaves_the_actor_without_waiting_for_a_large_block(ray_head, tmp_path, cache_decoded):
    """The first output block holds one transform batch (cached) or one read batch (uncached), not a whole
    steady-size block; every row is still there."""
    from rayseg.datasets.ray_data import _READ_BATCH, _TRANSFORM_BATCH, build_train_stream

    ds = make_tagged_dataset(tmp_path)
    stream = build_train_stream(ds, num_rows=300, seed=0, start_position=7, num_actors=1, actor_num_cpus=0.5,
                                cache_decoded=cache_decoded)
    bundles = list(stream.iter_internal_ref_bundles())
    first = _TRANSFORM_BATCH if cache_decoded else _READ_BATCH
    assert sum(b.num_rows() for b in bundles) == 300
    assert bundles[0].num_rows() <= first < max(b.num_rows() for b in bundles)
