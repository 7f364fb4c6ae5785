"""SegMetric and its reports against small hand-computed cases (MMSeg semantics)."""
import json
import math
import warnings

import numpy as np
import pytest
import torch

from rayseg.evaluation import SegMetric, format_tables, metrics_to_json, per_class_csv

# 4 classes; class 2 appears nowhere, class 3 is predicted once but never labelled; one ignored pixel.
PRED = np.array([[0, 0, 1],
                 [1, 3, 0]])
LABEL = np.array([[0, 1, 1],
                  [255, 1, 0]])
# Kept (pred, label) pairs: (0,0) (0,1) (1,1) (3,1) (0,0)
# I = [2,1,0,0]  P = [3,1,0,1]  L = [2,3,0,0]  U = P+L-I = [3,3,0,1]


def _close(a, b):
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return np.allclose(a, b, equal_nan=True)


def test_areas_and_values_hand_computed():
    m = SegMetric(4, class_names=["a", "b", "c", "d"])
    m.update(PRED, LABEL)
    areas = m.areas
    assert areas["area_intersect"].tolist() == [2, 1, 0, 0]
    assert areas["area_union"].tolist() == [3, 3, 0, 1]
    assert areas["area_pred_label"].tolist() == [3, 1, 0, 1]
    assert areas["area_label"].tolist() == [2, 3, 0, 0]
    assert all(v.dtype == np.int64 for v in areas.values())

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy RuntimeWarning for the 0/0 classes
        r = m.compute()
    nan = float("nan")
    assert r["aAcc"] == pytest.approx(60.0)  # 3 correct of 5 non-ignored pixels
    assert _close(r["IoU"], [200 / 3, 100 / 3, nan, 0.0])  # predicted-only class 3 → IoU 0
    assert _close(r["Acc"], [100.0, 100 / 3, nan, nan])  # class 3 absent from labels → Acc NaN
    assert _close(r["Dice"], [80.0, 50.0, nan, 0.0])
    assert _close(r["Precision"], [200 / 3, 100.0, nan, 0.0])
    assert _close(r["Recall"], [100.0, 100 / 3, nan, nan])
    assert _close(r["Fscore"], [80.0, 50.0, nan, nan])
    # Means skip NaN classes: class 2 (absent everywhere) is left out, class 3 counts as IoU 0.
    assert r["mIoU"] == pytest.approx((200 / 3 + 100 / 3 + 0) / 3)
    assert r["mAcc"] == pytest.approx((100 + 100 / 3) / 2)
    assert r["mDice"] == pytest.approx((80 + 50 + 0) / 3)
    assert r["mPrecision"] == pytest.approx((200 / 3 + 100 + 0) / 3)
    assert r["mRecall"] == pytest.approx((100 + 100 / 3) / 2)
    assert r["mFscore"] == pytest.approx(65.0)
    assert r["classes"] == ["a", "b", "c", "d"]
    assert all(isinstance(r[k], float) for k in ("aAcc", "mIoU", "mAcc"))


def test_ignored_pixels_do_not_count_even_when_predicted_wrong():
    m = SegMetric(2, ignore_index=255)
    m.update(np.array([[0, 1, 1]]), np.array([[0, 255, 255]]))
    r = m.compute()
    assert m.areas["area_pred_label"].tolist() == [1, 0]
    assert r["aAcc"] == pytest.approx(100.0)
    assert r["mIoU"] == pytest.approx(100.0)  # class 1 absent from both after ignoring → left out
    assert math.isnan(r["IoU"][1])


def test_custom_ignore_index():
    m = SegMetric(3, ignore_index=0)
    m.update(np.array([[2, 1, 2]]), np.array([[0, 1, 1]]))
    assert m.areas["area_label"].tolist() == [0, 2, 0]
    assert m.compute()["aAcc"] == pytest.approx(50.0)


def test_batch_equals_per_image_updates_and_merge_halves_equals_whole():
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 5, size=(4, 8, 9))
    label = rng.integers(0, 5, size=(4, 8, 9))
    label[rng.random(label.shape) < 0.2] = 255
    whole = SegMetric(5)
    whole.update(pred, label)
    per_image = SegMetric(5)
    for p, lab in zip(pred, label):
        per_image.update(p, lab)
    for k in whole.areas:
        assert np.array_equal(whole.areas[k], per_image.areas[k])
    first, second = SegMetric(5), SegMetric(5)
    first.update(pred[:2], label[:2])
    second.update(pred[2:], label[2:])
    assert first.merge(second) is first
    for k in whole.areas:
        assert np.array_equal(first.areas[k], whole.areas[k])
    assert _close(first.compute()["IoU"], whole.compute()["IoU"])
    rebuilt = SegMetric.from_areas(whole.areas)
    assert rebuilt.num_classes == 5 and _close(rebuilt.compute()["IoU"], whole.compute()["IoU"])


