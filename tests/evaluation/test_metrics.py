"""SegMetric and its reports against small hand-computed cases (MMSeg semantics)."""
import json
import math
import os
import socket
import warnings

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from rayseg.evaluation import SegMetric, format_tables, metrics_to_json, per_class_csv
from rayseg.evaluation.report import ALLOWED_METRICS, per_class_columns

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


# ---------------------------------------------------------------- confusion matrix
def _random_pair(seed, n=6, shape=(3, 17, 13)):
    rng = np.random.default_rng(seed)
    pred = rng.integers(0, n, size=shape)
    label = rng.integers(0, n, size=shape)
    label[rng.random(shape) < 0.15] = 255
    return pred, label


@pytest.mark.parametrize("as_tensor", [False, True])
def test_confusion_matrix_agrees_with_the_area_vectors(as_tensor):
    pred, label = _random_pair(3)
    m = SegMetric(6)
    if as_tensor:
        m.update(torch.from_numpy(pred), torch.from_numpy(label))
    else:
        m.update(pred, label)
    areas = m.areas
    conf = areas["confusion"]
    assert conf.shape == (6, 6) and conf.dtype == np.int64
    assert np.array_equal(np.diag(conf), areas["area_intersect"])
    assert np.array_equal(conf.sum(axis=1), areas["area_label"])  # rows: ground truth
    assert np.array_equal(conf.sum(axis=0), areas["area_pred_label"])  # columns: prediction
    assert conf.sum() == int((label != 255).sum())  # ignored pixels are left out
    # One explicit cell: ground truth 2 predicted as 4.
    keep = label != 255
    assert conf[2, 4] == int(((label == 2) & (pred == 4) & keep).sum())
    assert np.array_equal(m.confusion_matrix(normalize=None), conf)


