"""Datasets: listing, manifest, loading checks and error messages, on tiny generated PNGs."""
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from rayseg.datasets import CamVidDataset, CustomDataset, build_dataset
from rayseg.errors import ConfigError, DataError

LOAD = [{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations"}]
CLASSES = ("a", "b", "c", "d")
CAMVID = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "camvid"


def write_pair(root, name, h=8, w=10, values=(0, 1, 2, 3), mask_hw=None, split="", suffix=".png"):
    img_dir, ann_dir = Path(root, "img", split), Path(root, "ann", split)
    img_dir.mkdir(parents=True, exist_ok=True)
    ann_dir.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w, 3), 50, np.uint8)
    img[:, :, 2] = np.arange(w, dtype=np.uint8)[None, :]
    mh, mw = mask_hw or (h, w)
    mask = np.resize(np.array(values, np.uint8), mh * mw).reshape(mh, mw)
    assert cv2.imwrite(str(img_dir / (name + suffix)), img)
    assert cv2.imwrite(str(ann_dir / (name + ".png")), mask)
    return img, mask


def make(root, pipeline=LOAD, cls=CustomDataset, **kw):
    kw.setdefault("classes", CLASSES)
    kw.setdefault("img_suffix", ".png")
    return cls(pipeline=pipeline, data_root=str(root), img_dir="img", ann_dir="ann", **kw)


def test_samples_and_manifest_pair_images_with_masks(tmp_path):
    for name in ("b", "a", "c"):
        write_pair(tmp_path, name)
    ds = make(tmp_path, label_map={3: 255})
    assert len(ds) == 3
    stems = [Path(s["img_path"]).stem for s in ds.samples]
    assert stems == ["a", "b", "c"]
    for s in ds.samples:
        assert os.path.isabs(s["img_path"]) and Path(s["seg_path"]).name == Path(s["img_path"]).stem + ".png"
        assert Path(s["seg_path"]).parent == tmp_path / "ann"
    table = ds.manifest()
    assert table.column_names == ["img_path", "seg_path", "num_classes", "class_names", "palette",
                                  "ignore_index", "label_map", "reduce_zero_label", "subset_label_map", "pipeline"]
    rows = table.to_pylist()
    assert [r["img_path"] for r in rows] == [s["img_path"] for s in ds.samples]
    assert [r["seg_path"] for r in rows] == [s["seg_path"] for s in ds.samples]
    assert rows[0]["num_classes"] == 4 and rows[0]["class_names"] == list(CLASSES)
    assert len(rows[0]["palette"]) == 4 and rows[0]["ignore_index"] == 255
    assert dict(rows[0]["label_map"]) == {3: 255} and rows[0]["subset_label_map"] is None
    # a manifest row (label_map as a list of pairs) drives the pipeline like the dataset does
    row = rows[0]
    out = ds.pipeline({"img_path": row["img_path"], "seg_path": row["seg_path"], "label_map": row["label_map"],
                       "num_classes": row["num_classes"], "ignore_index": row["ignore_index"]})
    assert 3 not in np.unique(out["gt_semantic_seg"])


def test_prepare_train_loads_bgr_image_and_mask(tmp_path):
    img, mask = write_pair(tmp_path, "x")
    ds = make(tmp_path)
    out = ds.prepare_train(ds.samples[0])
    assert np.array_equal(out["img"], img) and out["img"].dtype == np.uint8
    assert np.array_equal(out["gt_semantic_seg"], mask)
    assert out["seg_fields"] == ["gt_semantic_seg"]
    assert out["ori_shape"] == (8, 10, 3) and out["filename"] == ds.samples[0]["img_path"]


def test_bytes_are_decoded_instead_of_reading_paths(tmp_path):
    img, mask = write_pair(tmp_path, "x")
    ds = make(tmp_path)
    s = ds.samples[0]
    sample = {"img_path": "/nonexistent/x.png", "seg_path": "/nonexistent/x.png",
              "img_bytes": Path(s["img_path"]).read_bytes(), "seg_bytes": Path(s["seg_path"]).read_bytes()}
    out = ds.prepare_train(sample)
    assert np.array_equal(out["img"], img) and np.array_equal(out["gt_semantic_seg"], mask)
    assert "img_bytes" not in out and "seg_bytes" not in out


