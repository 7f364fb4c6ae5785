"""``data.on_bad_sample`` (error | skip) and ``data.max_bad_samples``: faults injected into real files, run on
the session's real Ray head. A truncated PNG, a mask of another size, a label value out of range (200 with 4
classes) and a file gone after listing; each either stops the run with one ``error:`` line naming the file,
or is dropped, named once and counted."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import REPO_ROOT
from rayseg.config import load_config
from rayseg.datasets import CustomDataset
from rayseg.datasets.bad_samples import BadSampleLedger, BadSamplePolicy
from rayseg.datasets.ray_data import stream_indices
from rayseg.errors import ConfigError, DataError
from rayseg.spec.resolve import resolve_run

TINY_CONFIG = REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml"
CLASSES = ("a", "b", "c", "d")


# ----------------------------------------------------------------------------------------------- faults
def truncate(path: Path) -> Path:
    """Cut a PNG in half, as an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def halve_mask(path: Path) -> Path:
    """Keep the top half of a mask: it no longer has its image's size."""
    mask = np.asarray(Image.open(path))
    Image.fromarray(np.ascontiguousarray(mask[: mask.shape[0] // 2])).save(path)
    return path


def put_label(path: Path, value: int = 200) -> Path:
    """Write a label value no class has (the datasets here have 4 classes)."""
    mask = np.array(Image.open(path))
    mask[:4, :4] = value
    Image.fromarray(mask).save(path)
    return path


# ----------------------------------------------------------------------------------------------- config
def _spec(*options):
    return resolve_run(load_config(TINY_CONFIG, list(options)), work_dir="/tmp/rayseg-spec-test/run")


def test_the_keys_are_resolved_into_the_data_spec_and_checked():
    data = _spec().data
    assert (data.on_bad_sample, data.max_bad_samples) == ("error", 100)  # the documented defaults
    data = _spec("data.on_bad_sample=skip", "data.max_bad_samples=0").data
    assert (data.on_bad_sample, data.max_bad_samples) == ("skip", 0)
    with pytest.raises(ConfigError, match=r"data.on_bad_sample must be one of error, skip, got 'ignore'"):
        _spec("data.on_bad_sample=ignore")
    with pytest.raises(ConfigError, match=r"data.max_bad_samples must be 0 or more, got -1"):
        _spec("data.max_bad_samples=-1")
    with pytest.raises(ConfigError, match=r"key 'data.max_bad_samples' must be an int"):
        _spec("data.max_bad_samples=lots")
    with pytest.raises(ConfigError, match=r"unknown key 'data.on_bad_samples'; did you mean 'on_bad_sample'"):
        _spec("data.on_bad_samples=skip")


def test_the_ledger_counts_each_file_once_and_says_when_to_stop(capsys):
    ledger = BadSampleLedger(max_bad=2)  # the actor's class, called here in-process
    assert ledger.report("data.train", 10, "/d/a.png", "cannot decode image /d/a.png") is None
    assert ledger.report("data.train", 10, "/d/a.png", "cannot decode image /d/a.png") is None  # next epoch
    assert ledger.report("data.val", 10, "/d/b.png", "mask /d/m/b.png has label values [200]") is None
    assert ledger.count() == 2
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["skipped bad sample 1 of at most 2 (data.max_bad_samples): cannot decode image /d/a.png",
                       "skipped bad sample 2 of at most 2 (data.max_bad_samples): mask /d/m/b.png has label "
                       "values [200] (the sample of image /d/b.png)"]
    verdict = ledger.report("data.train", 10, "/d/c.png", "cannot read /d/c.png: gone")
    assert verdict == ("more than 2 bad samples (data.max_bad_samples: 2, data.on_bad_sample: skip); "
                       "the last one: cannot read /d/c.png: gone")
    # More than half of a split bad is a wrong dataset, whatever the cap.
    ledger = BadSampleLedger(max_bad=100)
    assert [ledger.report("data.val", 4, f"/v/{i}.png", f"bad /v/{i}.png") for i in range(2)] == [None, None]
    assert ledger.report("data.val", 4, "/v/2.png", "bad /v/2.png").startswith(
        "3 of the 4 samples of data.val are bad, more than half")


def test_the_training_stream_is_long_enough_whatever_is_dropped():
    assert BadSamplePolicy("error", 100).stream_rows(14, 24) == 14
    rng = np.random.default_rng(0)
    for num_samples in (2, 3, 8, 24):
        for max_bad in (0, 1, 3, 100):
            policy = BadSamplePolicy("skip", max_bad, ledger="unused here")
            bad_count = min(max_bad, num_samples // 2)  # one more stops the run
            for rows in (1, 6, 14, 50):
                total = policy.stream_rows(rows, num_samples)
                assert total <= 2 * (rows + num_samples)
                for trial in range(20):  # any start position, any epoch order, any bad files ...
                    start = int(rng.integers(0, 5 * num_samples))
                    indices = stream_indices(np.arange(start, start + total), num_samples, seed=trial)
                    bad = (indices[:bad_count] if trial % 2 else  # ... or those the window starts with
                           rng.choice(num_samples, size=bad_count, replace=False))
                    assert np.isin(indices, bad, invert=True).sum() >= rows, (rows, total, sorted(bad), start)


# ----------------------------------------------------------------------------------------------- Ray Data
def _tagged_dataset(root: Path, n: int = 12, size=(32, 40), **kwargs) -> CustomDataset:
    """Image i is filled with 20*i+5 and its mask with label i % 4, so a row shows which sample it is."""
    for sub in ("img", "ann"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        if not (root / "img" / f"{i:03d}.png").exists():
            cv2.imwrite(str(root / "img" / f"{i:03d}.png"), np.full((*size, 3), 20 * i + 5, np.uint8))
            cv2.imwrite(str(root / "ann" / f"{i:03d}.png"), np.full(size, i % 4, np.uint8))
    return CustomDataset(data_root=str(root), img_dir="img", ann_dir="ann", img_suffix=".png",
                         seg_map_suffix=".png", classes=CLASSES, **kwargs)


TRAIN_PIPELINE = [{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations"},
                  {"type": "RandomCrop", "crop_size": [24, 24]}, {"type": "Pad", "size": [24, 24]}]
TEST_PIPELINE = [{"type": "LoadImageFromFile"},
                 {"type": "MultiScaleFlipAug", "img_scale": [20, 16], "flip": False,
                  "transforms": [{"type": "Resize", "keep_ratio": True}]}]


@pytest.mark.slow
def test_skip_drops_bad_rows_from_both_streams_and_counts_each_file_once(ray_head, tmp_path):
    import ray

    from rayseg.datasets.ray_data import _PipelineActor, build_eval_stream, build_train_stream

    train_set = _tagged_dataset(tmp_path, pipeline=TRAIN_PIPELINE)
    test_set = _tagged_dataset(tmp_path, pipeline=TEST_PIPELINE, test_mode=True)
    faults = {2: truncate(tmp_path / "img" / "002.png"), 5: halve_mask(tmp_path / "ann" / "005.png"),
              7: put_label(tmp_path / "ann" / "007.png")}
    faults[9] = tmp_path / "ann" / "009.png"
    faults[9].unlink()  # gone after the listing: the read step fails
    policy = BadSamplePolicy.start("skip", max_bad=10)

    rows = build_train_stream(train_set, num_rows=24, seed=1, num_actors=2, actor_num_cpus=0.5,
                              bad_samples=policy).take_all()
    assert len(rows) == 24 - 2 * len(faults)  # two epochs, each without the four bad samples
    for row in rows:
        index = (int(np.median(row["img"])) - 5) // 20
        assert index not in faults and set(np.unique(row["gt_semantic_seg"])) - {255} == {index % 4}
    assert policy.count() == len(faults)

    # Validation rows come one per batch: a bad one leaves a batch with no row at all.
    evaluated = build_eval_stream(test_set, num_actors=1, actor_num_cpus=0.5, bad_samples=policy).take_all()
    assert sorted(int(r["index"]) for r in evaluated) == [i for i in range(12) if i not in faults]
    assert policy.count() == len(faults)  # the same files: not counted again
    reasons = ray.get(policy.ledger.samples.remote())
    assert sorted(reasons) == sorted(str(tmp_path / "img" / f"{i:03d}.png") for i in faults)
    for i, path in faults.items():  # each reason names the file at fault
        assert str(path) in reasons[str(tmp_path / "img" / f"{i:03d}.png")]

    # A transform batch whose every row is bad gives Ray Data an empty generator, not a zero-row dict.
    actor = _PipelineActor(train_set, "train", seed=0, bad_samples=policy)
    batch = {"position": np.array([0, 1]), "index": np.array([2, 7]), "read_error": np.array(["", ""], object),
             "img_bytes": np.array([(tmp_path / "img" / "002.png").read_bytes(),
                                    (tmp_path / "img" / "007.png").read_bytes()], object),
             "seg_bytes": np.array([(tmp_path / "ann" / "002.png").read_bytes(),
                                    (tmp_path / "ann" / "007.png").read_bytes()], object)}
    assert list(actor(batch)) == []


# ----------------------------------------------------------------------------------------------- training
def faulty_copy(demo_data: Path, dst: Path, num_train: int = 8, num_val: int = 3) -> Path:
    """A few images of the session's demo data, copied so that faults can be written into them."""
    for split, n in (("train", num_train), ("val", num_val)):
        for kind in ("img_dir", "ann_dir"):
            (dst / kind / split).mkdir(parents=True)
            for i in range(n):
                name = f"{split}_{i:05d}.png"
                shutil.copy(demo_data / kind / split / name, dst / kind / split / name)
    return dst


def run_options(root: Path, *extra: str) -> list:
    # 8 training images with 2 bad ones and 12 samples consumed: every bad file is met before the end, and
    # deterministic=true keeps block order, so the count at the last report is exact.
    return [f"data.{split}.data_root={root}" for split in ("train", "val", "test")] + [
        "runner.max_iters=6", "log_config.interval=1", "evaluation.interval=3", "checkpoint_config.interval=3",
        "scaling.num_workers=1", "deterministic=true", *extra]


def train_job(ray_head, work: Path, options: list) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "jobs/train.py", str(TINY_CONFIG), "--work-dir", str(work), "--cfg-options", *options]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT, timeout=600,
                          env=dict(os.environ, RAY_ADDRESS=ray_head.address))


def logged(work: Path) -> list:
    return [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]


@pytest.fixture
def faulty_data(demo_data, tmp_path) -> tuple:
    root = faulty_copy(demo_data, tmp_path / "data")
    bad = [truncate(root / "img_dir" / "train" / "train_00003.png"),
           halve_mask(root / "ann_dir" / "train" / "train_00005.png"),
           put_label(root / "ann_dir" / "val" / "val_00001.png")]
    return root, bad


@pytest.mark.slow
def test_skip_trains_to_the_end_naming_each_bad_file_once(ray_head, faulty_data, tmp_path):
    from mlflow.tracking import MlflowClient

    root, bad = faulty_data
    work = tmp_path / "skip"
    proc = train_job(ray_head, work, run_options(root, "data.on_bad_sample=skip"))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    records = logged(work)
    assert [r["iter"] for r in records] == list(range(1, 7))
    assert records[-1]["bad_samples"] == len(bad)
    skipped = [line for line in output.splitlines() if "skipped bad sample" in line]
    assert len(skipped) == len(bad), output[-4000:]
    for path in bad:
        assert output.count(str(path)) == 1, f"{path} named {output.count(str(path))} times:\n{output[-4000:]}"
    assert "label values [200]" in output and "cannot decode image" in output and "is 64x32 (WxH)" in output
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert run.info.status == "FINISHED"
    assert client.get_metric_history(run.info.run_id, "train/bad_samples")[-1].value == len(bad)


@pytest.mark.slow
def test_error_stops_with_one_line_naming_the_file_and_keeps_what_was_written(ray_head, demo_data, tmp_path):
    from rayseg.engine.checkpoint import read_checkpoint

    root = faulty_copy(demo_data, tmp_path / "data")
    mask = put_label(root / "ann_dir" / "val" / "val_00001.png")  # met by the first validation, at iteration 3
    work = tmp_path / "error"
    proc = train_job(ray_head, work, run_options(root, "checkpoint_config.interval=2"))  # the default: error
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2, (proc.stdout + proc.stderr)[-4000:]
    assert len(errors) == 1, proc.stderr[-4000:]
    assert errors[0].startswith(f"error: mask {mask} has label values [200] outside 0..3"), errors
    assert "Traceback" not in proc.stdout + proc.stderr
    # What the run wrote before the fault is whole: two log records, the iteration-2 checkpoint.
    assert [r["iter"] for r in logged(work)] == [1, 2]
    ckpts = sorted(p.name for p in (work / "ray_results" / "error").glob("iter_*"))
    assert ckpts == ["iter_00000002"]
    assert read_checkpoint(str(work / "ray_results" / "error" / "iter_00000002"))["meta"]["iter"] == 2


@pytest.mark.slow
def test_skip_stops_beyond_max_bad_samples(ray_head, faulty_data, tmp_path):
    from rayseg.engine.trainer import train

    root, bad = faulty_data
    cfg = load_config(str(TINY_CONFIG), run_options(root, "data.on_bad_sample=skip", "data.max_bad_samples=1"))
    with pytest.raises(DataError) as info:
        train(cfg, work_dir=str(tmp_path / "cap"), config_path=str(TINY_CONFIG))
    assert type(info.value) is DataError  # the rayseg error itself, not Ray's wrapping of it
    message = str(info.value)
    assert message.startswith("more than 1 bad sample (data.max_bad_samples: 1, data.on_bad_sample: skip); "
                              "the last one: "), message
    assert any(str(path) in message for path in bad[:2]), message  # one of the two training files
