"""The dataset check (rayseg.datasets.check, jobs/check_dataset.py) on tiny generated files with injected faults."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from rayseg.datasets import build_dataset
from rayseg.datasets.check import check_dataset, check_headers, dataset_for_check
from rayseg.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["a", "b", "c", "d"]
LOAD = [{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations"}]


def write_pair(root, name, hw=(8, 10), mask_hw=None, values=(0, 1, 2, 3)):
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "ann").mkdir(parents=True, exist_ok=True)
    img = np.full((*hw, 3), 60, np.uint8)
    img[:, :, 1] = np.arange(hw[1], dtype=np.uint8)[None, :]
    mh, mw = mask_hw or hw
    assert cv2.imwrite(str(root / "img" / f"{name}.png"), img)
    assert cv2.imwrite(str(root / "ann" / f"{name}.png"), np.resize(np.array(values, np.uint8), mh * mw).reshape(mh, mw))


def faulty_root(root):
    """a: clean; b: mask 9 wide for a 10-wide image; c: label 200 (4 classes); d: no mask; e: half a PNG."""
    write_pair(root, "a")
    write_pair(root, "b", mask_hw=(8, 9))
    write_pair(root, "c", values=(0, 200, 1))
    write_pair(root, "d")
    (root / "ann" / "d.png").unlink()
    write_pair(root, "e")
    data = (root / "img" / "e.png").read_bytes()
    (root / "img" / "e.png").write_bytes(data[: len(data) // 2])
    return {"type": "CustomDataset", "data_root": str(root), "img_dir": "img", "ann_dir": "ann",
            "img_suffix": ".png", "classes": CLASSES, "pipeline": LOAD}


def expected_faults(root, full):
    faults = {(str(root / "ann" / "b.png"), "size_mismatch"), (str(root / "img" / "d.png"), "missing_mask"),
              (str(root / "img" / "e.png"), "unreadable")}
    return faults | ({(str(root / "ann" / "c.png"), "label_out_of_range")} if full else set())


def test_header_check_without_ray(tmp_path):
    faulty_root(tmp_path)
    img, ann = tmp_path / "img", tmp_path / "ann"
    assert check_headers(str(img / "a.png"), str(ann / "a.png")) == []
    assert check_headers(str(img / "c.png"), str(ann / "c.png")) == []  # label values need --full
    (size,) = check_headers(str(img / "b.png"), str(ann / "b.png"))
    assert size.kind == "size_mismatch" and "9x8" in size.reason and str(img / "b.png") in size.reason
    (missing,) = check_headers(str(img / "d.png"), str(ann / "d.png"))
    assert missing.path == str(img / "d.png") and str(ann / "d.png") in missing.reason
    (cut,) = check_headers(str(img / "e.png"), str(ann / "e.png"))
    assert cut.path == str(img / "e.png") and cut.kind == "unreadable" and "truncated" in cut.reason
    Image.fromarray(np.zeros((8, 10, 3), np.uint8)).save(ann / "a.png")  # a colour mask
    (colour,) = check_headers(str(img / "a.png"), str(ann / "a.png"))
    assert colour.kind == "bad_mask_format" and "RGB" in colour.reason


def test_validate_uses_the_header_check(tmp_path):
    cfg = faulty_root(tmp_path)
    with pytest.raises(DataError, match="no mask"):
        build_dataset(cfg)  # construction still refuses d's missing mask; the check lists it instead
    write_pair(tmp_path, "d")
    with pytest.raises(DataError) as exc:
        build_dataset(cfg).validate()
    msg = str(exc.value)
    assert "2 problem(s)" in msg and str(tmp_path / "ann" / "b.png") in msg and str(tmp_path / "img" / "e.png") in msg


def test_lenient_listing_equals_the_datasets_own(demo_data):
    cfg = {"type": "DemoShapesDataset", "data_root": str(demo_data), "img_dir": "img_dir/train",
           "ann_dir": "ann_dir/train", "pipeline": LOAD}
    lenient = dataset_for_check(cfg, "data.train")
    assert lenient.samples == build_dataset(cfg).samples
    assert type(lenient).__name__ == "DemoShapesDataset" and lenient.CLASSES == build_dataset(cfg).CLASSES
    with pytest.raises(ConfigError, match=r"data\.val: dataset 'DemoShapesDataset': unknown argument 'img_dri'"):
        dataset_for_check({**cfg, "img_dri": "x"}, "data.val")
    with pytest.raises(DataError, match=r"data\.val: annotation directory .*nope does not exist"):
        dataset_for_check({**cfg, "ann_dir": "nope"}, "data.val")


@pytest.mark.slow
def test_check_reports_each_fault_with_its_path_and_kind(ray_head, tmp_path):
    cfg = faulty_root(tmp_path)
    dataset = dataset_for_check(cfg)
    headers = check_dataset(dataset, progress=False)
    assert headers.num_samples == 5 and not headers.ok and headers.class_pixels is None
    assert {(p.path, p.kind) for p in headers.problems} == expected_faults(tmp_path, full=False)
    full = check_dataset(dataset, full=True, progress=False)
    assert {(p.path, p.kind) for p in full.problems} == expected_faults(tmp_path, full=True)
    assert [p.path for p in full.problems] == sorted(p.path for p in full.problems)  # sample order (a..e)
    (bad,) = [p for p in full.problems if p.kind == "label_out_of_range"]
    assert "[200]" in bad.reason and "0..3" in bad.reason
    assert full.out_of_range_pixels == int((np.array(Image.open(tmp_path / "ann" / "c.png")) == 200).sum())
    # The dataset's label rules decide what is out of range: mapping 200 to ignored makes c valid.
    mapped = check_dataset(dataset_for_check({**cfg, "label_map": {200: 255}}), full=True, progress=False)
    assert not [p for p in mapped.problems if p.kind == "label_out_of_range"]
    assert mapped.ignore_pixels == full.out_of_range_pixels and mapped.out_of_range_pixels == 0


@pytest.mark.slow
def test_clean_dataset_has_no_problems_and_exact_class_counts(ray_head, demo_data):
    cfg = {"type": "DemoShapesDataset", "data_root": str(demo_data), "img_dir": "img_dir/val",
           "ann_dir": "ann_dir/val", "pipeline": LOAD}
    report = check_dataset(dataset_for_check(cfg), full=True, progress=False)
    counts = np.zeros(256, np.int64)
    for mask in sorted((demo_data / "ann_dir" / "val").glob("*.png")):
        counts += np.bincount(np.array(Image.open(mask)).ravel(), minlength=256)
    assert report.ok and report.num_samples == 6
    assert report.class_pixels == counts[:4].tolist() and report.ignore_pixels == counts[255]
    assert report.out_of_range_pixels == 0 and abs(sum(report.class_frequencies) - 1) < 1e-9


def write_config(path, data):
    path.write_text(json.dumps({"data": data}))  # JSON is YAML
    return path


@pytest.mark.slow
def test_job_script_exit_codes_and_report(ray_head, tmp_path, demo_data):
    bad = write_config(tmp_path / "bad.yaml", {"train": faulty_root(tmp_path / "bad")})
    out = tmp_path / "report.json"
    cmd = [sys.executable, str(REPO / "jobs" / "check_dataset.py"), "--address", ray_head.address, "--no-progress"]
    proc = subprocess.run([*cmd, str(bad), "--full", "--out", str(out)], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "data.train: 5 samples checked" in proc.stdout
    assert f"{tmp_path / 'bad' / 'img' / 'd.png'}: no mask" in proc.stdout
    assert f"{tmp_path / 'bad' / 'ann' / 'c.png'}: label values [200]" in proc.stdout
    report = json.loads(out.read_text())["splits"]["train"]
    assert len(report["problems"]) == 4 and report["class_pixels"] is not None

    clean = {"type": "DemoShapesDataset", "data_root": str(demo_data), "img_dir": "img_dir/val",
             "ann_dir": "ann_dir/val", "pipeline": LOAD}
    good = write_config(tmp_path / "good.yaml", {"val": clean, "test": clean})
    proc = subprocess.run([*cmd, str(good)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "data.val: 6 samples checked (headers), no problems" in proc.stdout
    assert "data.test: the same dataset as data.val, not read again" in proc.stdout


def test_job_script_config_errors_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO / "jobs"))
    import check_dataset as job  # noqa: E402  (the thin job script; these errors come before Ray starts)

    assert job.main([str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err
    config = write_config(tmp_path / "c.yaml", {"train": {"type": "CustomDataset", "data_root": str(tmp_path),
                                                          "img_dir": "nope", "classes": CLASSES, "pipeline": LOAD}})
    assert job.main([str(config)]) == 2
    assert capsys.readouterr().err.strip() == f"error: data.train: image directory {tmp_path / 'nope'} does not exist"
    assert job.main([str(config), "--split", "val"]) == 2
    assert "data.val is not set" in capsys.readouterr().err
