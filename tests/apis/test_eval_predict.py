"""Distributed evaluation (jobs/test.py) and batch prediction (jobs/predict.py) on real Ray actors.

The model is the tiny shapes model with perturbed (not trained) weights: the checks are about plumbing
and exactness, not accuracy, so no training is needed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow
TINY_CONFIG = REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml"
CLASSES = ["background", "circle", "rectangle", "triangle"]


def options(root: Path) -> list[str]:
    return [f"data.{split}.data_root={root}" for split in ("train", "val", "test")]


def assert_same_results(a: dict, b: dict) -> None:
    """Every metric identical (NaN equal to NaN): integer areas leave no room for rounding."""
    keys = set(a) - {"confusion"}
    assert keys <= set(b)
    for key in sorted(keys):
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


@pytest.fixture(scope="module")
def ckpt(demo_data, tmp_path_factory):
    """latest.pth (rayseg's weights file) and a Ray checkpoint folder holding the same weights."""
    from inference_fixtures import perturbed_tiny_model

    from rayseg.config import load_config
    from rayseg.engine.checkpoint import weights_file_payload

    root = tmp_path_factory.mktemp("eval_ckpt")
    cfg = load_config(str(TINY_CONFIG), options(demo_data))
    model = perturbed_tiny_model(cfg)
    latest = root / "latest.pth"
    torch.save(weights_file_payload(model.state_dict(), cfg, 7), latest)
    folder = root / "iter_00000007"
    folder.mkdir()
    torch.save({"state_dict": model.state_dict(), "meta": {"iter": 7}}, folder / "checkpoint.pt")
    return {"cfg": cfg, "latest": str(latest), "folder": str(folder), "root": root}


@pytest.fixture(scope="module")
def distributed(ray_head, ckpt, tmp_path_factory):
    """One 2-actor evaluation of the val split from the Ray checkpoint folder, with --show-dir."""
    from rayseg.apis.distributed_eval import evaluate_distributed

    show = tmp_path_factory.mktemp("show")
    results = evaluate_distributed(ckpt["cfg"], ckpt["folder"], split="val", num_workers=2, show_dir=str(show),
                                   progress=False)
    return results, show


def test_distributed_equals_single_process_to_the_last_digit(distributed, ckpt):
    from rayseg.apis import evaluate_checkpoint

    results, _ = distributed
    for checkpoint in (ckpt["latest"], ckpt["folder"]):
        single = evaluate_checkpoint(ckpt["cfg"], checkpoint, split="val", progress=False)
        assert_same_results(single, results)
    assert results["classes"] == CLASSES
    assert 0 < results["mIoU"] < 100 and not np.isnan(results["aAcc"])
    confusion = results["confusion"]
    assert confusion.shape == (4, 4) and confusion.dtype == np.int64
    assert confusion.sum() == 6 * 64 * 64  # every pixel of the 6 val images counted once, none twice


def test_validation_in_training_equals_the_evaluation_job(ray_head, distributed, ckpt):
    """engine.evaluate.evaluate_shard (validation inside the training workers, fed by the training's
    eval stream) predicts through the same path as the jobs/test.py actors: the same numbers."""
    from rayseg.datasets import build_dataset
    from rayseg.datasets.ray_data import DeviceNormalizer, build_eval_stream
    from rayseg.engine.evaluate import evaluate_shard
    from rayseg.inference import load_inference_model

    results, _ = distributed
    model = load_inference_model(ckpt["cfg"], ckpt["latest"])
    val_cfg = ckpt["cfg"]["data"]["val"]
    normalizer = DeviceNormalizer.from_pipeline(val_cfg["pipeline"])
    shard = build_eval_stream(build_dataset(val_cfg))
    in_training = evaluate_shard(model, shard, normalizer, 4, "cpu", class_names=CLASSES)
    assert_same_results(in_training, results)


def test_show_dir_has_one_side_by_side_image_per_val_image(distributed, demo_data):
    _, show = distributed
    names = sorted(p.stem for p in (demo_data / "img_dir" / "val").iterdir())
    written = sorted(show.glob("*.jpg"))
    assert [p.stem for p in written] == names
    for path in written:
        assert cv2.imread(str(path)).shape == (64, 128, 3)  # prediction | ground truth at 64×64


def test_in_process_aug_test_matches_the_ray_actors_and_differs_from_plain(ray_head, ckpt, distributed):
    from rayseg.apis.distributed_eval import evaluate_distributed

    plain, _ = distributed
    local = evaluate_distributed(ckpt["cfg"], ckpt["latest"], split="val", num_workers=0, aug_test=True,
                                 progress=False)
    remote = evaluate_distributed(ckpt["cfg"], ckpt["latest"], split="val", num_workers=1, aug_test=True,
                                  progress=False)
    assert_same_results(local, remote)  # the actors really receive and use the augmented variants
    assert 0 <= local["mIoU"] <= 100 and local["confusion"].sum() == 6 * 64 * 64
    assert not np.array_equal(local["confusion"], plain["confusion"])


def run_job(script: str, *args: str, env=None) -> subprocess.CompletedProcess:
    env = dict(os.environ if env is None else env)
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, str(REPO_ROOT / "jobs" / script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO_ROOT, env=env)


def test_jobs_test_eval_mdice_writes_json_and_confusion_png(ckpt, demo_data, tmp_path):
    out = tmp_path / "res" / "metrics.json"
    proc = run_job("test.py", str(TINY_CONFIG), ckpt["latest"], "--split", "val", "--eval", "mDice",
                   "--out", str(out), "--no-progress", "--cfg-options", *options(demo_data))
    assert proc.returncode == 0, proc.stderr
    header = next(line for line in proc.stdout.splitlines() if "Class" in line)
    assert "Dice" in header and "IoU" not in header  # --eval picks the table's columns
    assert "mDice" in proc.stdout and "triangle" in proc.stdout
    metrics = json.loads(out.read_text())
    assert set(metrics) >= {"aAcc", "mIoU", "mAcc", "mDice", "per_class"}  # the JSON keeps every metric
    assert set(metrics["per_class"]) == set(CLASSES)
    png = tmp_path / "res" / "metrics_confusion.png"
    assert png.is_file() and cv2.imread(str(png)).shape[0] >= 600


def test_jobs_test_logs_to_new_and_existing_mlflow_runs(ray_head, ckpt, demo_data, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    common = [str(TINY_CONFIG), ckpt["latest"], "--split", "val", "--no-progress",
              "--cfg-options", *options(demo_data), f"mlflow.tracking_uri={uri}", "mlflow.experiment_name=ev"]
    proc = run_job("test.py", *common, "--mlflow")
    assert proc.returncode == 0, proc.stderr
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("ev").experiment_id])
    assert run.data.tags["rayseg.kind"] == "evaluation" and run.info.status == "FINISHED"
    assert {"val/mIoU", "val/aAcc", "val/IoU.triangle"} <= set(run.data.metrics)
    assert client.get_metric_history(run.info.run_id, "val/mIoU")[0].step == 7  # the checkpoint's iteration
    assert {a.path for a in client.list_artifacts(run.info.run_id, "evaluation/val")} == {
        f"evaluation/val/{name}" for name in ("confusion.png", "table.txt", "per_class.csv", "metrics.json")}
    assert str(run.info.artifact_uri).startswith(f"file://{tmp_path}")  # beside the store, not ./mlruns

    # An existing run, evaluated by 2 actors on the test cluster: same numbers, logged into that run.
    other = client.create_run(client.get_experiment_by_name("ev").experiment_id).info.run_id
    proc = run_job("test.py", *common, "--mlflow-run-id", other, "--num-workers", "2",
                   "--address", ray_head.address, "--out", str(tmp_path / "m.json"))
    assert proc.returncode == 0, proc.stderr
    logged = client.get_run(other).data.metrics
    assert logged["val/mIoU"] == pytest.approx(run.data.metrics["val/mIoU"], abs=0, rel=1e-12)
    names = {a.path for a in client.list_artifacts(other, "evaluation/val")}
    assert {"evaluation/val/metrics.json", "evaluation/val/confusion.png"} <= names  # whatever --out is called

    proc = run_job("test.py", *common, "--mlflow-run-id", "0" * 32)
    assert proc.returncode == 2 and "error:" in proc.stderr and "0" * 32 in proc.stderr


