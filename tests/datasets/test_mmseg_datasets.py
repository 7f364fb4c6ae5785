"""The datasets of MMSegmentation's dataset guide that rayseg added to Cityscapes/ADE20K/VOC/CamVid: Pascal
Context (60 and 59), CHASE_DB1, DRIVE, HRF, STARE, Dark Zurich, Nighttime Driving, LoveDA, Potsdam,
Vaihingen, iSAID and COCO-Stuff (10k, 164k).

Each is built from its base config (``configs/_base_/datasets``, data_root pointed at a tiny generated tree
in MMSeg's post-conversion layout and file names, plus files of the release that must not be paired), then:
every image pairs with the mask MMSeg would load, the class count and palette match, the raw mask values
become the expected labels (``reduce_zero_label`` / ignore), the training pipeline yields one crop, and the
evaluation split gives the ground truth at the original size.
"""
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np
import pytest

from rayseg.config import load_config
from rayseg.datasets import (COCOStuffDataset, ChaseDB1Dataset, CityscapesDataset, DarkZurichDataset,
                             DRIVEDataset, HRFDataset, ISPRSDataset, LoveDADataset, NightDrivingDataset,
                             PascalContextDataset, PascalContextDataset59, PotsdamDataset, STAREDataset,
                             build_dataset, iSAIDDataset)
from rayseg.errors import ConfigError
from rayseg.registry import DATASETS

