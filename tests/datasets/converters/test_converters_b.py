"""Converters of group B (DRIVE, STARE, HRF, CHASE_DB1, Potsdam, Vaihingen, iSAID) on tiny generated copies of
the official downloads: archives with the official member names and formats (TIFF, GIF, gzipped PPM, JPEG,
PNG). Most checks run each unit's function in this process; the Ray path (parallel units, failures listed,
resuming) runs once, on Potsdam."""
from __future__ import annotations

import gzip
import io
import math
import os
import tarfile
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from rayseg.datasets.converters import build_converter, run_conversion
from rayseg.errors import ConfigError, DataError

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- fake official files
def encode(arr: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, arr)
    assert ok
    return buf.tobytes()


def gif(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(arr).save(out, format="GIF")
    return out.getvalue()


def write_zip(path: Path, members: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def write_tar(path: Path, members: dict) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def image(h=6, w=8) -> np.ndarray:
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


def annotation(h=6, w=8) -> np.ndarray:
    """Gray levels around MMSeg's threshold: 0, 100 and 127 are background, 128, 200 and 255 vessel."""
    return RNG.choice(np.array([0, 100, 127, 128, 200, 255], np.uint8), (h, w))


def run_units(conv) -> list:
    """Run every unit of a converter in this process (the function Ray would run), as run_conversion would."""
    conv.check_source()
    written = []
    for unit in conv.units():
        written += unit.fn(**unit.kwargs)
    return written


def read(path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


def listing(root: Path, *sub) -> list:
    return sorted(os.listdir(root.joinpath(*sub)))


# ----------------------------------------------------------------------------- retinal vessels
def test_drive(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "DRIVE"
    imgs = {name: image() for name in ("21", "22", "01", "02")}
    labels = {name: annotation() for name in ("21_manual1", "22_manual1", "01_manual1", "02_manual2")}
    write_zip(src / "training.zip", {
        "training/images/21_training.tif": encode(imgs["21"], ".tif"),
        "training/images/22_training.tif": encode(imgs["22"], ".tif"),
        "training/1st_manual/21_manual1.gif": gif(labels["21_manual1"]),
        "training/1st_manual/22_manual1.gif": gif(labels["22_manual1"]),
        "training/mask/21_training_mask.gif": gif(np.full((6, 8), 255, np.uint8)),  # field of view: not used
    })
    write_zip(src / "test.zip", {
        "test/images/01_test.tif": encode(imgs["01"], ".tif"),
        "test/images/02_test.tif": encode(imgs["02"], ".tif"),
        "test/1st_manual/01_manual1.gif": gif(labels["01_manual1"]),
        "test/2nd_manual/02_manual2.gif": gif(labels["02_manual2"]),
    })
    written = run_units(build_converter("drive", str(src), str(dst)))
    assert len(written) == 8
    assert listing(dst, "images", "training") == ["21.png", "22.png"]
    assert listing(dst, "images", "validation") == ["01.png", "02.png"]
    assert listing(dst, "annotations", "training") == ["21_manual1.png", "22_manual1.png"]
    assert listing(dst, "annotations", "validation") == ["01_manual1.png", "02_manual2.png"]
    split = {"21": "training", "22": "training", "01": "validation", "02": "validation"}
    for name, arr in imgs.items():
        np.testing.assert_array_equal(read(dst / "images" / split[name] / f"{name}.png"), arr)
    for name, arr in labels.items():
        got = read(dst / "annotations" / split[name[:2]] / f"{name}.png")
        np.testing.assert_array_equal(got, (arr >= 128).astype(np.uint8))


def test_drive_without_its_archives_names_the_missing_one(tmp_path):
    write_zip(tmp_path / "training.zip", {"training/images/21_training.tif": encode(image(), ".tif")})
    with pytest.raises(DataError, match="test.zip"):
        build_converter("drive", str(tmp_path), str(tmp_path / "out")).check_source()


STARE_IDS = ["im0001", "im0002", "im0003", "im0004", "im0005", "im0044", "im0077", "im0081", "im0082", "im0139",
             "im0162", "im0163", "im0235", "im0236", "im0239", "im0240", "im0255", "im0291", "im0319", "im0324"]


def test_stare(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "STARE"
    src.mkdir()
    imgs = {i: image() for i in STARE_IDS}
    labels = {(i, obs): annotation() for i in STARE_IDS for obs in ("ah", "vk")}
    write_tar(src / "stare-images.tar", {f"{i}.ppm.gz": gzip.compress(encode(imgs[i], ".ppm")) for i in STARE_IDS})
    for obs in ("ah", "vk"):
        write_tar(src / f"labels-{obs}.tar", {f"{i}.{obs}.ppm.gz": gzip.compress(encode(
            cv2.cvtColor(labels[i, obs], cv2.COLOR_GRAY2BGR), ".ppm")) for i in STARE_IDS})
    run_units(build_converter("stare", str(src), str(dst)))
    train, val = STARE_IDS[:10], STARE_IDS[10:]  # MMSeg: first 10 in sorted order
    assert listing(dst, "images", "training") == [f"{i}.png" for i in train]
    assert listing(dst, "images", "validation") == [f"{i}.png" for i in val]
    assert listing(dst, "annotations", "training") == sorted(f"{i}.{o}.png" for i in train for o in ("ah", "vk"))
    assert listing(dst, "annotations", "validation") == sorted(f"{i}.{o}.png" for i in val for o in ("ah", "vk"))
    np.testing.assert_array_equal(read(dst / "images" / "validation" / "im0324.png"), imgs["im0324"])
    for (i, obs), arr in labels.items():
        split = "training" if i in train else "validation"
        np.testing.assert_array_equal(read(dst / "annotations" / split / f"{i}.{obs}.png"), (arr >= 128) * 1)


def test_stare_incomplete_archive_is_refused(tmp_path):
    write_tar(tmp_path / "stare-images.tar", {f"{i}.ppm.gz": gzip.compress(encode(image(), ".ppm"))
                                              for i in STARE_IDS[:19]})
    for obs in ("ah", "vk"):
        write_tar(tmp_path / f"labels-{obs}.tar", {})
    with pytest.raises(DataError, match="stare-images.tar holds 19 .ppm.gz files, expected 20"):
        build_converter("stare", str(tmp_path), str(tmp_path / "out")).check_source()


def test_hrf(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "HRF"
    labels = {}
    groups = (("healthy", "h", ".jpg"), ("glaucoma", "g", ".jpg"), ("diabetic_retinopathy", "dr", ".JPG"))
    for group, tag, ext in groups:
        write_zip(src / f"{group}.zip", {f"{n:02d}_{tag}{ext}": encode(image(), ".jpg") for n in range(1, 16)})
        labels.update({f"{n:02d}_{tag}": annotation() for n in range(1, 16)})
        write_zip(src / f"{group}_manualsegm.zip",
                  {f"{n:02d}_{tag}.tif": encode(labels[f"{n:02d}_{tag}"], ".tif") for n in range(1, 16)})
    run_units(build_converter("hrf", str(src), str(dst)))
    train = sorted(f"{n:02d}_{t}.png" for n in range(1, 6) for t in ("h", "g", "dr"))  # first 5 of each zip
    val = sorted(f"{n:02d}_{t}.png" for n in range(6, 16) for t in ("h", "g", "dr"))
    for top in ("images", "annotations"):
        assert listing(dst, top, "training") == train
        assert listing(dst, top, "validation") == val
    assert read(dst / "images" / "training" / "01_dr.png").shape == (6, 8, 3)
    for name, arr in labels.items():
        split = "training" if int(name[:2]) <= 5 else "validation"
        np.testing.assert_array_equal(read(dst / "annotations" / split / f"{name}.png"), (arr >= 128) * 1)


def test_chase_db1(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "CHASE_DB1"
    eyes = [f"Image_{n:02d}{side}" for n in range(1, 15) for side in "LR"]  # 28 images
    members, labels = {}, {}
    for eye in eyes:
        members[f"{eye}.jpg"] = encode(image(), ".jpg")
        for ho in ("1stHO", "2ndHO"):
            labels[f"{eye}_{ho}"] = annotation()
            members[f"{eye}_{ho}.png"] = encode(labels[f"{eye}_{ho}"], ".png")
    write_zip(src / "CHASEDB1.zip", members)
    run_units(build_converter("chase_db1", str(src), str(dst)))
    train, val = eyes[:20], eyes[20:]  # MMSeg: the first 60 of 84 files in sorted order
    assert listing(dst, "images", "training") == [f"{e}.png" for e in train]
    assert listing(dst, "images", "validation") == [f"{e}.png" for e in val]
    assert listing(dst, "annotations", "training") == sorted(f"{e}_{h}.png" for e in train for h in ("1stHO", "2ndHO"))
    assert listing(dst, "annotations", "validation") == sorted(f"{e}_{h}.png" for e in val for h in ("1stHO", "2ndHO"))
    for name, arr in labels.items():
        split = "training" if name.rsplit("_", 1)[0] in train else "validation"
        np.testing.assert_array_equal(read(dst / "annotations" / split / f"{name}.png"), (arr >= 128) * 1)


# ----------------------------------------------------------------------------- ISPRS
def mmseg_clip_boxes(h, w, cs, ss) -> set:
    """MMSeg's clip_big_image box arithmetic, transcribed, as the reference."""
    rows = math.ceil((h - cs) / ss) if math.ceil((h - cs) / ss) * ss + cs >= h else math.ceil((h - cs) / ss) + 1
    cols = math.ceil((w - cs) / ss) if math.ceil((w - cs) / ss) * ss + cs >= w else math.ceil((w - cs) / ss) + 1
    x, y = np.meshgrid(np.arange(cols + 1), np.arange(rows + 1))
    xmin, ymin = (x * cs).ravel(), (y * cs).ravel()
    xmin = xmin + np.where(xmin + cs > w, w - xmin - cs, 0)
    ymin = ymin + np.where(ymin + cs > h, h - ymin - cs, 0)
    return {(int(a), int(b), int(min(a + cs, w)), int(min(b + cs, h))) for a, b in zip(xmin, ymin)}


@pytest.mark.parametrize("h,w,cs,ss", [(6000, 6000, 512, 256), (2569, 1919, 512, 256), (40, 40, 16, 8),
                                       (40, 33, 16, 24), (16, 50, 16, 5)])
def test_clip_boxes_are_mmsegs(h, w, cs, ss):
    from rayseg.datasets.converters._isprs import clip_boxes

    boxes = clip_boxes(h, w, cs, ss)
    assert len(boxes) == len(set(boxes)) and set(boxes) == mmseg_clip_boxes(h, w, cs, ss)
    assert all(ex - sx == cs and ey - sy == cs and 0 <= sx and 0 <= sy and ex <= w and ey <= h
               for sx, sy, ex, ey in boxes)
    if (h, w) == (6000, 6000):
        assert len(boxes) == 144  # MMSeg's 3456 training patches / 24 tiles


# RGB colours of the ISPRS legend → the class id MMSeg gives them (its table is in BGR order)
ISPRS_RGB = {(0, 0, 0): 0, (255, 255, 255): 1, (0, 0, 255): 2, (0, 255, 255): 3, (0, 255, 0): 4,
             (255, 255, 0): 5, (255, 0, 0): 6, (10, 20, 30): 0}


def isprs_label_tile(h, w) -> tuple:
    """(BGR colour tile to write as TIFF, the class ids expected from it)."""
    colours = list(ISPRS_RGB)
    idx = RNG.integers(0, len(colours), (h, w))
    rgb = np.array(colours, np.uint8)[idx]
    return np.ascontiguousarray(rgb[..., ::-1]), np.array([ISPRS_RGB[c] for c in colours], np.uint8)[idx]


def check_patches(dst: Path, top: str, split: str, tile: str, full: np.ndarray, boxes) -> None:
    names = sorted(n for n in os.listdir(dst / top / split) if n.startswith(f"{tile}_"))
    assert names == sorted(f"{tile}_{sx}_{sy}_{ex}_{ey}.png" for sx, sy, ex, ey in boxes)
    for sx, sy, ex, ey in boxes:
        np.testing.assert_array_equal(read(dst / top / split / f"{tile}_{sx}_{sy}_{ex}_{ey}.png"), full[sy:ey, sx:ex])


def make_potsdam(src: Path, tiles=("2_10", "2_13", "3_9"), size=(40, 40)) -> dict:
    """2_Ortho_RGB.zip and both label zips; returns tile → (image, expected ids, expected full-label ids)."""
    data, rgb, no_boundary, full = {}, {}, {}, {}
    for t in tiles:
        img = image(*size)
        colour, ids = isprs_label_tile(*size)
        full_colour, full_ids = isprs_label_tile(*size)
        data[t] = (img, ids, full_ids)
        rgb[f"2_Ortho_RGB/top_potsdam_{t}_RGB.tif"] = encode(img, ".tif")
        rgb[f"2_Ortho_RGB/top_potsdam_{t}_RGB.tfw"] = b"world file, not a tile"
        no_boundary[f"top_potsdam_{t}_label_noBoundary.tif"] = encode(colour, ".tif")
        full[f"top_potsdam_{t}_label.tif"] = encode(full_colour, ".tif")
    write_zip(src / "2_Ortho_RGB.zip", rgb)
    write_zip(src / "5_Labels_all_noBoundary.zip", no_boundary)
    write_zip(src / "5_Labels_all.zip", full)
    return data


def test_potsdam_patches_labels_and_split(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "potsdam"
    data = make_potsdam(src)
    written = run_units(build_converter("potsdam", str(src), str(dst), clip_size=16, stride_size=8))
    boxes = mmseg_clip_boxes(40, 40, 16, 8)
    assert len(boxes) == 9 and len(written) == 3 * 2 * 9
    split = {"2_10": "train", "2_13": "val", "3_9": "val"}  # 3_9 is in neither list: val, as in MMSeg
    for tile, (img, ids, _) in data.items():
        check_patches(dst, "img_dir", split[tile], tile, img, boxes)
        check_patches(dst, "ann_dir", split[tile], tile, ids, boxes)  # auto: the noBoundary labels
    # labels="full" reads 5_Labels_all.zip instead
    run_units(build_converter("potsdam", str(src), str(tmp_path / "full"), clip_size=16, stride_size=8,
                              labels="full"))
    check_patches(tmp_path / "full", "ann_dir", "train", "2_10", data["2_10"][2], boxes)


def test_isprs_options_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="clip_size"):
        build_converter("potsdam", str(tmp_path), str(tmp_path / "o"), clip_size="big")
    with pytest.raises(ConfigError, match="labels"):
        build_converter("vaihingen", str(tmp_path), str(tmp_path / "o"), labels="eroded_please")
    with pytest.raises(ConfigError, match="clip_sise"):
        build_converter("potsdam", str(tmp_path), str(tmp_path / "o"), clip_sise=16)
    # options given as text (--option clip_size=16) are accepted
    assert build_converter("potsdam", str(tmp_path), str(tmp_path / "o"), clip_size="16").clip_size == 16
    write_zip(tmp_path / "2_Ortho_RGB.zip", {"top_potsdam_2_10_RGB.tif": encode(image(8, 8), ".tif")})
    with pytest.raises(DataError, match="no label archive"):
        build_converter("potsdam", str(tmp_path), str(tmp_path / "o")).check_source()
    write_zip(tmp_path / "5_Labels_all.zip", {"top_potsdam_2_10_label.tif": encode(image(8, 8), ".tif")})
    conv = build_converter("potsdam", str(tmp_path), str(tmp_path / "o"), clip_size=16)
    with pytest.raises(DataError, match="smaller than clip_size=16"):
        run_units(conv)


def test_vaihingen(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "vaihingen"
    imgs = {a: image(20, 30) for a in ("area1", "area2")}
    labels = {a: isprs_label_tile(20, 30) for a in ("area1", "area2", "area9")}
    write_zip(src / "ISPRS_semantic_labeling_Vaihingen.zip", {
        **{f"top/top_mosaic_09cm_{a}.tif": encode(arr, ".tif") for a, arr in imgs.items()},
        "gts_for_participants/top_mosaic_09cm_area1.tif": encode(labels["area1"][0], ".tif"),  # not images
    })
    write_zip(src / "ISPRS_semantic_labeling_Vaihingen_ground_truth_eroded_COMPLETE.zip",
              {f"top_mosaic_09cm_{a}_noBoundary.tif": encode(c, ".tif") for a, (c, _) in labels.items()})
    run_units(build_converter("vaihingen", str(src), str(dst), clip_size=16, stride_size=8))
    boxes = mmseg_clip_boxes(20, 30, 16, 8)
    for area, split in (("area1", "train"), ("area2", "val")):
        check_patches(dst, "img_dir", split, area, imgs[area], boxes)
        check_patches(dst, "ann_dir", split, area, labels[area][1], boxes)
    assert len(os.listdir(dst / "img_dir" / "train")) == len(boxes)  # the gts_for_participants copy is not an image
    assert not any(n.startswith("area9_") for n in os.listdir(dst / "ann_dir" / "val"))  # MMSeg drops area9


# ----------------------------------------------------------------------------- iSAID
ISAID_RGB = {(0, 0, 0): 0, (0, 0, 63): 1, (0, 63, 63): 2, (0, 127, 255): 14, (0, 100, 155): 15, (9, 9, 9): 0}


def mmseg_slide_boxes(h, w, ph, pw, overlap) -> set:
    """MMSeg's slide_crop loop (on the padded size), transcribed, as the reference."""
    h, w = max(h, ph), max(w, pw)
    out = set()
    for x in range(0, w, pw - overlap):
        for y in range(0, h, ph - overlap):
            xs, xe, ys, ye = x, x + pw, y, y + ph
            if xe > w:
                xs, xe = xs - (xe - w), w
            if ye > h:
                ys, ye = ys - (ye - h), h
            out.add((ys, ye, xs, xe))
    return out


def test_isaid(tmp_path):
    src, dst = tmp_path / "iSAID", tmp_path / "out"
    colours = list(ISAID_RGB)
    sizes = {"P0000": (30, 50), "P0001": (10, 20)}  # P0001 is smaller than a patch: padded
    imgs, ids = {}, {}
    for name, (h, w) in sizes.items():
        imgs[name] = image(h, w)
        idx = RNG.integers(0, len(colours), (h, w))
        ids[name] = np.array([ISAID_RGB[c] for c in colours], np.uint8)[idx]
        mask_bgr = np.ascontiguousarray(np.array(colours, np.uint8)[idx][..., ::-1])
        split = "train" if name == "P0000" else "val"
        write_zip(src / split / "images" / "part1.zip", {f"images/{name}.png": encode(imgs[name], ".png")})
        write_zip(src / split / "Semantic_masks" / "images.zip",
                  {f"images/{name}_instance_color_RGB.png": encode(mask_bgr, ".png")})
    test_png = encode(image(12, 12), ".png")
    write_zip(src / "test" / "images" / "part1.zip", {"images/P0002.png": test_png})
    run_units(build_converter("isaid", str(src), str(dst), patch_width=16, patch_height=12, overlap_area=6))
    assert (dst / "img_dir" / "test" / "P0002.png").read_bytes() == test_png  # copied whole, as MMSeg moves it
    for name, (h, w) in sizes.items():
        split = "train" if name == "P0000" else "val"
        boxes = mmseg_slide_boxes(h, w, 12, 16, 6)
        padded_img = np.zeros((max(h, 12), max(w, 16), 3), np.uint8)
        padded_img[:h, :w] = imgs[name]
        padded_ids = np.full((max(h, 12), max(w, 16)), 255, np.uint8)
        padded_ids[:h, :w] = ids[name]
        expected = sorted(f"{name}_{a}_{b}_{c}_{d}.png" for a, b, c, d in boxes)
        assert sorted(os.listdir(dst / "img_dir" / split)) == expected
        for y0, y1, x0, x1 in boxes:
            stem = f"{name}_{y0}_{y1}_{x0}_{x1}"
            np.testing.assert_array_equal(read(dst / "img_dir" / split / f"{stem}.png"), padded_img[y0:y1, x0:x1])
            np.testing.assert_array_equal(read(dst / "ann_dir" / split / f"{stem}_instance_color_RGB.png"),
                                          padded_ids[y0:y1, x0:x1])
    assert len(mmseg_slide_boxes(30, 50, 12, 16, 6)) == 5 * 4  # x0: 0 10 20 30 34; y0: 0 6 12 18 (24 → 18 again)


def test_isaid_needs_its_folders(tmp_path):
    write_zip(tmp_path / "train" / "images" / "part1.zip", {"images/P0000.png": encode(image(), ".png")})
    with pytest.raises(DataError, match="Semantic_masks"):
        build_converter("isaid", str(tmp_path), str(tmp_path / "out")).check_source()
    with pytest.raises(ConfigError, match="overlap_area"):
        build_converter("isaid", str(tmp_path), str(tmp_path / "out"), patch_width=8, patch_height=8, overlap_area=8)


# ----------------------------------------------------------------------------- through Ray
@pytest.mark.slow
def test_potsdam_on_ray_lists_a_bad_tile_and_resumes(ray_head, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "potsdam"
    data = make_potsdam(src, tiles=("2_10", "2_13"), size=(24, 24))
    good = zipfile.ZipFile(src / "2_Ortho_RGB.zip").read("2_Ortho_RGB/top_potsdam_2_13_RGB.tif")
    write_zip(src / "2_Ortho_RGB.zip", {"2_Ortho_RGB/top_potsdam_2_10_RGB.tif": encode(data["2_10"][0], ".tif"),
                                        "2_Ortho_RGB/top_potsdam_2_13_RGB.tif": b"not a tiff"})
    options = dict(clip_size=16, stride_size=8, nproc=2, progress=False)
    first = run_conversion("potsdam", str(src), str(dst), **options)
    assert first.units == 4 and first.done == 3 and not first.ok
    assert [f.inputs for f in first.failures] == [[f"{src / '2_Ortho_RGB.zip'}!2_Ortho_RGB/top_potsdam_2_13_RGB.tif"]]
    assert "cannot decode image" in first.failures[0].error
    boxes = mmseg_clip_boxes(24, 24, 16, 8)
    check_patches(dst, "ann_dir", "val", "2_13", data["2_13"][1], boxes)  # the other units went on

    write_zip(src / "2_Ortho_RGB.zip", {"2_Ortho_RGB/top_potsdam_2_10_RGB.tif": encode(data["2_10"][0], ".tif"),
                                        "2_Ortho_RGB/top_potsdam_2_13_RGB.tif": good})
    second = run_conversion("potsdam", str(src), str(dst), **options)
    assert second.ok and second.skipped == 3 and second.done == 1 and second.outputs == 4 * len(boxes)
    check_patches(dst, "img_dir", "val", "2_13", data["2_13"][0], boxes)
    check_patches(dst, "img_dir", "train", "2_10", data["2_10"][0], boxes)