def test_jobs_test_unknown_split_is_a_clear_error(ckpt, demo_data):
    proc = run_job("test.py", str(TINY_CONFIG), ckpt["latest"], "--split", "nope", "--cfg-options",
                   *options(demo_data))
    assert proc.returncode == 2 and "data.nope" in proc.stderr


@pytest.fixture(scope="module")
def predicted(ray_head, ckpt, demo_data, tmp_path_factory):
    """jobs/predict.py on 2 replicas over a folder (with a corrupt image), a glob (with a .txt file) and a
    file:// URI of a second-size image."""
    root = tmp_path_factory.mktemp("predict")
    folder, loose = root / "photos", root / "loose"
    (folder / "sub").mkdir(parents=True)
    loose.mkdir()
    images = sorted((demo_data / "img_dir" / "val").glob("*.png"))
    for i, path in enumerate(images[:3]):
        (folder / ("sub" if i == 0 else "") / path.name).write_bytes(path.read_bytes())
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))  # a PNG header, then garbage
    (loose / "notes.txt").write_text("not an image")
    cv2.imwrite(str(loose / "wide.jpg"), cv2.resize(cv2.imread(str(images[3])), (90, 50)))
    big = root / "big.png"
    cv2.imwrite(str(big), cv2.resize(cv2.imread(str(images[4])), (80, 72)))
    out = root / "out"
    proc = run_job("predict.py", str(TINY_CONFIG), ckpt["latest"], str(folder), str(loose / "*"), f"file://{big}",
                   "--out-dir", str(out), "--overlay", "--num-replicas", "2", "--batch-size", "2",
                   "--address", ray_head.address, "--no-progress", "--cfg-options", *options(demo_data))
    sources = {"sub/" + images[0].stem: folder / "sub" / images[0].name, images[1].stem: folder / images[1].name,
               images[2].stem: folder / images[2].name, "wide": loose / "wide.jpg", "big": big}
    return proc, out, sources