def test_palette_png_masks_give_indices(tmp_path):
    write_pair(tmp_path, "x")
    seg_path = tmp_path / "ann" / "x.png"
    idx = np.resize(np.array([0, 1, 2, 3], np.uint8), 80).reshape(8, 10)
    im = Image.fromarray(idx, mode="P")
    im.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10, 10, 10, 200] + [0] * (256 * 3 - 12))
    im.save(seg_path)
    for backend in ("pillow", "cv2"):
        ds = make(tmp_path, pipeline=[{"type": "LoadImageFromFile"},
                                      {"type": "LoadAnnotations", "imdecode_backend": backend}])
        assert np.array_equal(ds.prepare_train(ds.samples[0])["gt_semantic_seg"], idx)


def test_missing_mask_names_image_and_expected_mask(tmp_path):
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b")
    os.remove(tmp_path / "ann" / "b.png")
    with pytest.raises(DataError) as exc:
        make(tmp_path)
    assert str(tmp_path / "img" / "b.png") in str(exc.value)
    assert str(tmp_path / "ann" / "b.png") in str(exc.value)


def test_empty_dataset_and_missing_dir_errors(tmp_path):
    write_pair(tmp_path, "a")
    with pytest.raises(DataError) as exc:
        make(tmp_path, img_suffix=".jpg")
    assert str(tmp_path / "img") in str(exc.value) and ".jpg" in str(exc.value)
    with pytest.raises(DataError, match="nope"):
        CustomDataset(pipeline=LOAD, data_root=str(tmp_path), img_dir="nope", classes=CLASSES)


def test_mask_size_mismatch_names_both_files(tmp_path):
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b", mask_hw=(8, 9))
    ds = make(tmp_path)
    with pytest.raises(DataError) as exc:
        ds.validate()
    msg = str(exc.value)
    assert str(tmp_path / "img" / "b.png") in msg and str(tmp_path / "ann" / "b.png") in msg
    assert str(tmp_path / "img" / "a.png") not in msg
    ds.validate(check_sizes=False)
    ds.prepare_train(ds.samples[0])
    with pytest.raises(DataError) as exc:
        ds.prepare_train(ds.samples[1])
    msg = str(exc.value)
    assert str(tmp_path / "img" / "b.png") in msg and str(tmp_path / "ann" / "b.png") in msg
    assert "9x8" in msg and "10x8" in msg


def test_label_out_of_range_names_file_and_values(tmp_path):
    write_pair(tmp_path, "a", values=(0, 1, 7, 9, 255))
    ds = make(tmp_path)
    with pytest.raises(DataError) as exc:
        ds.prepare_train(ds.samples[0])
    assert str(tmp_path / "ann" / "a.png") in str(exc.value) and "[7, 9]" in str(exc.value)
    # mapping the bad values away (label_map, applied on a copy) makes it valid
    ds = make(tmp_path, label_map={7: 255, 9: 3})
    seg = ds.prepare_train(ds.samples[0])["gt_semantic_seg"]
    assert set(np.unique(seg).tolist()) == {0, 1, 3, 255}


def test_reduce_zero_label_in_dataset(tmp_path):
    write_pair(tmp_path, "a", values=(0, 1, 4, 255))
    ds = make(tmp_path, reduce_zero_label=True)
    seg = ds.prepare_train(ds.samples[0])["gt_semantic_seg"]
    assert set(np.unique(seg).tolist()) == {0, 3, 255}
    assert ds.manifest().to_pylist()[0]["reduce_zero_label"] is True


def test_undecodable_image_names_path(tmp_path):
    write_pair(tmp_path, "a")
    bad = tmp_path / "img" / "a.png"
    bad.write_bytes(b"this is not a png")
    ds = make(tmp_path)
    with pytest.raises(DataError, match=str(bad)):
        ds.prepare_train(ds.samples[0])


