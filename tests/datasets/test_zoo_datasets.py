"""Model-zoo datasets (Cityscapes, ADE20K, Pascal VOC) on tiny generated folders with the real file names,
plus each zoo base config's training pipeline run on one generated sample."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from rayseg.config import load_config
from rayseg.datasets import ADE20KDataset, CityscapesDataset, PascalVOCDataset, build_dataset
from rayseg.errors import ConfigError, DataError
from rayseg.registry import DATASETS

REPO = Path(__file__).resolve().parents[2]
LOAD = [{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations"}]


def write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def image(h=24, w=32, seed=0):
    return np.random.RandomState(seed).randint(0, 255, (h, w, 3), dtype=np.uint8)


def mask(values, h=24, w=32):
    return np.resize(np.array(values, np.uint8), h * w).reshape(h, w)


def cityscapes_tree(root: Path, split="train"):
    """Two cities, MMSeg's suffixes, plus gtFine files that must not be picked up as masks."""
    stems = {"aachen": ["aachen_000000_000019", "aachen_000001_000019"], "bremen": ["bremen_000000_000019"]}
    for city, names in stems.items():
        for i, stem in enumerate(names):
            write(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image(seed=i))
            write(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png", mask([0, 5, 18, 255]))
            write(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", mask([7, 33]))
            write(root / "gtFine" / split / city / f"{stem}_gtFine_color.png", image(seed=9))
    return sorted(s for names in stems.values() for s in names)


def ade_tree(root: Path, split="training", n=3):
    for i in range(n):
        write(root / "images" / split / f"ADE_{split[:5]}_{i:08d}.jpg", image(seed=i))
        write(root / "annotations" / split / f"ADE_{split[:5]}_{i:08d}.png", mask([0, 1, 75, 150]))


def voc_tree(root: Path):
    names = ["2007_000032", "2007_000039", "2008_000002", "2008_000003"]
    for i, name in enumerate(names):
        write(root / "JPEGImages" / f"{name}.jpg", image(seed=i))
        write(root / "SegmentationClass" / f"{name}.png", mask([0, 1, 20, 255]))
        write(root / "SegmentationClassAug" / f"{name}.png", mask([0, 15]))
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("2007_000032\n2008_000002\n")
    (sets / "val.txt").write_text("2007_000039\n")
    (sets / "aug.txt").write_text("2008_000003\n2007_000039\n")
    return names


def test_registered():
    for name in ("CityscapesDataset", "ADE20KDataset", "PascalVOCDataset"):
        assert name in DATASETS


def test_cityscapes_pairs_suffixes_across_city_folders(tmp_path):
    stems = cityscapes_tree(tmp_path)
    ds = CityscapesDataset(pipeline=LOAD, data_root=str(tmp_path), img_dir="leftImg8bit/train",
                           ann_dir="gtFine/train")
    assert ds.num_classes == 19 and len(ds.PALETTE) == 19
    assert ds.CLASSES[0] == "road" and ds.CLASSES[-1] == "bicycle"
    assert ds.PALETTE[0] == [128, 64, 128] and ds.PALETTE[-1] == [119, 11, 32]
    assert len(ds) == 3  # the labelIds / color files are not images
    assert [Path(s["img_path"]).name for s in ds.samples] == [f"{s}_leftImg8bit.png" for s in stems]
    for s in ds.samples:
        stem = Path(s["img_path"]).name[: -len("_leftImg8bit.png")]
        assert Path(s["seg_path"]).name == f"{stem}_gtFine_labelTrainIds.png"
        assert Path(s["seg_path"]).parent.name == Path(s["img_path"]).parent.name  # same city folder
    out = ds.prepare_train(ds.samples[0])
    assert set(np.unique(out["gt_semantic_seg"]).tolist()) == {0, 5, 18, 255}
    assert not ds.reduce_zero_label and ds.label_map is None


def test_ade20k_reduces_zero_label_by_default(tmp_path):
    ade_tree(tmp_path)
    ds = ADE20KDataset(pipeline=LOAD, data_root=str(tmp_path), img_dir="images/training",
                       ann_dir="annotations/training")
    assert ds.num_classes == 150 and len(ds.PALETTE) == 150 and len(set(ds.CLASSES)) == 150
    assert ds.reduce_zero_label and ds.img_suffix == ".jpg" and ds.seg_map_suffix == ".png"
    assert len(ds) == 3
    for s in ds.samples:
        assert Path(s["seg_path"]).stem == Path(s["img_path"]).stem and s["seg_path"].endswith(".png")
    gt = ds.prepare_train(ds.samples[0])["gt_semantic_seg"]
    raw = cv2.imread(ds.samples[0]["seg_path"], cv2.IMREAD_UNCHANGED)
    assert np.array_equal(gt == 255, raw == 0)  # "other" is ignored
    assert np.array_equal(gt[raw > 0], raw[raw > 0] - 1)  # 1..150 -> 0..149
    # the pipeline's own reduce_zero_label (as in MMSeg's ade20k config) does not reduce twice
    twice = ADE20KDataset(pipeline=[LOAD[0], {"type": "LoadAnnotations", "reduce_zero_label": True}],
                          data_root=str(tmp_path), img_dir="images/training", ann_dir="annotations/training")
    assert np.array_equal(twice.prepare_train(twice.samples[0])["gt_semantic_seg"], gt)
    # the evaluation-side ground truth is reduced too
    test = ADE20KDataset(pipeline=LOAD[:1], data_root=str(tmp_path), img_dir="images/training",
                         ann_dir="annotations/training", test_mode=True)
    assert np.array_equal(test[0]["gt_semantic_seg"], gt)
    # without the reduction the raw value 150 is out of range for 150 classes
    off = ADE20KDataset(pipeline=LOAD, data_root=str(tmp_path), img_dir="images/training",
                        ann_dir="annotations/training", reduce_zero_label=False)
    with pytest.raises(DataError, match="outside 0..149"):
        off.prepare_train(off.samples[0])


def test_pascal_voc_uses_split_file(tmp_path):
    voc_tree(tmp_path)
    ds = PascalVOCDataset(pipeline=LOAD, data_root=str(tmp_path), img_dir="JPEGImages",
                          ann_dir="SegmentationClass", split="ImageSets/Segmentation/train.txt")
    assert ds.num_classes == 21 and ds.CLASSES[0] == "background" and ds.CLASSES[-1] == "tvmonitor"
    assert len(ds.PALETTE) == 21
    assert [Path(s["img_path"]).name for s in ds.samples] == ["2007_000032.jpg", "2008_000002.jpg"]
    assert all(Path(s["seg_path"]).parent.name == "SegmentationClass" for s in ds.samples)
    assert all(Path(s["seg_path"]).name == Path(s["img_path"]).stem + ".png" for s in ds.samples)
    gt = ds.prepare_train(ds.samples[0])["gt_semantic_seg"]
    assert set(np.unique(gt).tolist()) == {0, 1, 20, 255}


def test_pascal_voc_aug_concatenates_splits(tmp_path):
    voc_tree(tmp_path)
    ds = PascalVOCDataset(pipeline=LOAD, data_root=str(tmp_path), img_dir="JPEGImages",
                          ann_dir=["SegmentationClass", "SegmentationClassAug"],
                          split=["ImageSets/Segmentation/train.txt", "ImageSets/Segmentation/aug.txt"])
    pairs = [(Path(s["img_path"]).stem, Path(s["seg_path"]).parent.name) for s in ds.samples]
    assert pairs == [("2007_000032", "SegmentationClass"), ("2008_000002", "SegmentationClass"),
                     ("2007_000039", "SegmentationClassAug"), ("2008_000003", "SegmentationClassAug")]
    assert ds.manifest().num_rows == 4


def test_pascal_voc_config_errors(tmp_path):
    voc_tree(tmp_path)
    with pytest.raises(ConfigError, match="split file is required"):
        PascalVOCDataset(pipeline=LOAD, data_root=str(tmp_path), img_dir="JPEGImages", ann_dir="SegmentationClass")
    with pytest.raises(ConfigError, match="one ann_dir per split"):
        PascalVOCDataset(pipeline=LOAD, data_root=str(tmp_path), img_dir="JPEGImages",
                         ann_dir=["SegmentationClass", "SegmentationClassAug", "x"],
                         split=["ImageSets/Segmentation/train.txt", "ImageSets/Segmentation/aug.txt"])
    with pytest.raises(DataError, match="split .* does not exist"):
        PascalVOCDataset(pipeline=LOAD, data_root=str(tmp_path), img_dir="JPEGImages",
                         ann_dir="SegmentationClass", split="ImageSets/Segmentation/nope.txt")


def _with_root(section, root):
    cfg = dict(section)
    cfg["data_root"] = str(root)
    return cfg


@pytest.mark.parametrize("config, make_tree, crop", [
    ("cityscapes.yaml", cityscapes_tree, (512, 1024)),
    ("cityscapes_1024x1024.yaml", cityscapes_tree, (1024, 1024)),
    ("ade20k.yaml", ade_tree, (512, 512)),
    ("pascal_voc12.yaml", voc_tree, (512, 512)),
    ("pascal_voc12_aug.yaml", voc_tree, (512, 512)),
])
def test_zoo_base_configs_build_and_run_their_pipelines(tmp_path, config, make_tree, crop):
    """The base dataset config, pointed at a generated tree, builds train/val sets and runs one sample each."""
    cfg = load_config(REPO / "configs" / "_base_" / "datasets" / config)
    make_tree(tmp_path)
    if make_tree is cityscapes_tree:
        cityscapes_tree(tmp_path, split="val")
    if make_tree is ade_tree:
        ade_tree(tmp_path, split="validation", n=1)
    np.random.seed(0)
    train = build_dataset(_with_root(cfg["data"]["train"], tmp_path))
    out = train[0]
    assert out["img"].shape[:2] == crop and out["gt_semantic_seg"].shape == crop
    val = build_dataset({**_with_root(cfg["data"]["val"], tmp_path), "test_mode": True})
    assert type(val) is type(train) and len(val) >= 1
    res = val[0]
    assert res["gt_semantic_seg"].shape == (24, 32)  # evaluated at the original size