def test_predict_writes_outputs_for_good_images_and_reports_bad_ones(predicted):
    from rayseg.datasets.demo import DEMO_PALETTE

    proc, out, sources = predicted
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "5 of 7 image(s) written, 2 failed" in proc.stdout
    failed = [line for line in proc.stdout.splitlines() if line.strip().startswith("FAILED")]
    assert len(failed) == 2
    assert any("broken.png" in line for line in failed) and any("notes.txt" in line for line in failed)
    written = sorted(str(p.relative_to(out).with_suffix("")) for p in out.rglob("*.png"))
    assert written == sorted(sources)
    for name, src in sources.items():
        h, w = cv2.imread(str(src)).shape[:2]
        label = Image.open(out / f"{name}.png")
        assert label.mode == "P" and label.size == (w, h)
        assert np.asarray(label.getpalette()[:12]).reshape(4, 3).tolist() == DEMO_PALETTE
        assert cv2.imread(str(out / f"{name}.jpg")).shape == (h, w, 3)


def test_predict_label_png_equals_inference_model(predicted, ckpt):
    from rayseg.apis import inference_model, init_model

    _, out, sources = predicted
    model = init_model(ckpt["cfg"], ckpt["latest"])
    for name, src in sources.items():
        expected = inference_model(model, str(src))
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"{name}.png")), expected, err_msg=name)


def test_expand_inputs_names_dedupes_and_reports(tmp_path):
    from rayseg.apis.batch_predict import expand_inputs

    (tmp_path / "a" / "deep").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    for rel in ("a/x.png", "a/deep/y.JPG", "a/skip.txt", "b/x.png"):
        (tmp_path / rel).write_bytes(b"")
    items, failures = expand_inputs([str(tmp_path / "a"), str(tmp_path / "b" / "*.png"), str(tmp_path / "a" / "x.png"),
                                     f"file://{tmp_path / 'b'}", str(tmp_path / "none.png"), str(tmp_path / "c*")])
    assert [n for _, n in items] == ["x", "deep/y", "x_2", "x_3"]  # folder search skips .txt; clashes renamed
    assert items[3][0] == f"file://{tmp_path / 'b' / 'x.png'}"
    assert failures == [(str(tmp_path / "none.png"), "no such file or folder"),
                        (str(tmp_path / "c*"), "no file matches this pattern")]


def test_default_num_workers_is_in_process_without_a_cluster(monkeypatch):
    from rayseg.apis.distributed_eval import default_num_workers

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert default_num_workers() == 0