def test_split_file_selects_stems_and_names_missing(tmp_path):
    for name in ("a", "b", "c"):
        write_pair(tmp_path, name)
    (tmp_path / "val.txt").write_text("c\na\n\n")
    ds = make(tmp_path, split="val.txt")
    assert [Path(s["img_path"]).stem for s in ds.samples] == ["a", "c"]
    (tmp_path / "bad.txt").write_text("a\nzz\n")
    with pytest.raises(DataError) as exc:
        make(tmp_path, split="bad.txt")
    assert str(tmp_path / "img" / "zz.png") in str(exc.value)


def test_classes_subset_builds_label_map_and_palette(tmp_path):
    write_pair(tmp_path, "a", values=(0, 1, 2, 3))
    ds = make(tmp_path, cls=CamVidDataset, classes=["Road", "Sky"])
    assert ds.CLASSES == ("Road", "Sky") and ds.num_classes == 2
    assert ds.PALETTE == [CamVidDataset.PALETTE[3], CamVidDataset.PALETTE[0]]
    assert ds.subset_label_map == {0: 1, 3: 0, **{i: 255 for i in (1, 2, *range(4, 11))}}
    assert ds.label_map == {11: 255}  # the raw-value map keeps only the void rule
    seg = ds.prepare_train(ds.samples[0])["gt_semantic_seg"]
    # Sky (0) → 1, Road (3) → 0, the rest ignored
    assert set(np.unique(seg).tolist()) == {0, 1, 255}
    with pytest.raises(ConfigError, match="Tram"):
        make(tmp_path, cls=CamVidDataset, classes=["Tram"])


class ABCDataset(CustomDataset):
    """The MMSeg reference case: three classes, raw masks 0..3 with 0 = "other"."""

    CLASSES = ("a", "b", "c")
    PALETTE = [[1, 1, 1], [2, 2, 2], [3, 3, 3]]
    IMG_SUFFIX = ".png"
    REDUCE_ZERO_LABEL = True


def test_classes_subset_after_reduce_zero_label_matches_mmseg(tmp_path):
    """MMSeg 1.x reduces first, then maps the class subset. From MMSegmentation 1.2.2 itself
    (tools/mmseg_semantics_reference.py: BaseSegDataset with METAINFO classes (a, b, c), metainfo
    classes (b, c), reduce_zero_label=True, then LoadAnnotations): label_map {0: 255, 1: 0, 2: 1}, raw mask
    [0, 1, 2, 3] → [255, 255, 0, 1]. (Mapping before reducing, as rayseg did, gave [255, 255, 0, 2].)"""
    write_pair(tmp_path, "a", h=1, w=4, values=(0, 1, 2, 3))
    ds = ABCDataset(pipeline=LOAD, data_root=str(tmp_path), img_dir="img", ann_dir="ann", classes=("b", "c"))
    assert ds.reduce_zero_label and ds.subset_label_map == {0: 255, 1: 0, 2: 1}
    assert ds.prepare_train(ds.samples[0])["gt_semantic_seg"].tolist() == [[255, 255, 0, 1]]
    test = ABCDataset(pipeline=LOAD[:1], data_root=str(tmp_path), img_dir="img", ann_dir="ann",
                      classes=("b", "c"), test_mode=True)
    assert test[0]["gt_semantic_seg"].tolist() == [[255, 255, 0, 1]]  # the evaluation ground truth too
    # A manifest row carries both maps and drives the pipeline the same way.
    row = ds.manifest().to_pylist()[0]
    out = ds.pipeline({k: row[k] for k in ("img_path", "seg_path", "label_map", "reduce_zero_label",
                                           "subset_label_map", "num_classes", "ignore_index")})
    assert out["gt_semantic_seg"].tolist() == [[255, 255, 0, 1]]
    # A user label_map works on raw values, before the reduction: raw 3 (class c) → 1 (class a, dropped).
    ds = ABCDataset(pipeline=LOAD, data_root=str(tmp_path), img_dir="img", ann_dir="ann", classes=("b", "c"),
                    label_map={3: 1})
    assert ds.prepare_train(ds.samples[0])["gt_semantic_seg"].tolist() == [[255, 255, 0, 255]]