REPO = Path(__file__).resolve().parents[2]
BASES = REPO / "configs" / "_base_" / "datasets"
H, W = 24, 32
LOAD = [{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations"}]


def write(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


def image(seed=0):
    return np.random.RandomState(seed).randint(0, 255, (H, W, 3), dtype=np.uint8)


def mask(values):
    return np.resize(np.array(values, np.uint8), H * W).reshape(H, W)


def pairs_tree(root: Path, pairs: List[Tuple[str, str]], values, decoys=()) -> List[Tuple[str, str]]:
    """Write image/mask pairs (paths relative to root) and decoy files that must stay unpaired."""
    for i, (img, seg) in enumerate(pairs):
        write(root / img, image(seed=i))
        write(root / seg, mask(values))
    for decoy in decoys:
        write(root / decoy, mask([1]))
    return pairs


# ----------------------------------------------------------------------------------- trees (MMSeg layouts)
def pascal_context_tree(root: Path, split: str, values) -> List[Tuple[str, str]]:
    names = {"train": ["2008_000002", "2008_000003"], "val": ["2008_000008"]}
    sets = root / "ImageSets" / "SegmentationContext"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / f"{split}.txt").write_text("".join(n + "\n" for n in names[split]))
    # an image of the other split sits in the same folder: the split file decides
    write(root / "JPEGImages" / "2010_000001.jpg", image(seed=9))
    return pairs_tree(root, [(f"JPEGImages/{n}.jpg", f"SegmentationClassContext/{n}.png") for n in names[split]],
                      values)


def vessel_tree(img_names: Dict[str, List[str]], seg_suffix: str, decoy_suffixes=()):
    """images/{training,validation}/<name>.png with annotations/.../<name><seg_suffix> (+ other observers)."""
    def make(root: Path, split: str, values) -> List[Tuple[str, str]]:
        folder = {"train": "training", "val": "validation"}[split]
        names = img_names[split]
        decoys = [f"annotations/{folder}/{n}{s}" for n in names for s in decoy_suffixes]
        return pairs_tree(root, [(f"images/{folder}/{n}.png", f"annotations/{folder}/{n}{seg_suffix}")
                                 for n in names], values, decoys)
    return make


drive_tree = vessel_tree({"train": ["21", "22"], "val": ["01"]}, "_manual1.png", ["_manual2.png"])
chase_tree = vessel_tree({"train": ["Image_01L", "Image_01R"], "val": ["Image_11L"]}, "_1stHO.png", ["_2ndHO.png"])
stare_tree = vessel_tree({"train": ["im0001", "im0002"], "val": ["im0081"]}, ".ah.png", [".vk.png"])
hrf_tree = vessel_tree({"train": ["01_dr", "01_g"], "val": ["05_h"]}, ".png")


def remote_tree(names: Dict[str, List[str]], seg_suffix: str = ".png"):
    """img_dir/{train,val}/<name>.png with ann_dir/{train,val}/<name><seg_suffix>."""
    def make(root: Path, split: str, values) -> List[Tuple[str, str]]:
        return pairs_tree(root, [(f"img_dir/{split}/{n}.png", f"ann_dir/{split}/{n}{seg_suffix}")
                                 for n in names[split]], values)
    return make


loveda_tree = remote_tree({"train": ["0", "1"], "val": ["2522"]})
potsdam_tree = remote_tree({"train": ["2_10_0_0_512_512", "2_10_0_512_512_1024"], "val": ["2_13_0_0_512_512"]})
vaihingen_tree = remote_tree({"train": ["area1_0_0_512_512", "area1_0_512_512_1024"],
                              "val": ["area2_0_0_512_512"]})
isaid_tree = remote_tree({"train": ["P0000_0_896_0_896", "P0000_0_896_512_1408"], "val": ["P0003_0_896_0_896"]},
                         "_instance_color_RGB.png")


def coco_tree(train: str, val: str, prefix: str):
    """images/<split>/<name>.jpg with annotations/<split>/<name>_labelTrainIds.png (+ the raw label maps)."""
    def make(root: Path, split: str, values) -> List[Tuple[str, str]]:
        folder = {"train": train, "val": val}[split]
        names = [f"{prefix}{folder}_{i:012d}" if prefix else f"{i:012d}" for i in
                 ([9, 25] if split == "train" else [139])]
        return pairs_tree(root, [(f"images/{folder}/{n}.jpg", f"annotations/{folder}/{n}_labelTrainIds.png")
                                 for n in names], values, [f"annotations/{folder}/{n}.png" for n in names])
    return make


coco10k_tree = coco_tree("train2014", "test2014", "COCO_")
coco164k_tree = coco_tree("train2017", "val2017", "")


# ----------------------------------------------------------------------------------- label conventions
def same(v):
    return v


def reduced(v):
    return 255 if v in (0, 255) else v - 1


@dataclass
class Case:
    config: str
    make_tree: Callable
    cls: type
    num_classes: int
    crop: Tuple[int, int]
    raw: List[int]  # mask values written
    label: Callable[[int], int]  # raw value -> label
    first: Optional[str] = None  # CLASSES[0]
    repeat: Optional[int] = None  # RepeatDataset times around the training set

    @property
    def id(self) -> str:
        return self.config[:-5]


CASES = [
    Case("pascal_context.yaml", pascal_context_tree, PascalContextDataset, 60, (480, 480), [0, 1, 59, 255], same,
         "background"),
    Case("pascal_context_59.yaml", pascal_context_tree, PascalContextDataset59, 59, (480, 480), [0, 1, 59, 255],
         reduced, "aeroplane"),
    Case("drive.yaml", drive_tree, DRIVEDataset, 2, (64, 64), [0, 1], same, "background", 40000),
    Case("chase_db1.yaml", chase_tree, ChaseDB1Dataset, 2, (128, 128), [0, 1], same, "background", 40000),
    Case("stare.yaml", stare_tree, STAREDataset, 2, (128, 128), [0, 1], same, "background", 40000),
    Case("hrf.yaml", hrf_tree, HRFDataset, 2, (256, 256), [0, 1], same, "background", 40000),
    Case("loveda.yaml", loveda_tree, LoveDADataset, 7, (512, 512), [0, 1, 4, 7], reduced, "background"),
    Case("potsdam.yaml", potsdam_tree, PotsdamDataset, 6, (512, 512), [0, 1, 6, 255], reduced,
         "impervious_surface"),
    Case("vaihingen.yaml", vaihingen_tree, ISPRSDataset, 6, (512, 512), [0, 1, 6, 255], reduced,
         "impervious_surface"),
    Case("isaid.yaml", isaid_tree, iSAIDDataset, 16, (896, 896), [0, 1, 15, 255], same, "background"),
    Case("coco-stuff10k.yaml", coco10k_tree, COCOStuffDataset, 171, (512, 512), [0, 1, 171], reduced, "person"),
    Case("coco-stuff164k.yaml", coco164k_tree, COCOStuffDataset, 171, (512, 512), [0, 170, 255], same, "person"),
]


def _point_at(section: dict, root: Path) -> dict:
    """A copy of a dataset section with data_root set (on the inner dataset of a wrapper)."""
    section = dict(section)
    if isinstance(section.get("dataset"), dict):
        section["dataset"] = _point_at(section["dataset"], root)
    else:
        section["data_root"] = str(root)
    return section


def _inner(section: dict) -> dict:
    while isinstance(section.get("dataset"), dict):
        section = section["dataset"]
    return section


def _expected(case: Case) -> np.ndarray:
    return np.vectorize(case.label)(mask(case.raw)).astype(np.uint8)


def test_registered_and_declared_as_mmseg():
    for cls in (PascalContextDataset, PascalContextDataset59, ChaseDB1Dataset, DRIVEDataset, HRFDataset,
                STAREDataset, DarkZurichDataset, NightDrivingDataset, LoveDADataset, PotsdamDataset, ISPRSDataset,
                iSAIDDataset, COCOStuffDataset):
        assert DATASETS.get(cls.__name__) is cls
        assert len(cls.CLASSES) == len(cls.PALETTE) == len(set(cls.CLASSES))
    assert PascalContextDataset59.CLASSES == PascalContextDataset.CLASSES[1:]
    assert PascalContextDataset59.PALETTE == PascalContextDataset.PALETTE[1:]
    assert (ChaseDB1Dataset.SEG_MAP_SUFFIX, DRIVEDataset.SEG_MAP_SUFFIX, STAREDataset.SEG_MAP_SUFFIX,
            HRFDataset.SEG_MAP_SUFFIX) == ("_1stHO.png", "_manual1.png", ".ah.png", ".png")
    assert DarkZurichDataset.CLASSES == NightDrivingDataset.CLASSES == CityscapesDataset.CLASSES
    assert PotsdamDataset.CLASSES == ISPRSDataset.CLASSES and PotsdamDataset.REDUCE_ZERO_LABEL
    assert not iSAIDDataset.REDUCE_ZERO_LABEL and iSAIDDataset.PALETTE[15] == [0, 100, 155]
    assert COCOStuffDataset.CLASSES[-1] == "wood" and not COCOStuffDataset.REDUCE_ZERO_LABEL


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_base_config_pairs_labels_and_pipelines(tmp_path, case):
    cfg = load_config(BASES / case.config)["data"]
    train_pairs = case.make_tree(tmp_path, "train", case.raw)
    val_pairs = case.make_tree(tmp_path, "val", case.raw)

    train = build_dataset(_point_at(cfg["train"], tmp_path))
    inner = train.dataset if case.repeat else train
    if case.repeat:  # MMSeg's RepeatDataset(times=40000) around the few vessel images
        assert type(train).__name__ == "RepeatDataset" and len(train) == case.repeat * len(inner)
    assert type(inner) is case.cls
    assert inner.num_classes == case.num_classes and len(inner.PALETTE) == case.num_classes
    assert inner.CLASSES[0] == case.first
    # pairing: exactly MMSeg's pairs (other observers, raw label maps, other splits' images are not picked up)
    got = sorted((s["img_path"], s["seg_path"]) for s in inner.samples)
    assert got == sorted((str(tmp_path / i), str(tmp_path / s)) for i, s in train_pairs)

    # label conventions, on the raw masks through LoadAnnotations only
    section = dict(_inner(_point_at(cfg["train"], tmp_path)), pipeline=LOAD)
    gt = build_dataset(section).prepare_train(inner.samples[0])["gt_semantic_seg"]
    assert np.array_equal(gt, _expected(case))

    np.random.seed(0)
    out = train[0]  # the config's full training pipeline
    assert tuple(out["img"].shape[:2]) == case.crop and tuple(out["gt_semantic_seg"].shape) == case.crop
    assert set(np.unique(out["gt_semantic_seg"]).tolist()) <= set(np.unique(_expected(case)).tolist()) | {255}

    for split in ("val", "test"):
        ev = build_dataset({**_point_at(cfg[split], tmp_path), "test_mode": True})
        assert type(ev) is case.cls
        assert [(s["img_path"], s["seg_path"]) for s in ev.samples] == \
            [(str(tmp_path / i), str(tmp_path / s)) for i, s in val_pairs]
        res = ev[0]
        assert np.array_equal(res["gt_semantic_seg"], _expected(case))  # at the original size


def test_pascal_context_needs_a_split(tmp_path):
    pascal_context_tree(tmp_path, "train", [0])
    for cls in (PascalContextDataset, PascalContextDataset59):
        with pytest.raises(ConfigError, match="split file is required"):
            cls(pipeline=LOAD, data_root=str(tmp_path), img_dir="JPEGImages", ann_dir="SegmentationClassContext")


def test_coco_stuff10k_reduces_once(tmp_path):
    """The 10k config sets reduce_zero_label on the dataset and on LoadAnnotations (as MMSeg): applied once."""
    coco10k_tree(tmp_path, "train", [0, 1, 171])
    cfg = load_config(BASES / "coco-stuff10k.yaml")["data"]["train"]
    assert cfg["reduce_zero_label"] is True and cfg["pipeline"][1] == {"type": "LoadAnnotations",
                                                                      "reduce_zero_label": True}
    ds = build_dataset({**_point_at(cfg, tmp_path), "pipeline": cfg["pipeline"][:2]})
    assert set(np.unique(ds[0]["gt_semantic_seg"]).tolist()) == {255, 0, 170}


# ----------------------------------------------------------------------------------- night-time test sets
def dark_zurich_tree(root: Path) -> List[Tuple[str, str]]:
    seq = "rgb_anon/val/night/GOPR0356"
    stems = ["GOPR0356_frame_000321", "GOPR0356_frame_000322"]
    decoys = [f"gt/val/night/GOPR0356/{s}_gt_{kind}.png" for s in stems for kind in ("labelIds", "invGray")]
    return pairs_tree(root, [(f"{seq}/{s}_rgb_anon.png", f"gt/val/night/GOPR0356/{s}_gt_labelTrainIds.png")
                             for s in stems], [0, 5, 18, 255], decoys)


def night_driving_tree(root: Path) -> List[Tuple[str, str]]:
    stems = ["Zurich_00_00_1440_leftImg8bit", "Zurich_01_00_2015_leftImg8bit"]
    stems = [s[: -len("_leftImg8bit")] for s in stems]
    gt = "gtCoarse_daytime_trainvaltest/test/night"
    decoys = [f"{gt}/{s}_gtCoarse_{kind}.png" for s in stems for kind in ("labelIds", "color")]
    return pairs_tree(root, [(f"leftImg8bit/test/night/{s}_leftImg8bit.png", f"{gt}/{s}_gtCoarse_labelTrainIds.png")
                             for s in stems], [0, 5, 18, 255], decoys)


@pytest.mark.parametrize("config, make_tree, cls", [
    ("dark_zurich.yaml", dark_zurich_tree, DarkZurichDataset),
    ("night_driving.yaml", night_driving_tree, NightDrivingDataset),
], ids=["dark_zurich", "night_driving"])
def test_night_test_sets(tmp_path, config, make_tree, cls):
    """Cityscapes training (the inherited train/val) and a night-time test split with Cityscapes' classes."""
    cfg = load_config(BASES / config)["data"]
    assert cfg["train"]["type"] == cfg["val"]["type"] == "CityscapesDataset"
    pairs = make_tree(tmp_path)
    ds = build_dataset({**_point_at(cfg["test"], tmp_path), "test_mode": True})
    assert type(ds) is cls and ds.num_classes == 19 and ds.PALETTE == CityscapesDataset.PALETTE
    assert [(s["img_path"], s["seg_path"]) for s in ds.samples] == \
        [(str(tmp_path / i), str(tmp_path / s)) for i, s in pairs]
    res = ds[0]
    assert res["gt_semantic_seg"].shape == (H, W)
    assert set(np.unique(res["gt_semantic_seg"]).tolist()) == {0, 5, 18, 255}
    img = res["img"]
    img = img[0] if isinstance(img, list) else img
    assert tuple(img.shape[:2]) == (1080, 1440)  # 24×32 rescaled to fit 1920×1080, ratio kept
