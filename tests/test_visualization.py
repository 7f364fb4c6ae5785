"""rayseg.visualization: colours, overlays, palette PNGs and the confusion-matrix plot, on real files."""
import cv2
import numpy as np
import pytest
from PIL import Image

from rayseg.datasets.loading import decode_label
from rayseg.errors import DataError
from rayseg.visualization import (
    colorize,
    plot_confusion_matrix,
    save_label_png,
    show_result,
    side_by_side,
)

PALETTE = [[255, 0, 0], [0, 128, 0], [10, 20, 250]]  # RGB: red, green, blue-ish
SEG = np.array([[0, 1, 2, 255],
                [2, 2, 1, 0]])


def _image(h=2, w=4, value=100):
    return np.full((h, w, 3), value, np.uint8)


def test_colorize_gives_bgr_palette_colours_and_black_for_ignored():
    out = colorize(SEG, PALETTE)
    assert out.shape == (2, 4, 3) and out.dtype == np.uint8
    assert out[0, 0].tolist() == [0, 0, 255]  # red in BGR
    assert out[0, 1].tolist() == [0, 128, 0]
    assert out[0, 2].tolist() == [250, 20, 10]
    assert out[0, 3].tolist() == [0, 0, 0]  # ignore index
    with pytest.raises(ValueError, match=r"values \[3\].*3 entries"):
        colorize(np.array([[0, 3]]), PALETTE)
    with pytest.raises(ValueError, match=r"values \[255\]"):
        colorize(SEG, PALETTE, ignore_index=None)  # 255 is then a label without a colour
    with pytest.raises(ValueError, match="integer class indices"):
        colorize(SEG.astype(np.float32), PALETTE)


def test_show_result_blends_like_mmseg_and_writes_the_file(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (2, 4, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), img)
    out_file = tmp_path / "nested" / "dir" / "overlay.png"
    blended = show_result(str(path), SEG, PALETTE, opacity=0.3, out_file=out_file)
    expected = (img * 0.7 + colorize(SEG, PALETTE) * 0.3).astype(np.uint8)
    assert np.array_equal(blended, expected)
    assert np.array_equal(cv2.imread(str(out_file)), expected)  # PNG: lossless round trip
    assert np.array_equal(show_result(img, SEG, PALETTE, opacity=0.0), img)
    assert np.array_equal(show_result(img, SEG, PALETTE, opacity=1.0), colorize(SEG, PALETTE))


def test_show_result_errors_name_shapes_and_paths(tmp_path):
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(2, 4\)"):
        show_result(_image(), np.zeros((3, 4), int), PALETTE)
    bad = tmp_path / "not_an_image.png"
    bad.write_bytes(b"definitely not a PNG")
    with pytest.raises(DataError, match="not_an_image.png"):
        show_result(str(bad), SEG, PALETTE)
    with pytest.raises(DataError, match="missing.png"):
        show_result(tmp_path / "missing.png", SEG, PALETTE)
    with pytest.raises(ValueError, match="opacity"):
        show_result(_image(), SEG, PALETTE, opacity=1.5)


def test_side_by_side_puts_prediction_left_and_ground_truth_right():
    h, w = 60, 120
    img = _image(h, w, value=90)
    pred = np.zeros((h, w), np.int64)  # all red
    gt = np.full((h, w), 1, np.int64)  # all green
    out = side_by_side(img, pred, gt, PALETTE, opacity=0.5)
    assert out.shape == (h, 2 * w, 3)
    # Below the text box, each half is its own overlay.
    assert np.array_equal(out[h - 1, 0], show_result(img, pred, PALETTE)[h - 1, 0])
    assert np.array_equal(out[h - 1, w], show_result(img, gt, PALETTE)[h - 1, 0])
    # The labels are drawn: the top-left corner of each half differs from the plain overlay.
    assert not np.array_equal(out[:15, :w], show_result(img, pred, PALETTE)[:15])
    assert not np.array_equal(out[:15, w:], show_result(img, gt, PALETTE)[:15])
    assert out[:15, :w].min(axis=2).max() > 200  # near-white (anti-aliased) text pixels


def test_save_label_png_round_trips_indices_and_colours(tmp_path):
    seg = np.array([[0, 1, 2], [2, 255, 1]], np.int64)
    path = tmp_path / "out" / "labels.png"
    save_label_png(path, seg, PALETTE)
    with Image.open(path) as im:
        assert im.mode == "P" and im.size == (3, 2)
        assert np.array_equal(np.array(im), seg)
        assert np.array_equal(np.array(im.convert("RGB"))[0, 2], PALETTE[2])
        assert np.array_equal(np.array(im.convert("RGB"))[1, 1], [0, 0, 0])  # ignored → black
    # OpenCV shows the colours (BGR), and rayseg's own label decoder reads the indices back.
    assert cv2.imread(str(path))[0, 0].tolist() == [0, 0, 255]
    assert np.array_equal(decode_label(np.fromfile(path, np.uint8), str(path)), seg)
    with pytest.raises(ValueError, match=r"values \[5\]"):
        save_label_png(tmp_path / "bad.png", np.array([[0, 5]]), PALETTE)


def test_plot_confusion_matrix_writes_pngs_that_grow_with_the_class_count(tmp_path):
    counts = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 0]])
    small = plot_confusion_matrix(counts, ["sky", "road", "car"], tmp_path / "a" / "cm3.png", title="val")
    img3 = cv2.imread(small)
    assert img3 is not None and img3.ndim == 3
    assert len(np.unique(img3.reshape(-1, 3), axis=0)) > 10  # a real drawing, not a blank canvas
    names = [f"class_{i}" for i in range(60)]
    big = plot_confusion_matrix(np.eye(60), names, tmp_path / "cm60.png")
    img60 = cv2.imread(big)
    assert img60.shape[0] > img3.shape[0] and img60.shape[1] > img3.shape[1]
    with pytest.raises(ValueError, match=r"\(3, 3\).*2 class names"):
        plot_confusion_matrix(counts, ["sky", "road"], tmp_path / "x.png")
