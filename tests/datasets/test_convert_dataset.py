"""The conversion frame (rayseg.datasets.converters.base) and jobs/convert_dataset.py: Ray tasks, resuming,
failures listed, exit codes. Uses the cityscapes converter on a few generated label-id maps."""
import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from rayseg.datasets.converters import run_conversion
from rayseg.datasets.converters.base import JOURNAL, _read_journal, copy_file, write_bytes

REPO = Path(__file__).resolve().parents[2]
STEMS = ("aachen_000000_000019", "aachen_000001_000019", "aachen_000002_000019")


def label_ids(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((4, 6), value, np.uint8))


def cityscapes_source(root: Path, corrupt: bool) -> Path:
    """Three train label maps (road, sidewalk, car); the last one cut in half when ``corrupt``."""
    (root / "leftImg8bit").mkdir(parents=True, exist_ok=True)
    for stem, value in zip(STEMS, (7, 8, 26)):
        label_ids(root / f"gtFine/train/aachen/{stem}_gtFine_labelIds.png", value)
    if corrupt:
        bad = root / f"gtFine/train/aachen/{STEMS[2]}_gtFine_labelIds.png"
        bad.write_bytes(bad.read_bytes()[:40])
    return root


def output(dst: Path, stem: str) -> Path:
    return dst / f"gtFine/train/aachen/{stem}_gtFine_labelTrainIds.png"


@pytest.fixture
def job(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "jobs"))
    import convert_dataset  # noqa: E402  (the thin job script)

    return convert_dataset


# ----------------------------------------------------------------------------- without Ray
def test_bad_name_option_or_layout_exit_2(job, tmp_path, capsys):
    src = cityscapes_source(tmp_path / "src", corrupt=False)
    dst = tmp_path / "dst"
    assert job.main(["cityscape", str(src), str(dst)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown dataset 'cityscape' for conversion; known: ") and "cityscapes" in err
    assert "\n" not in err
    assert job.main(["cityscapes", str(src), str(dst), "--option", "lnk=true"]) == 2
    err = capsys.readouterr().err
    assert "unknown argument 'lnk'" in err and "Did you mean 'link'" in err
    assert job.main(["cityscapes", str(src), str(dst), "--option", "link"]) == 2
    assert "--option 'link': expected KEY=VALUE" in capsys.readouterr().err
    assert job.main(["cityscapes", str(tmp_path / "src" / "gtFine"), str(dst)]) == 2
    assert "is not the official layout: missing gtFine, leftImg8bit" in capsys.readouterr().err
    assert job.main(["cityscapes", str(src), str(dst), "--nproc", "0"]) == 2
    assert "--nproc must be at least 1" in capsys.readouterr().err
    assert job.main(["cityscapes", str(src)]) == 2
    assert "give NAME SRC DST" in capsys.readouterr().err
    assert not dst.exists()  # nothing was written for a refused command


def test_list_prints_every_converter(job, capsys):
    for argv in (["--list"], ["list"]):
        assert job.main(argv) == 0
        listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
        for name in ("cityscapes", "voc_aug", "pascal_context", "coco_stuff10k", "coco_stuff164k", "loveda"):
            assert name in listed and len(listed[name].split()) > 3  # a name and its one-line description


def test_option_values_are_yaml(job):
    assert job.parse_options(["link=true", "aug_dir=benchmark_RELEASE", "n=3", "empty="]) == {
        "link": True, "aug_dir": "benchmark_RELEASE", "n": 3, "empty": ""}


def test_journal_is_per_converter_and_survives_a_torn_line(tmp_path):
    (tmp_path / JOURNAL).write_text("\n".join([
        json.dumps({"converter": "voc_aug", "key": "cls/a.mat", "outputs": ["/x/a.png"]}),
        json.dumps({"converter": "pascal_context", "key": "mask/b", "outputs": ["/x/b.png"]}),
        json.dumps({"key": "old", "outputs": []}),  # written before entries named their converter
        '{"converter": "voc_aug", "key": "cls/c.m',  # a crash mid-line
    ]) + "\n")
    assert _read_journal(str(tmp_path), "voc_aug") == {"cls/a.mat": ["/x/a.png"], "old": []}
    assert set(_read_journal(str(tmp_path), "pascal_context")) == {"mask/b", "old"}


def test_atomic_file_helpers(tmp_path):
    src = Path(write_bytes(str(tmp_path / "a" / "x.bin"), b"abc"))
    assert src.read_bytes() == b"abc"
    assert Path(copy_file(str(src), str(tmp_path / "b" / "x.bin"))).read_bytes() == b"abc"
    linked = Path(copy_file(str(src), str(tmp_path / "c" / "x.bin"), link=True))
    assert linked.stat().st_ino == src.stat().st_ino
    assert copy_file(str(src), str(src)) == str(src)  # in place: nothing to do
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b", "c", "x.bin", "x.bin", "x.bin"]  # no temps


# ----------------------------------------------------------------------------- with Ray
@pytest.mark.slow
def test_failures_listed_then_resumed(job, ray_head, tmp_path, capsys):
    src = cityscapes_source(tmp_path / "cityscapes", corrupt=True)
    dst = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "jobs" / "convert_dataset.py"), "cityscapes", str(src), str(dst),
           "--address", ray_head.address, "--no-progress", "--nproc", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    bad = src / f"gtFine/train/aachen/{STEMS[2]}_gtFine_labelIds.png"
    assert "cityscapes: 2 converted, 0 already done (skipped), 1 failed, of 3 units" in proc.stdout
    assert f"  {bad}: DataError: cannot read image {bad}" in proc.stdout
    assert (cv2.imread(str(output(dst, STEMS[0])), cv2.IMREAD_UNCHANGED) == 0).all()  # road
    assert (cv2.imread(str(output(dst, STEMS[1])), cv2.IMREAD_UNCHANGED) == 1).all()  # sidewalk
    assert not output(dst, STEMS[2]).exists()
    assert not (dst / "train.txt").exists()  # split lists wait until every unit is done

    label_ids(bad, 26)  # the user replaces the broken file and runs the same command again
    assert job.main(["cityscapes", str(src), str(dst), "--no-progress", "--nproc", "1"]) == 0
    out = capsys.readouterr().out
    assert "cityscapes: 1 converted, 2 already done (skipped), 0 failed, of 3 units" in out
    assert (cv2.imread(str(output(dst, STEMS[2])), cv2.IMREAD_UNCHANGED) == 13).all()  # car
    assert (dst / "train.txt").read_text().splitlines() == [f"aachen/{s}" for s in STEMS]

    report = run_conversion("cityscapes", str(src), str(dst), progress=False)
    assert (report.done, report.skipped, report.ok, report.outputs) == (0, 3, True, 4)
    output(dst, STEMS[1]).unlink()  # an output that vanished is made again, whatever the journal says
    report = run_conversion("cityscapes", str(src), str(dst), nproc=1, progress=False)
    assert (report.done, report.skipped) == (1, 2) and output(dst, STEMS[1]).is_file()