def test_confusion_matrix_normalisation_and_empty_rows():
    m = SegMetric(3)
    # gt 0: predicted 0, 0, 1; gt 1: predicted 1; class 2 never in the labels.
    m.update(np.array([[0, 0, 1, 1]]), np.array([[0, 0, 0, 1]]))
    true = m.confusion_matrix()
    assert true.dtype == np.float64
    assert np.allclose(true, [[2 / 3, 1 / 3, 0], [0, 1, 0], [0, 0, 0]])
    assert np.allclose(m.confusion_matrix("pred"), [[1, 0.5, 0], [0, 0.5, 0], [0, 0, 0]])
    assert np.allclose(m.confusion_matrix("all"), [[0.5, 0.25, 0], [0, 0.25, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="'rows'"):
        m.confusion_matrix("rows")


def test_confusion_merge_of_halves_equals_whole_and_from_areas_keeps_it():
    pred, label = _random_pair(4)
    whole = SegMetric(6)
    whole.update(pred, label)
    first, second = SegMetric(6), SegMetric(6)
    first.update(pred[:1], label[:1])
    second.update(pred[1:], label[1:])
    assert not np.array_equal(first.areas["confusion"], whole.areas["confusion"])
    first.merge(second)
    assert np.array_equal(first.areas["confusion"], whole.areas["confusion"])
    # Summing areas dicts (what distributed evaluation does) gives the whole too.
    a, b = SegMetric(6), SegMetric(6)
    a.update(pred[:2], label[:2])
    b.update(pred[2:], label[2:])
    summed = {k: a.areas[k] + b.areas[k] for k in a.areas}
    rebuilt = SegMetric.from_areas(summed)
    assert np.array_equal(rebuilt.confusion_matrix(None), whole.confusion_matrix(None))
    assert _close(rebuilt.compute()["IoU"], whole.compute()["IoU"])


def test_add_areas_without_confusion_updates_only_the_vectors():
    m = SegMetric(2)
    m.add_areas({"area_intersect": [1, 0], "area_union": [2, 1], "area_pred_label": [1, 1], "area_label": [2, 0]})
    assert m.areas["area_label"].tolist() == [2, 0]
    assert m.areas["confusion"].sum() == 0
    assert m.compute()["aAcc"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match=r"confusion has shape \(2,\), expected \(2, 2\)"):
        m.add_areas({**m.areas, "confusion": [1, 2]})


def _all_reduce_worker(rank, world, port, pred, label, results):
    import torch.distributed as dist

    from rayseg.engine.evaluate import all_reduce_metric

    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    m = SegMetric(6)
    m.update(pred[rank::world], label[rank::world])
    results[rank] = all_reduce_metric(m).areas
    dist.destroy_process_group()


def test_all_reduce_metric_sums_vectors_and_confusion_across_processes():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pred, label = _random_pair(5, shape=(4, 9, 7))
    results = mp.Manager().dict()
    mp.spawn(_all_reduce_worker, args=(2, port, pred, label, results), nprocs=2, join=True)
    whole = SegMetric(6)
    whole.update(pred, label)
    for rank in (0, 1):
        assert set(results[rank]) == set(whole.areas)
        for key, value in whole.areas.items():
            assert np.array_equal(results[rank][key], value), key


# ---------------------------------------------------------------- metric selection in reports
def test_per_class_columns_follow_mmseg_groups():
    assert ALLOWED_METRICS == ("mIoU", "mDice", "mFscore")
    assert per_class_columns(["mIoU"]) == ["IoU", "Acc"]
    assert per_class_columns("mDice") == ["Acc", "Dice"]
    assert per_class_columns(["mFscore"]) == ["Fscore", "Precision", "Recall"]
    assert per_class_columns(["mFscore", "mIoU", "mDice"]) == ["IoU", "Acc", "Dice", "Fscore", "Precision", "Recall"]
    with pytest.raises(ValueError, match=r"'mAP'.*mIoU.*mDice.*mFscore"):
        per_class_columns(["mIoU", "mAP"])
    with pytest.raises(ValueError, match="no metrics"):
        per_class_columns([])


def _cells(line):
    return [c.strip() for c in line.strip("|").split("|")]


def test_format_tables_with_selected_metrics():
    names = ["sky", "road", "tree", "car"]
    assert format_tables(_results(), names) == format_tables(_results(), names, metrics=("mIoU",))
    text = format_tables(_results(), names, metrics=["mDice", "mFscore"])
    lines = text.splitlines()
    assert _cells(next(line for line in lines if "Class" in line)) == [
        "Class", "Acc", "Dice", "Fscore", "Precision", "Recall"]
    assert _cells(next(line for line in lines if "sky" in line)) == [
        "sky", "100.00", "80.00", "80.00", "66.67", "100.00"]
    header = next(line for line in lines if "aAcc" in line)
    assert _cells(header) == ["aAcc", "mAcc", "mDice", "mFscore", "mPrecision", "mRecall"]
    assert _cells(lines[lines.index(header) + 2]) == ["60.00", "66.67", "43.33", "65.00", "55.56", "66.67"]
    with pytest.raises(ValueError, match="'IoU'"):
        format_tables(_results(), names, metrics=["IoU"])


def test_metrics_to_json_with_selected_metrics():
    names = ["sky", "road", "tree", "car"]
    out = metrics_to_json(_results(), names, metrics=["mDice"])
    assert set(out) == {"aAcc", "mAcc", "mDice", "per_class"}
    assert out["mDice"] == pytest.approx(130 / 3)
    assert set(out["per_class"]["sky"]) == {"Acc", "Dice"}
    assert out["per_class"]["tree"]["Dice"] is None
    assert metrics_to_json(_results(), names, metrics=None) == metrics_to_json(_results(), names)
    with pytest.raises(ValueError, match="'miou'"):
        metrics_to_json(_results(), names, metrics=["miou"])


# ---------------------------------------------------------------- tracker scalars
def test_scalar_metrics_names_are_mlflow_safe_and_nan_is_kept():
    from rayseg.apis.eval_outputs import flat_metrics
    from rayseg.engine.evaluate import flatten_eval_metrics
    from rayseg.evaluation import metric_key, scalar_metrics

    assert metric_key("traffic light (sign)#2") == "traffic light _sign__2"
    assert metric_key("a-b_c./d e") == "a-b_c./d e"
    results = _results()
    names = ["sky", "road?", "tree", "car"]
    flat = scalar_metrics(results, names)
    assert flat["IoU.road_"] == pytest.approx(results["IoU"][1]) and math.isnan(flat["IoU.tree"])
    assert set(flat) == {"aAcc", "mIoU", "mAcc", "mDice", "mFscore", "mPrecision", "mRecall"} | {
        f"{s}.{n}" for s in ("IoU", "Acc") for n in ("sky", "road_", "tree", "car")}
    # Validation during training and jobs/test.py name the same quantities the same way.
    assert flatten_eval_metrics(results, names) == flat
    logged = flat_metrics({**results, "classes": names}, "val")
    assert {k[len("val/"):] for k in logged} == set(flat) | {f"Dice.{n}" for n in ("sky", "road_", "tree", "car")}
    assert logged["val/mIoU"] == flat["mIoU"]
    # Without names: results['classes'], else indices.
    assert "IoU.car" in scalar_metrics(results)
    assert "IoU.3" in flatten_eval_metrics({k: v for k, v in results.items() if k != "classes"}, None)
