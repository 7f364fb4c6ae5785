"""RepeatDataset, ConcatDataset and MultiImageMixDataset: samples, per-part label conventions, repeat counts,
mosaic placement, agreement errors, the config helpers and the MMSeg translation; one slow test streams (and
trains on) a mixed dataset through Ray Data."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from rayseg.datasets import build_dataset
from rayseg.datasets.dataset_wrappers import (PART_KEY, dataset_pipeline_cfg, leaf_dataset_cfgs,
                                              sample_index, strip_normalize)
from rayseg.errors import ConfigError

CLASSES = ["sky", "road", "car"]
LOAD = [{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations"}]
NORM = {"type": "Normalize", "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375], "to_rgb": True}


def write_set(root: Path, n: int, raw_label, size=(16, 16), img_suffix=".png", seg_suffix=".png"):
    """``n`` images whose pixels all have the blue value 10·i + 1 and masks of the constant raw label
    ``raw_label(i)``, in root/img and root/ann."""
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    for i in range(n):
        cv2.imwrite(str(root / "img" / f"s{i}{img_suffix}"), np.full(size + (3,), 10 * i + 1, np.uint8))
        cv2.imwrite(str(root / "ann" / f"s{i}{seg_suffix}"), np.full(size, raw_label(i), np.uint8))
    return root


@pytest.fixture
def two_roots(tmp_path):
    """Two datasets with different layouts and label conventions that both mean labels 0..2:
    ``a`` stores them as is (CustomDataset), ``b`` stores 1..3 with 0 = unlabelled (reduce_zero_label) and its
    masks with another suffix."""
    a = write_set(tmp_path / "a", 3, lambda i: i % 3)
    b = write_set(tmp_path / "b", 2, lambda i: i + 1, seg_suffix="_lbl.png")
    cfg_a = {"type": "CustomDataset", "data_root": str(a), "img_dir": "img", "ann_dir": "ann", "img_suffix": ".png",
             "classes": CLASSES, "pipeline": LOAD + [NORM]}
    cfg_b = {"type": "CustomDataset", "data_root": str(b), "img_dir": "img", "ann_dir": "ann", "img_suffix": ".png",
             "seg_map_suffix": "_lbl.png", "reduce_zero_label": True, "classes": CLASSES,
             "pipeline": LOAD + [{"type": "RandomFlip", "prob": 0.0}, NORM]}
    return cfg_a, cfg_b


def labels_of(dataset):
    return [int(np.unique(dataset.prepare_train(dict(s))["gt_semantic_seg"])[0]) for s in dataset.samples]


def test_concat_prepares_each_sample_with_its_own_dataset(two_roots):
    cfg_a, cfg_b = two_roots
    ds = build_dataset({"type": "ConcatDataset", "datasets": [cfg_a, cfg_b]})
    assert len(ds) == 5 and ds.cumulative_sizes == [3, 5]
    assert [s[PART_KEY] for s in ds.samples] == [0, 0, 0, 1, 1]
    assert [Path(s["seg_path"]).name for s in ds.samples][3:] == ["s0_lbl.png", "s1_lbl.png"]
    # b's raw 1, 2 become 0, 1 by its own reduce_zero_label; a's labels are taken as they are.
    assert labels_of(ds) == [0, 1, 2, 0, 1]
    assert tuple(ds.CLASSES) == tuple(CLASSES) and ds.num_classes == 3 and ds.ignore_index == 255
    assert ds.separate_eval is True and ds.part_of(4) == 1
    assert int(strip_normalize(ds)[4]["img"][0, 0, 0]) == 11  # MMSeg's dataset[i]: b's second image
    test = ds.prepare_test(dict(ds.samples[3]))
    assert test["gt_semantic_seg"].max() == 0 and test["img"].shape == (16, 16, 3)
    with pytest.raises(ConfigError, match="has no 'concat_part' tag"):
        ds.prepare_train({"img_path": ds.samples[0]["img_path"]})


def test_concat_parts_must_agree(two_roots):
    cfg_a, cfg_b = two_roots
    with pytest.raises(ConfigError, match=r"datasets.1 \(CustomDataset\) has classes \['sky', 'road'\]"):
        build_dataset({"type": "ConcatDataset", "datasets": [cfg_a, {**cfg_b, "classes": CLASSES[:2]}]})
    other_norm = {**cfg_b, "pipeline": LOAD + [{**NORM, "mean": [0, 0, 0]}]}
    with pytest.raises(ConfigError, match="same Normalize step"):
        build_dataset({"type": "ConcatDataset", "datasets": [cfg_a, other_norm]})
    with pytest.raises(ConfigError, match="ignore_index 0 but datasets.0 has 255"):
        build_dataset({"type": "ConcatDataset", "datasets": [cfg_a, {**cfg_b, "ignore_index": 0}]})
    with pytest.raises(ConfigError, match="non-empty list"):
        build_dataset({"type": "ConcatDataset", "datasets": cfg_a})


def test_repeat_length_order_and_weights_in_a_concat(two_roots):
    cfg_a, cfg_b = two_roots
    rep = build_dataset({"type": "RepeatDataset", "times": 40000, "dataset": cfg_a})
    assert len(rep) == 120000 and len(rep.samples) == 3  # the files are listed once
    assert [sample_index(rep, i) for i in (0, 1, 2, 3, 4, 119999)] == [0, 1, 2, 0, 1, 2]
    assert int(strip_normalize(rep)[4]["img"][0, 0, 0]) == 11 and rep.CLASSES == tuple(CLASSES)
    mixed = build_dataset({"type": "ConcatDataset",
                           "datasets": [{"type": "RepeatDataset", "times": 3, "dataset": cfg_a}, cfg_b]})
    assert len(mixed) == 3 * 3 + 2
    # a's samples three times over: drawn three times as often as b's, as MMSeg's sampler would.
    assert [s[PART_KEY] for s in mixed.samples] == [0] * 9 + [1] * 2
    assert sample_index(mixed, 10) == 10 and sample_index(mixed, 4) == 1
    both = build_dataset({"type": "ConcatDataset", "datasets": [
        {"type": "RepeatDataset", "times": 4000, "dataset": cfg_a},
        {"type": "RepeatDataset", "times": 2000, "dataset": cfg_b}]})
    assert len(both.samples) == 2 * 3 + 2  # proportions kept, common factor removed
    with pytest.raises(ConfigError, match="times must be a positive int"):
        build_dataset({"type": "RepeatDataset", "times": 0, "dataset": cfg_a})


def mix_cfg(inner, prob=1.0, skip=None, pad=False):
    cfg = {"type": "MultiImageMixDataset", "dataset": inner,
           "pipeline": [{"type": "RandomMosaic", "prob": prob, "img_scale": [16, 16],
                         "center_ratio_range": [1.0, 1.0]},
                        {"type": "RandomFlip", "prob": 0.0}, NORM]}
    if pad:  # rows that were not mosaics get the mosaic's size, so batches stack
        cfg["pipeline"].append({"type": "Pad", "size": [32, 32], "seg_pad_val": 255})
    if skip is not None:
        cfg["skip_type_keys"] = skip
    return cfg


def test_mosaic_of_a_concat_places_four_labelled_images(two_roots):
    cfg_a, cfg_b = two_roots
    inner = {"type": "ConcatDataset", "datasets": [{**cfg_a, "pipeline": LOAD}, {**cfg_b, "pipeline": LOAD}]}
    ds = build_dataset(mix_cfg(inner))
    assert len(ds) == 5 and ds.pipeline_cfg[-1] == NORM and ds.pipeline_types[0] == "RandomMosaic"
    strip_normalize(ds)
    np.random.seed(0)
    picks = ds.pipeline[0].get_indexes(ds.dataset)
    np.random.seed(0)
    out = ds.prepare_train(dict(ds.samples[1]))
    img, seg = out["img"], out["gt_semantic_seg"]
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8 and seg.shape == (32, 32)
    quadrants = [(slice(0, 16), slice(0, 16)), (slice(0, 16), slice(16, 32)), (slice(16, 32), slice(0, 16)),
                 (slice(16, 32), slice(16, 32))]
    expected = [labels_of(ds.dataset)[i] for i in [1] + picks]
    for (ys, xs), label, index in zip(quadrants, expected, [1] + picks):
        assert (seg[ys, xs] == label).all()
        blue = 10 * int(Path(ds.samples[index]["img_path"]).stem[1:]) + 1
        assert (img[ys, xs, 0] == blue).all()  # each quadrant's image is its own sample's
    assert "mix_results" not in out
    np.random.seed(0)
    assert np.array_equal(ds.prepare_train(dict(ds.samples[1]))["img"], img)  # seeded: the same mosaic


def test_mix_dataset_skip_type_keys_and_errors(two_roots):
    cfg_a, _ = two_roots
    ds = build_dataset(mix_cfg({**cfg_a, "pipeline": LOAD}, skip=["RandomMosaic"]))
    strip_normalize(ds)
    assert ds.prepare_train(dict(ds.samples[0]))["img"].shape == (16, 16, 3)
    ds.update_skip_type_keys([])
    assert ds.prepare_train(dict(ds.samples[0]))["img"].shape == (32, 32, 3)
    with pytest.raises(ConfigError, match="MultiImageMixDataset.pipeline.0: expected a step config dict"):
        build_dataset({"type": "MultiImageMixDataset", "dataset": cfg_a, "pipeline": ["RandomMosaic"]})
    with pytest.raises(ConfigError, match="skip_type_keys must be a list"):
        build_dataset(mix_cfg(cfg_a, skip="RandomMosaic"))


def test_strip_normalize_reaches_every_part(two_roots):
    from rayseg.datasets.ray_data import _strip_normalize

    cfg_a, cfg_b = two_roots
    ds = _strip_normalize(build_dataset({"type": "RepeatDataset", "times": 2,
                                         "dataset": {"type": "ConcatDataset", "datasets": [cfg_a, cfg_b]}}))
    for part in ds.parts():
        assert "Normalize" not in repr(part.pipeline)
        assert part.prepare_train(dict(part.samples[0]))["img"].dtype == np.uint8
    assert any(c["type"] == "Normalize" for c in ds.pipeline_cfg)  # still there for the device


def test_config_helpers_see_through_wrappers(two_roots):
    cfg_a, cfg_b = two_roots
    cfg = {"type": "RepeatDataset", "times": 2,
           "dataset": mix_cfg({"type": "ConcatDataset", "datasets": [{**cfg_a, "pipeline": LOAD}, cfg_b]})}
    assert [w for w, _ in leaf_dataset_cfgs(cfg)] == ["data.train.dataset.dataset.datasets.0",
                                                      "data.train.dataset.dataset.datasets.1"]
    pipeline = dataset_pipeline_cfg(cfg)
    assert [s["type"] for s in pipeline] == ["LoadImageFromFile", "LoadAnnotations", "RandomMosaic", "RandomFlip",
                                             "Normalize"]
    assert dataset_pipeline_cfg(cfg_a) == cfg_a["pipeline"]
    with pytest.raises(ConfigError, match="data.train.datasets: expected a non-empty list"):
        leaf_dataset_cfgs({"type": "ConcatDataset", "datasets": []})


def test_mmseg_1x_wrappers_are_translated():
    from rayseg.mmseg_config.dataset_1x import translate_dataset
    from rayseg.mmseg_config.report import Report

    def ds(kind, root, ann="ann_dir", **kw):
        return dict(type=kind, data_root=root, data_prefix=dict(img_path="img_dir", seg_map_path=ann),
                    pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")], **kw)

    report = Report()
    norm = {"type": "Normalize", "mean": [0, 0, 0], "std": [1, 1, 1], "to_rgb": True}
    concat = dict(type="ConcatDataset", datasets=[ds("CityscapesDataset", "a"), ds("CamVidDataset", "b")])
    out = translate_dataset(dict(type="RepeatDataset", times=5, dataset=concat), "d", report, False, norm, None)
    assert out["type"] == "RepeatDataset" and out["times"] == 5
    parts = out["dataset"]["datasets"]
    assert out["dataset"]["type"] == "ConcatDataset" and [p["type"] for p in parts] == ["CityscapesDataset",
                                                                                        "CamVidDataset"]
    assert parts[0]["pipeline"][-1] == norm and report.untranslatable == []
    mix = dict(type="MultiImageMixDataset", dataset=ds("CamVidDataset", "b"), lazy_init=False,
               pipeline=[dict(type="RandomMosaic", prob=1, img_scale=(64, 64)), dict(type="PackSegInputs")])
    out = translate_dataset(mix, "d", report, False, norm, None)
    assert [s["type"] for s in out["dataset"]["pipeline"]] == ["LoadImageFromFile", "LoadAnnotations"]
    assert [s["type"] for s in out["pipeline"]] == ["RandomMosaic", "Normalize"]
    assert [e.path for e in report.ignored] == ["d.lazy_init"]
    # Splits of one dataset still become one dataset with lists, as 0.x writes VOC + aug.
    voc = dict(type="ConcatDataset", datasets=[ds("PascalVOCDataset", "v", ann_file="t.txt"),
                                               ds("PascalVOCDataset", "v", ann="aug", ann_file="a.txt")])
    out = translate_dataset(voc, "d", report, False, norm, None)
    assert out["type"] == "PascalVOCDataset" and out["split"] == ["t.txt", "a.txt"]


def test_mmseg_0x_repeat_dataset_is_kept():
    from rayseg.config import SCHEMA
    from rayseg.mmseg_config.keys import take_0x
    from rayseg.mmseg_config.report import Report

    cfg = {"data": {"train": {"type": "RepeatDataset", "times": 40000, "dataset": {"type": "DRIVEDataset"}}}}
    out, _ = take_0x(cfg, SCHEMA, Report())
    assert out["data"]["train"]["type"] == "RepeatDataset" and out["data"]["train"]["times"] == 40000


@pytest.mark.slow
def test_mixed_stream_through_ray_data_is_reproducible(ray_head, two_roots):
    from rayseg.datasets.ray_data import build_train_stream

    cfg_a, cfg_b = two_roots
    inner = {"type": "ConcatDataset", "datasets": [{**cfg_a, "pipeline": LOAD}, {**cfg_b, "pipeline": LOAD}]}
    runs = []
    for _ in range(2):
        ds = build_dataset({"type": "RepeatDataset", "times": 10, "dataset": mix_cfg(inner, prob=0.5, pad=True)})
        rows = build_train_stream(ds, num_rows=12, seed=3, num_actors=1, actor_num_cpus=0.5).take_all()
        runs.append(rows)
    rows = runs[0]
    assert len(rows) == 12 and {r["img"].shape for r in rows} == {(32, 32, 3)} and rows[0]["img"].dtype == np.uint8
    assert all(set(np.unique(r["gt_semantic_seg"])) <= {0, 1, 2, 255} for r in rows)
    assert any((r["gt_semantic_seg"] == 255).any() for r in rows)  # prob 0.5: some rows are not mosaics (padded)
    for a, b in zip(*runs):
        assert np.array_equal(a["img"], b["img"]) and np.array_equal(a["gt_semantic_seg"], b["gt_semantic_seg"])


@pytest.mark.slow
def test_training_on_a_mosaic_of_concatenated_datasets(ray_head, demo_data, tmp_path):
    """A few iterations of the tiny model on MultiImageMix(Concat(demo, demo relabelled)) through the real run.
    Needs the run spec to see through wrappers (RunSpec.data.train_pipeline, spec.check, spec.resolve)."""
    import shutil

    from conftest import REPO_ROOT, logged_iters
    from rayseg.config import load_config
    from rayseg.engine.trainer import train

    # The second part: the demo images, masks stored as label + 1 (0 unlabelled), other folder names.
    other = tmp_path / "other"
    shutil.copytree(demo_data / "img_dir" / "train", other / "images")
    (other / "labels").mkdir()
    for mask in (demo_data / "ann_dir" / "train").iterdir():
        seg = cv2.imread(str(mask), cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(other / "labels" / mask.name), (seg + 1).astype(np.uint8))
    tiny = str(REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml")
    cfg = load_config(tiny, [f"data.{s}.data_root={demo_data}" for s in ("train", "val", "test")]
                      + [f"mlflow.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}", "runner.max_iters=2",
                         "evaluation.interval=2", "checkpoint_config.interval=2"])
    demo = {k: v for k, v in cfg["data"]["train"].items() if k != "pipeline"}
    relabelled = {**demo, "data_root": str(other), "img_dir": "images", "ann_dir": "labels", "reduce_zero_label": True}
    cfg["data"]["train"] = {
        "type": "MultiImageMixDataset",
        "dataset": {"type": "ConcatDataset", "datasets": [{**demo, "pipeline": LOAD}, {**relabelled, "pipeline": LOAD}]},
        "pipeline": [{"type": "RandomMosaic", "prob": 0.5, "img_scale": [32, 32]},
                     {"type": "RandomCrop", "crop_size": [48, 48]}, {"type": "RandomRotate", "prob": 0.5, "degree": 10},
                     NORM, {"type": "Pad", "size": [48, 48], "seg_pad_val": 255}]}
    summary = train(cfg, work_dir=str(tmp_path / "work"), show_progress=False)
    assert Path(summary["latest"]).is_file() and 2 in logged_iters(Path(summary["log"]))