def test_defaults_are_class_attributes(tmp_path):
    write_pair(tmp_path, "a", h=1, w=4, values=(0, 1, 2, 3))
    ds = ABCDataset(pipeline=LOAD, data_root=str(tmp_path), img_dir="img", ann_dir="ann")
    assert (ds.img_suffix, ds.seg_map_suffix, ds.reduce_zero_label, ds.ignore_index) == (".png", ".png", True, 255)
    assert ds.prepare_train(ds.samples[0])["gt_semantic_seg"].tolist() == [[255, 0, 1, 2]]
    # Constructor arguments override the class's values.
    ds = ABCDataset(pipeline=LOAD, data_root=str(tmp_path), img_dir="img", ann_dir="ann", reduce_zero_label=False,
                    ignore_index=254, label_map={3: 254})
    assert not ds.reduce_zero_label and ds.ignore_index == 254 and ds.subset_label_map is None
    assert ds.prepare_train(ds.samples[0])["gt_semantic_seg"].tolist() == [[0, 1, 2, 254]]
    with pytest.raises(DataError):  # images are .png, so ".jpg" finds none
        ABCDataset(pipeline=LOAD, data_root=str(tmp_path), img_dir="img", ann_dir="ann", img_suffix=".jpg")


def test_camvid_void_is_ignored(tmp_path):
    write_pair(tmp_path, "a", values=(0, 5, 10, 11))
    ds = make(tmp_path, cls=CamVidDataset, classes=None)
    assert ds.num_classes == 11 and len(ds.PALETTE) == 11
    seg = ds.prepare_train(ds.samples[0])["gt_semantic_seg"]
    assert set(np.unique(seg).tolist()) == {0, 5, 10, 255}
    # a user label_map merges with the void rule
    ds = make(tmp_path, cls=CamVidDataset, classes=None, label_map={5: 255})
    assert ds.label_map == {11: 255, 5: 255}


def test_prepare_test_keeps_original_size_gt(tmp_path):
    write_pair(tmp_path, "a", h=20, w=40, values=(0, 1, 2, 3, 11))
    pipeline = [{"type": "LoadImageFromFile"},
                {"type": "MultiScaleFlipAug", "img_scale": (20, 10), "flip": False,
                 "transforms": [{"type": "Resize", "keep_ratio": True}, {"type": "RandomFlip"},
                                {"type": "ImageToTensor", "keys": ["img"]},
                                {"type": "Collect", "keys": ["img"]}]}]
    ds = make(tmp_path, cls=CamVidDataset, classes=None, pipeline=pipeline, test_mode=True)
    out = ds[0]
    assert out["img"].shape == (10, 20, 3)
    assert out["ori_shape"] == (20, 40, 3)
    assert out["gt_semantic_seg"].shape == (20, 40)
    assert 11 not in np.unique(out["gt_semantic_seg"])  # label_map applied to the gt too


def test_build_dataset_and_unknown_args(tmp_path):
    write_pair(tmp_path, "a")
    cfg = dict(type="CamVidDataset", data_root=str(tmp_path), img_dir="img", ann_dir="ann", pipeline=LOAD)
    assert isinstance(build_dataset(cfg), CamVidDataset)
    with pytest.raises(ConfigError, match="img_dirr"):
        build_dataset(dict(cfg, img_dirr="img"))
    with pytest.raises(ConfigError, match="LoadImageFromFil"):
        build_dataset(dict(cfg, pipeline=[{"type": "LoadImageFromFil"}]))


@pytest.mark.skipif(not CAMVID.is_dir(), reason=f"CamVid not found at {CAMVID} (shared data absent)")
def test_real_camvid_val_sample():
    ds = CamVidDataset(pipeline=LOAD, data_root=str(CAMVID), img_dir="img_dir/val", ann_dir="ann_dir/val")
    assert len(ds) == 101
    out = ds.prepare_train(ds.samples[0])
    assert out["img"].shape == (360, 480, 3)
    values = set(np.unique(out["gt_semantic_seg"]).tolist())
    assert values <= set(range(11)) | {255}
