"""The synthetic shapes dataset: layout, counts, label range, sizes, and that the dataset class reads it."""
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from rayseg.datasets import DemoShapesDataset
from rayseg.datasets.demo import make_demo_dataset

ROOT = Path(__file__).resolve().parents[2]


def test_make_demo_dataset_counts_values_and_sizes(tmp_path):
    summary = make_demo_dataset(str(tmp_path), num_train=6, num_val=3, size=(32, 48), seed=1)
    assert summary["num_train"] == 6 and summary["num_val"] == 3
    assert summary["classes"] == ["background", "circle", "rectangle", "triangle"]
    for split, n in (("train", 6), ("val", 3)):
        imgs = sorted((tmp_path / "img_dir" / split).glob("*.png"))
        anns = sorted((tmp_path / "ann_dir" / split).glob("*.png"))
        assert len(imgs) == n and [p.name for p in imgs] == [p.name for p in anns]
        for ip, ap in zip(imgs, anns):
            with Image.open(ip) as im, Image.open(ap) as an:
                assert im.size == an.size == (48, 32)
                assert an.mode == "L"
                assert np.array(an).max() <= 3
    seen = set()
    for ap in (tmp_path / "ann_dir" / "train").glob("*.png"):
        seen |= set(np.unique(np.array(Image.open(ap))).tolist())
    assert 0 in seen and len(seen) >= 3  # background plus shapes


def test_demo_dataset_is_deterministic_and_readable(tmp_path):
    make_demo_dataset(str(tmp_path / "a"), num_train=2, num_val=1, size=(16, 16), seed=3)
    make_demo_dataset(str(tmp_path / "b"), num_train=2, num_val=1, size=(16, 16), seed=3)
    for rel in ("img_dir/train/train_00001.png", "ann_dir/val/val_00000.png"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    ds = DemoShapesDataset(pipeline=[{"type": "LoadImageFromFile"}, {"type": "LoadAnnotations"}],
                           data_root=str(tmp_path / "a"), img_dir="img_dir/train", ann_dir="ann_dir/train")
    assert len(ds) == 2 and ds.num_classes == 4
    ds.validate()
    out = ds.prepare_train(ds.samples[0])
    assert out["img"].shape == (16, 16, 3) and out["gt_semantic_seg"].shape == (16, 16)


def test_job_script_writes_dataset(tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / "jobs"))
    import make_demo_data  # noqa: E402  (the thin job script)

    summary = make_demo_data.main([str(tmp_path), "--num-train", "2", "--num-val", "1", "--size", "8", "12"])
    assert summary["size"] == [8, 12]
    assert '"num_train": 2' in capsys.readouterr().out
    sys.modules.pop("make_demo_data", None)
