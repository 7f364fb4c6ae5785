"""Converters cityscapes, voc_aug, pascal_context, coco_stuff10k, coco_stuff164k and loveda on tiny fake copies
of each official layout (generated files with the official names and formats), run as Ray tasks."""
import json
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from rayseg.datasets.converters import run_conversion
from rayseg.datasets.converters._coco_rle import counts_to_string, decode_rle
from rayseg.datasets.converters.base import build_converter
from rayseg.errors import DataError


def png(path: Path, array) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.asarray(array, np.uint8))
    return path


def jpg(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.random.default_rng(seed).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), img)
    return path


def read(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


def lines(path: Path) -> list:
    return path.read_text().splitlines()


def convert(name, src, dst, **options):
    report = run_conversion(name, str(src), str(dst), nproc=2, progress=False, **options)
    assert report.ok, report.summary()
    return report


# ----------------------------------------------------------------------------- without Ray
def test_rle_decoding_matches_pycocotools_strings():
    # strings pycocotools' mask.encode produced for these masks (Fortran order, compressed counts)
    box = np.zeros((4, 5), bool)
    box[1:3, 1:4] = True
    assert (decode_rle({"counts": "5220003", "size": [4, 5]}, 4, 5) == box).all()
    cols = np.zeros((6, 7), bool)
    cols[:, 5:] = True
    cols[0, 0] = True
    assert (decode_rle({"counts": "01m0;", "size": [6, 7]}, 0, 0) == cols).all()
    assert (decode_rle({"counts": [5, 2, 2, 2, 2, 2, 5]}, 4, 5) == box).all()  # uncompressed, size from the image
    assert counts_to_string([5, 2, 2, 2, 2, 2, 5]) == "5220003"
    with pytest.raises(DataError, match="not 4x5"):
        decode_rle({"counts": [5, 2]}, 4, 5)


@pytest.mark.parametrize("name, present, missing", [
    ("cityscapes", ["gtFine/train"], "leftImg8bit"),
    ("voc_aug", ["VOC2012/JPEGImages", "VOC2012/SegmentationClass"], "VOC2012/ImageSets/Segmentation/train.txt"),
    ("coco_stuff10k", ["images", "annotations"], "imageLists/train.txt"),
    ("coco_stuff164k", ["images/train2017", "images/val2017"], "annotations/train2017"),
    ("loveda", [], "Train.zip, Val.zip, Test.zip"),
    ("pascal_context", ["VOC2010/JPEGImages"], "trainval_merged.json"),
])
def test_check_source_names_what_is_missing(tmp_path, name, present, missing):
    for rel in present:
        (tmp_path / rel).mkdir(parents=True)
    with pytest.raises(DataError) as exc:
        build_converter(name, str(tmp_path), str(tmp_path / "out")).check_source()
    assert missing in str(exc.value) and name in str(exc.value)


# ----------------------------------------------------------------------------- with Ray
@pytest.mark.slow
def test_cityscapes(ray_head, tmp_path):
    src, dst = tmp_path / "cityscapes", tmp_path / "out"
    ids = np.array([[0, 7, 8, 11], [26, 33, 24, 6], [34, 1, 23, 31]], np.uint8)  # 34 is no label id → 255
    png(src / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelIds.png", ids)
    png(src / "gtFine/train/bremen/bremen_000001_000019_gtFine_labelIds.png", ids.T)
    png(src / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png", np.full((3, 4), 21))
    poly = {"imgHeight": 6, "imgWidth": 8, "objects": [
        {"label": "road", "polygon": [[0, 0], [7, 0], [7, 2], [0, 2]]},
        {"label": "cargroup", "polygon": [[4, 3], [6, 3], [6, 5], [4, 5]]},
        {"label": "sky", "deleted": 1, "polygon": [[0, 0], [7, 0], [7, 5], [0, 5]]},
        {"label": "license plate", "polygon": [[5, 4], [6, 4], [6, 5], [5, 5]]}]}
    (src / "gtFine/test/berlin").mkdir(parents=True)
    (src / "gtFine/test/berlin/berlin_000000_000019_gtFine_polygons.json").write_text(json.dumps(poly))
    for city, stem, split in [("aachen", "aachen_000000_000019", "train"), ("bremen", "bremen_000001_000019", "train"),
                              ("frankfurt", "frankfurt_000000_000294", "val")]:
        jpg(src / f"leftImg8bit/{split}/{city}/{stem}_leftImg8bit.png")
    report = convert("cityscapes", src, dst)
    assert report.done == 4 + 3 and not report.failures
    out = read(dst / "gtFine/train/aachen/aachen_000000_000019_gtFine_labelTrainIds.png")
    assert out.tolist() == [[255, 0, 1, 2], [13, 18, 11, 255], [255, 255, 10, 16]]
    assert (read(dst / "gtFine/train/bremen/bremen_000001_000019_gtFine_labelTrainIds.png") == out.T).all()
    assert (read(dst / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelTrainIds.png") == 8).all()
    drawn = read(dst / "gtFine/test/berlin/berlin_000000_000019_gtFine_labelTrainIds.png")
    expected = np.full((6, 8), 255)
    expected[0:3, :] = 0  # road
    expected[3:6, 4:7] = 13  # "cargroup" drawn as car; the plate is skipped (negative id), the deleted sky too
    assert drawn.tolist() == expected.tolist()
    assert lines(dst / "train.txt") == ["aachen/aachen_000000_000019", "bremen/bremen_000001_000019"]
    assert lines(dst / "val.txt") == ["frankfurt/frankfurt_000000_000294"]
    assert lines(dst / "test.txt") == ["berlin/berlin_000000_000019"]
    image = "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
    assert (dst / image).read_bytes() == (src / image).read_bytes()


def gtcls(path: Path, seg: np.ndarray) -> None:
    """An SBD class annotation: MATLAB struct GTcls with Segmentation, Boundaries and CategoriesPresent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    present = np.unique(seg[seg > 0]).astype(np.uint8).reshape(-1, 1)
    savemat(str(path), {"GTcls": {"Segmentation": seg.astype(np.uint8), "Boundaries": np.zeros((1, 20), object),
                                  "CategoriesPresent": present}})


@pytest.mark.slow
def test_voc_aug(ray_head, tmp_path):
    src, dst = tmp_path / "VOCdevkit", tmp_path / "out"
    voc, sbd = src / "VOC2012", src / "VOCaug" / "dataset"
    for i, name in enumerate("abcdef"):
        jpg(voc / "JPEGImages" / f"2008_00000{name}.jpg", seed=i)
    (voc / "SegmentationClass").mkdir()
    for name, value in (("a", 1), ("b", 15)):  # VOC's own masks: palette PNGs with the 255 border
        mask = Image.fromarray(np.pad(np.full((4, 6), value, np.uint8), 1, constant_values=255))
        mask.putpalette([0, 0, 0, 128, 0, 0] * 128)  # an "L" image becomes "P", keeping its values
        assert mask.mode == "P"
        mask.save(voc / "SegmentationClass" / f"2008_00000{name}.png")
    (voc / "ImageSets/Segmentation").mkdir(parents=True)
    (voc / "ImageSets/Segmentation/train.txt").write_text("2008_00000a\n")
    (voc / "ImageSets/Segmentation/val.txt").write_text("2008_00000b\n")
    segs = {n: np.arange(48).reshape(6, 8) % (i + 2) * (i + 1) for i, n in enumerate("abcde")}
    for name, seg in segs.items():
        gtcls(sbd / "cls" / f"2008_00000{name}.mat", seg)
    (sbd / "train.txt").write_text("2008_00000a\n2008_00000c\n2008_00000d\n")
    (sbd / "val.txt").write_text("2008_00000e\n2008_00000b\n")
    report = convert("voc_aug", src, dst, link=True)
    assert report.done == 5 + 6 + 2
    out = dst / "VOC2012"
    for name, seg in segs.items():
        assert read(out / "SegmentationClassAug" / f"2008_00000{name}.png").tolist() == seg.tolist()
    sets = out / "ImageSets/Segmentation"
    assert lines(sets / "aug.txt") == ["2008_00000c", "2008_00000d", "2008_00000e"]  # SBD minus VOC train/val
    assert lines(sets / "trainaug.txt") == ["2008_00000a", "2008_00000c", "2008_00000d", "2008_00000e"]
    assert lines(sets / "train.txt") == ["2008_00000a"] and lines(sets / "val.txt") == ["2008_00000b"]
    for rel in ("SegmentationClass/2008_00000b.png", "JPEGImages/2008_00000f.jpg"):
        assert (out / rel).read_bytes() == (voc / rel).read_bytes()
    assert np.asarray(Image.open(out / "SegmentationClass/2008_00000b.png"))[2, 2] == 15  # still palette indices
    assert (out / "JPEGImages/2008_00000a.jpg").stat().st_ino == (voc / "JPEGImages/2008_00000a.jpg").stat().st_ino


@pytest.mark.slow
def test_pascal_context(ray_head, tmp_path):
    src, dst = tmp_path / "VOCdevkit", tmp_path / "out"
    for i, stem in enumerate(("2008_000002", "2008_000003", "2010_000001", "2010_000002")):
        jpg(src / "VOC2010/JPEGImages" / f"{stem}.jpg", seed=i)
    first = np.zeros((4, 5), bool)
    first[1:3, 1:4] = True  # "5220003" in pycocotools' encoding
    late = np.zeros((4, 5), bool)
    late[:, 3:] = True

    def rle(mask, compressed=True):
        runs, current, n = [], False, 0  # column-major runs, starting with 0s
        for value in mask.T.ravel():
            if value == current:
                n += 1
            else:
                runs, current, n = runs + [n], value, 1
        runs.append(n)
        return {"counts": counts_to_string(runs) if compressed else runs, "size": list(mask.shape)}

    data = {"info": {}, "categories": [], "images": [
        {"image_id": 2008000002, "file_name": "2008_000002.jpg", "height": 4, "width": 5, "phase": "train"},
        {"image_id": 2008000003, "file_name": "2008_000003.jpg", "height": 4, "width": 5, "phase": "val"},
        {"image_id": 2010000001, "file_name": "2010_000001.jpg", "height": 4, "width": 5, "phase": "train"},
        {"image_id": 2010000002, "file_name": "2010_000002.jpg", "height": 4, "width": 5, "phase": "test"}],
        "annos_segmentation": [
            {"id": 1, "image_id": 2008000002, "category_id": 2, "segmentation": rle(first)},  # aeroplane
            {"id": 2, "image_id": 2008000003, "category_id": 458, "segmentation": rle(~late, compressed=False)},
            {"id": 3, "image_id": 2008000002, "category_id": 284, "segmentation": rle(late)},  # person, on top
        ]}
    assert rle(first)["counts"] == "5220003"
    (src / "VOC2010/trainval_merged.json").write_text(json.dumps(data))
    report = convert("pascal_context", src, dst)
    assert report.done == 3 * 2  # test-phase images are not part of MMSeg's conversion
    out = dst / "VOC2010/SegmentationClassContext"
    expected = np.where(late, 37, np.where(first, 1, 0))  # Detail ids 2 → 1, 284 → 37, 458 → 59 (MMSeg _key)
    assert read(out / "2008_000002.png").tolist() == expected.tolist()
    assert read(out / "2008_000003.png").tolist() == np.where(late, 0, 59).tolist()
    assert (read(out / "2010_000001.png") == 0).all()  # no annotation: all background
    assert not (out / "2010_000002.png").exists()
    sets = dst / "VOC2010/ImageSets/SegmentationContext"
    assert lines(sets / "train.txt") == ["2008_000002", "2010_000001"] and lines(sets / "val.txt") == ["2008_000003"]
    assert (dst / "VOC2010/JPEGImages/2008_000003.jpg").is_file()
    assert not (dst / "VOC2010/JPEGImages/2010_000002.jpg").exists()


@pytest.mark.slow
def test_coco_stuff10k_and_164k_in_place(ray_head, tmp_path):
    src10, dst10 = tmp_path / "cocostuff-10k", tmp_path / "coco_stuff10k"
    names = {"train": ["COCO_train2014_000000000077", "COCO_train2014_000000000078"],
             "test": ["COCO_train2014_000000000081"]}
    ids = np.array([[0, 1, 13, 182], [92, 91, 27, 12]], np.uint8)  # 91 and 12 are dropped COCO ids
    for split, stems in names.items():
        for i, stem in enumerate(stems):
            jpg(src10 / "images" / f"{stem}.jpg", seed=i)
            (src10 / "annotations").mkdir(parents=True, exist_ok=True)
            savemat(str(src10 / "annotations" / f"{stem}.mat"), {"S": ids, "names": np.array(["a"], object)})
        (src10 / "imageLists").mkdir(exist_ok=True)
        (src10 / "imageLists" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    convert("coco_stuff10k", src10, dst10)
    mask = read(dst10 / "annotations/test2014/COCO_train2014_000000000081_labelTrainIds.png")
    assert mask.tolist() == [[0, 1, 12, 171], [81, 255, 25, 255]]  # MMSeg: 13→12, 182→171, 92→81, 27→25
    assert (dst10 / "images/train2014/COCO_train2014_000000000078.jpg").read_bytes() == \
        (src10 / "images/COCO_train2014_000000000078.jpg").read_bytes()
    assert sorted(p.name for p in (dst10 / "annotations/train2014").iterdir()) == [
        f"{s}_labelTrainIds.png" for s in names["train"]]

    root = tmp_path / "coco_stuff164k"  # converted in place, as MMSeg's default
    labels = np.array([[0, 12, 181, 255], [91, 11, 26, 40]], np.uint8)  # 11 is a dropped COCO id
    for split in ("train2017", "val2017"):
        jpg(root / "images" / split / "000000000009.jpg")
        png(root / "annotations" / split / "000000000009.png", labels)
    report = convert("coco_stuff164k", root, root)
    assert report.done == 2  # images stay where they are
    expected = [[0, 11, 170, 255], [80, 255, 24, 36]]  # MMSeg: 12→11, 181→170, 255→255, 91→80, 26→24, 40→36
    assert read(root / "annotations/val2017/000000000009_labelTrainIds.png").tolist() == expected
    again = convert("coco_stuff164k", root, root)  # its own outputs are not taken for inputs
    assert again.units == 2 and again.skipped == 2


def zip_of(path: Path, members: dict) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)


def png_bytes(value: int) -> bytes:
    ok, data = cv2.imencode(".png", np.full((4, 4), value, np.uint8))
    assert ok
    return data.tobytes()


@pytest.mark.slow
def test_loveda(ray_head, tmp_path):
    src, dst = tmp_path / "download", tmp_path / "loveDA"
    src.mkdir()
    zip_of(src / "Train.zip", {"Train/Rural/images_png/0.png": png_bytes(10),
                               "Train/Rural/masks_png/0.png": png_bytes(1),
                               "Train/Urban/images_png/1366.png": png_bytes(20),
                               "Train/Urban/masks_png/1366.png": png_bytes(2), "Train/README.txt": b"x"})
    zip_of(src / "Val.zip", {"Val/Rural/images_png/2522.png": png_bytes(30),
                             "Val/Rural/masks_png/2522.png": png_bytes(3)})
    zip_of(src / "Test.zip", {"Test/Urban/images_png/4191.png": png_bytes(40)})
    report = convert("loveda", src, dst)
    assert report.done == 7
    assert sorted(str(p.relative_to(dst)) for p in dst.rglob("*.png")) == [
        "ann_dir/train/0.png", "ann_dir/train/1366.png", "ann_dir/val/2522.png", "img_dir/test/4191.png",
        "img_dir/train/0.png", "img_dir/train/1366.png", "img_dir/val/2522.png"]
    assert (dst / "ann_dir/train/1366.png").read_bytes() == png_bytes(2)
    assert (dst / "img_dir/test/4191.png").read_bytes() == png_bytes(40)
