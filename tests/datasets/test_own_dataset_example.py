"""The "Train on your own data" example of docs/datasets.md: configs/custom/fcn_r18-slim-d8_my_dataset.yaml on a
tiny dataset generated in the documented layout resolves, lists, and builds its pipelines (no Ray)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rayseg.config import load_config
from rayseg.errors import DataError
from rayseg.spec.check import check_run
from rayseg.spec.resolve import resolve_run

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "custom" / "fcn_r18-slim-d8_my_dataset.yaml"
PALETTE = [[0, 0, 0], [128, 64, 128], [0, 0, 142], [220, 20, 60]]
COUNTS = {"train": 4, "val": 2}


def make_my_dataset(root: Path) -> Path:
    """data/my_dataset as the docs describe it: JPEG images, PNG masks of class indices (0-3, 255 ignored);
    every second mask is a palette PNG, which must be read as its indices."""
    rng = np.random.default_rng(0)
    for split, n in COUNTS.items():
        (root / "img_dir" / split).mkdir(parents=True)
        (root / "ann_dir" / split).mkdir(parents=True)
        for i in range(n):
            name = f"frame_{i:03d}"
            Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
                root / "img_dir" / split / f"{name}.jpg")
            mask = rng.integers(0, 4, (48, 64), dtype=np.uint8)
            mask[:4] = 255  # unlabelled pixels
            im = Image.fromarray(mask)
            if i % 2:
                im = im.convert("P")
                im.putpalette(sum(PALETTE, []) + [0] * (3 * 252))
            im.save(root / "ann_dir" / split / f"{name}.png")
    return root


def roots(root: Path):
    return [f"data.{split}.data_root={root}" for split in ("train", "val", "test")]


def test_example_config_resolves_lists_and_builds(tmp_path):
    root = make_my_dataset(tmp_path / "my_dataset")
    spec = resolve_run(load_config(str(CONFIG), roots(root)), work_dir=str(tmp_path / "work"),
                       config_path=str(CONFIG))
    checked = check_run(spec, list_data=True)  # what jobs/train.py checks before Ray starts
    train, val = checked.train_set, checked.val_set
    assert (len(train), len(val)) == (COUNTS["train"], COUNTS["val"])
    assert train.CLASSES == val.CLASSES == ("background", "road", "car", "person")
    assert train.PALETTE == PALETTE
    assert not train.reduce_zero_label and train.ignore_index == 255
    assert spec.config["model"]["decode_head"]["num_classes"] == len(train.CLASSES)
    for sample in train.samples:
        assert Path(sample["seg_path"]).name == Path(sample["img_path"]).stem + ".png"
        out = train.prepare_train(sample)
        assert out["img"].shape == (256, 256, 3) and out["gt_semantic_seg"].shape == (256, 256)
        assert set(np.unique(out["gt_semantic_seg"])) <= {0, 1, 2, 3, 255}
    # A palette mask gives its indices, not colours: the ground truth equals the raw index array.
    sample = val.samples[1]
    out = val.prepare_test(sample)
    assert np.array_equal(out["gt_semantic_seg"], np.asarray(Image.open(sample["seg_path"])))
    assert Image.open(sample["seg_path"]).mode == "P"
    assert out["img"].shape == (480, 640, 3)  # MultiScaleFlipAug's img_scale, aspect ratio kept


def test_print_config_check_data_in_the_documented_layout(tmp_path):
    """The command the docs give, run where data/my_dataset is (the config's own data_root)."""
    make_my_dataset(tmp_path / "data" / "my_dataset")
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "print_config.py"), str(CONFIG), "--check-data",
                           "--work-dir", str(tmp_path / "work")], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "data_root: data/my_dataset" in proc.stdout


def test_a_missing_mask_is_named(tmp_path):
    root = make_my_dataset(tmp_path / "my_dataset")
    (root / "ann_dir" / "val" / "frame_001.png").unlink()
    spec = resolve_run(load_config(str(CONFIG), roots(root)), work_dir=str(tmp_path / "work"),
                       config_path=str(CONFIG))
    missing = r"1 image\(s\) have no mask: .*frame_001\.jpg \(expected mask .*frame_001\.png\)"
    with pytest.raises(DataError, match=missing):
        check_run(spec, list_data=True)