def test_numpy_and_torch_agree():
    rng = np.random.default_rng(1)
    pred = rng.integers(0, 6, size=(2, 7, 5)).astype(np.int64)
    label = rng.integers(0, 6, size=(2, 7, 5)).astype(np.uint8)
    label[0, 0, :] = 255
    a, b = SegMetric(6), SegMetric(6)
    a.update(pred, label)
    b.update(torch.from_numpy(pred), torch.from_numpy(label))
    for k in a.areas:
        assert np.array_equal(a.areas[k], b.areas[k])
        assert b.areas[k].dtype == np.int64
    mixed = SegMetric(6)
    mixed.update(torch.from_numpy(pred), label)  # one tensor, one array
    assert np.array_equal(mixed.areas["area_intersect"], a.areas["area_intersect"])


def test_add_areas_accepts_tensors_and_reset_clears():
    m = SegMetric(2)
    m.update(np.array([[0, 1]]), np.array([[0, 0]]))
    before = m.areas
    m.add_areas({k: torch.tensor(v) for k, v in before.items()})
    assert m.areas["area_label"].tolist() == [4, 0]
    m.reset()
    assert all(v.sum() == 0 for v in m.areas.values())
    assert math.isnan(m.compute()["aAcc"])


@pytest.mark.parametrize("pred,label,match", [
    (np.zeros((2, 3), int), np.zeros((3, 2), int), "shape"),
    (np.zeros((1, 1, 2, 2), int), np.zeros((1, 1, 2, 2), int), r"\(H, W\)"),
    (np.array([[0, 4]]), np.array([[0, 1]]), r"pred values must lie in \[0, 4\)"),
    (np.array([[0, -1]]), np.array([[0, 1]]), "pred values"),
    (np.array([[0, 1]]), np.array([[0, 11]]), "label values"),
    (np.zeros((2, 2), np.float32), np.zeros((2, 2), int), "integer"),
    (torch.tensor([[0, 9]]), torch.tensor([[0, 1]]), "pred values"),
])
def test_bad_inputs_raise(pred, label, match):
    with pytest.raises(ValueError, match=match):
        SegMetric(4).update(pred, label)


def test_out_of_range_prediction_on_ignored_pixel_is_fine():
    m = SegMetric(2)
    m.update(np.array([[0, 255]]), np.array([[0, 255]]))  # padded border: both 255
    assert m.areas["area_label"].tolist() == [1, 0]


def test_merge_and_area_checks():
    with pytest.raises(ValueError, match="3 and 2 classes"):
        SegMetric(2).merge(SegMetric(3))
    with pytest.raises(ValueError, match="shape"):
        SegMetric(2).add_areas({k: [1, 2, 3] for k in SegMetric(2).areas})
    with pytest.raises(ValueError, match="class_names"):
        SegMetric(2, class_names=["one"])


def _results():
    m = SegMetric(4, class_names=["sky", "road", "tree", "car"])
    m.update(PRED, LABEL)
    return m.compute()


def test_format_tables_layout():
    text = format_tables(_results(), ["sky", "road", "tree", "car"])
    lines = text.splitlines()
    header = next(line for line in lines if "Class" in line)
    assert [c.strip() for c in header.strip("|").split("|")] == ["Class", "IoU", "Acc"]
    sky = next(line for line in lines if "sky" in line)
    assert [c.strip() for c in sky.strip("|").split("|")] == ["sky", "66.67", "100.00"]
    tree = next(line for line in lines if "tree" in line)
    assert [c.strip() for c in tree.strip("|").split("|")] == ["tree", "nan", "nan"]
    summary_header = next(line for line in lines if "aAcc" in line)
    assert [c.strip() for c in summary_header.strip("|").split("|")] == ["aAcc", "mIoU", "mAcc"]
    values = lines[lines.index(summary_header) + 2]
    assert [c.strip() for c in values.strip("|").split("|")] == ["60.00", "33.33", "66.67"]
    # Box table: every row of a table has the same width.
    assert len({len(line) for line in lines[1:lines.index("Summary:")]}) == 1


def test_metrics_to_json_replaces_nan_with_none():
    out = metrics_to_json(_results(), ["sky", "road", "tree", "car"])
    text = json.dumps(out, allow_nan=False)  # would raise on NaN
    back = json.loads(text)
    assert set(back) == {"aAcc", "mIoU", "mAcc", "mDice", "mFscore", "mPrecision", "mRecall", "per_class"}
    assert back["aAcc"] == pytest.approx(60.0)
    assert back["per_class"]["tree"]["IoU"] is None
    assert back["per_class"]["car"]["IoU"] == 0.0 and back["per_class"]["car"]["Acc"] is None
    assert set(back["per_class"]["sky"]) == {"IoU", "Acc", "Dice", "Fscore", "Precision", "Recall"}


def test_per_class_csv():
    text = per_class_csv(_results(), ["sky", "road, wet", "tree", "car"])
    rows = text.strip().splitlines()
    assert rows[0] == "class,IoU,Acc,Dice,Fscore,Precision,Recall"
    assert rows[1] == "sky,66.6667,100.0000,80.0000,80.0000,66.6667,100.0000"
    assert rows[2].startswith('"road, wet",')  # names with commas are quoted
    assert rows[3] == "tree,nan,nan,nan,nan,nan,nan"
    assert len(rows) == 5
