"""Every config under configs/ (bases excluded) resolves into a run spec and passes the training job's checks,
prints as one JSON document (the resolved run config), builds its model,
optimizer and lr schedule, names a registered dataset with accepted arguments, and builds its pipelines.

Zoo configs (in a model-named folder) are also checked against MMSeg's naming scheme
``{model}_{backbone}_[misc]_[gpu x batch]_{crop h}x{crop w}_{iterations}_{dataset}``: the name must agree
with the crop size, max_iters, samples_per_gpu, dataset type and num_classes the file resolves to.

The data folders do not exist here, so datasets are not listed. Models are built on PyTorch's ``meta``
device (constructors and config checks run, no weights are allocated or initialised) and built once per
distinct model config; a model whose constructor needs real tensor values falls back to the CPU.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import torch

from rayseg.config import load_config
from rayseg.datasets import build_pipeline
from rayseg.inference import without_pretrained
from rayseg.models import build_segmentor
from rayseg.models.pretrained import LOCAL_PRETRAINED, pretrained_sources
from rayseg.optim import build_lr_schedule, build_optimizer
from rayseg.registry import DATASETS, check_kwargs
from rayseg.spec.check import check_run
from rayseg.spec.resolve import resolve_run

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"
# configs/tune holds sweep configs (tests/tune loads them), not training configs
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml")
                 if not {"_base_", "tune"} & set(p.relative_to(CONFIG_DIR).parts))
IDS = [str(p.relative_to(CONFIG_DIR)) for p in CONFIGS]

ZOO_FOLDERS = {"fcn", "pspnet", "deeplabv3", "deeplabv3plus", "upernet", "segformer", "unet",
               "hrnet", "ocrnet", "sem_fpn"}
ZOO_FOLDERS |= {"nonlocal_net", "danet", "isanet", "point_rend"}  # heads2 group (issue #14)
ZOO_FOLDERS |= {"mobilenet_v3", "bisenetv2", "bisenetv1"}  # real-time families (issue #14)
ZOO_FOLDERS |= {"swin", "setr"}  # transformer families (issue #14)
ZOO_FOLDERS |= {"convnext", "beit"}  # ConvNeXt and BEiT (issue #14)
ZOO_FOLDERS |= {"stdc"}  # named stdc1_/stdc2_ with no backbone field (NAME_RE's backbone is optional)
# MMSeg folders named after a backbone or paper whose configs are named after their head: folder -> model in the name
FOLDER_MODEL = {"hrnet": "fcn", "sem_fpn": "fpn"}
FOLDER_MODEL.update({"nonlocal_net": "nonlocal", "point_rend": "pointrend"})
FOLDER_MODEL["mobilenet_v3"] = "lraspp"
# heads with a label space of their own (STDC's boundary head: boundary or not, 2 classes), not the dataset's
OWN_CLASSES_HEADS = {"STDCHead"}
FOLDER_MODEL["swin"] = "upernet"
FOLDER_MODEL.update(convnext="upernet", beit="upernet")
FOLDER_MODEL["stdc"] = r"stdc[12]"  # the values are regular expressions (fullmatch): STDC1 or STDC2
# the name's dataset suffix -> the training set's type (the inner one under a RepeatDataset)
DATASET_SUFFIX = {"cityscapes": "CityscapesDataset", "ade20k": "ADE20KDataset", "voc12aug": "PascalVOCDataset",
                  "voc12": "PascalVOCDataset", "camvid": "CamVidDataset",
                  "pascal_context": "PascalContextDataset", "pascal_context_59": "PascalContextDataset59",
                  "drive": "DRIVEDataset", "chase_db1": "ChaseDB1Dataset", "stare": "STAREDataset",
                  "hrf": "HRFDataset", "loveda": "LoveDADataset", "potsdam": "PotsdamDataset",
                  "vaihingen": "ISPRSDataset", "isaid": "iSAIDDataset", "coco-stuff10k": "COCOStuffDataset",
                  "coco-stuff164k": "COCOStuffDataset",
                  # test sets MMSeg evaluates Cityscapes-trained models on (TEST_SPLIT_DATASET)
                  "dark": "CityscapesDataset", "night_driving": "CityscapesDataset"}
TEST_SPLIT_DATASET = {"dark": "DarkZurichDataset", "night_driving": "NightDrivingDataset"}
# MMSeg puts gpus x batch before the crop ("_4x4_512x512_80k_vaihingen") or after it ("_512x512_4x4_20k_
# coco-stuff10k"); of two AxB groups the crop is the larger one (crops are >= 64x64, gpus x batch <= 16x16).
NAME_RE = re.compile(r"^(?P<model>[a-z0-9]+)(?:_(?P<backbone>[a-z0-9.-]+))?(?:_(?P<misc>[a-z0-9-]+))*?"
                     r"(?:_(?P<a1>\d+)x(?P<b1>\d+))?_(?P<a2>\d+)x(?P<b2>\d+)(?:_(?P<a3>\d+)x(?P<b3>\d+))?"
                     r"_(?P<iters>\d+k?)(?:_b(?P<total_batch>\d+))?_(?P<dataset>[a-z0-9_-]+)$")


def _crop_and_batch(m):
    """(crop (h, w), samples per gpu or None) from a NAME_RE match."""
    pairs = [(int(m[f"a{i}"]), int(m[f"b{i}"])) for i in (1, 2, 3) if m[f"a{i}"] is not None]
    crop = max(pairs, key=lambda p: p[0] * p[1])
    rest = [p for p in pairs if p is not crop]
    assert len(rest) <= 1, f"{m.string}: more than one gpus x batch group"
    return crop, (rest[0][1] if rest else None)


def _unwrap(section):
    """The dataset under wrappers such as RepeatDataset (``dataset:``), which carries the type and pipeline."""
    while isinstance(section.get("dataset"), dict):
        section = section["dataset"]
    return section


def test_configs_found():
    folders = {p.parent.name for p in CONFIGS}
    assert {"fcn", "pspnet", "deeplabv3", "deeplabv3plus", "upernet", "segformer"} <= folders
    assert len(CONFIGS) >= 20


@lru_cache(maxsize=None)
def _build_model(model_json: str):
    # Zoo configs name pretrained weights (open-mmlab://...): built without them, so nothing is downloaded here;
    # tests/models/test_zoo_pretrained.py checks that every name resolves to a URL.
    cfg = without_pretrained(json.loads(model_json))
    try:
        with torch.device("meta"):
            return build_segmentor(cfg)
    except NotImplementedError:  # e.g. MiT reads torch.linspace(...).tolist() while building
        return build_segmentor(cfg)


def _heads(model_cfg):
    decode = model_cfg["decode_head"]  # a list of heads for CascadeEncoderDecoder (OCRNet)
    aux = model_cfg.get("auxiliary_head") or []
    return (decode if isinstance(decode, list) else [decode]) + (aux if isinstance(aux, list) else [aux])


def _crop_size(pipeline):
    crops = [step["crop_size"] for step in pipeline if step.get("type") == "RandomCrop"]
    assert len(crops) == 1, "a training pipeline with one RandomCrop"
    return tuple(crops[0])


WORK_DIR = "/tmp/rayseg-all-configs/work"


@lru_cache(maxsize=None)
def _scratch_options(path) -> tuple:
    """``--cfg-options`` switching off the pretrained weights a config names as a local file.

    MMSeg's BEiT and SETR configs start from converted files under ``pretrain/``, which the job check requires
    to exist (tests have none); each must be one rayseg can tell the user how to make (``LOCAL_PRETRAINED``).
    """
    options = []
    for where, source in pretrained_sources(load_config(path)["model"]):
        if isinstance(source, str) and "://" not in source:
            assert os.path.basename(source) in LOCAL_PRETRAINED, f"{path}: {where} {source} has no conversion hint"
            key = where[:-len(".checkpoint")] if where.endswith(".init_cfg.checkpoint") else where
            options.append(f"{key}=null")
    return tuple(options)


def _load(path):
    return load_config(path, list(_scratch_options(path)))


def _print_config_argv(path):
    options = _scratch_options(path)
    return [str(path), "--json", "--work-dir", WORK_DIR] + (["--cfg-options", *options] if options else [])


@lru_cache(maxsize=None)
def _print_config_job():
    spec = importlib.util.spec_from_file_location("print_config_job", REPO / "jobs" / "print_config.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _check_printed(path, code, out, err):
    assert code == 0, err
    decoder = json.JSONDecoder()
    doc, end = decoder.raw_decode(out.lstrip())
    assert out.lstrip()[end:].strip() == "", "exactly one JSON document"
    assert doc == json.loads(json.dumps(resolve_run(_load(path), work_dir=WORK_DIR).config))


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_print_config_json(path, capsys):
    """The job's main() for every config (in this process: ~300 interpreter start-ups would cost minutes)."""
    code = _print_config_job().main(_print_config_argv(path))
    captured = capsys.readouterr()
    _check_printed(path, code, captured.out, captured.err)


# as typed, in a process of its own: one config of each kind (demo, CamVid, a zoo one needing scratch options)
TYPED = [p for p in CONFIGS if p.parent.name in {"demo", "camvid"}][:2] + \
    [p for p in CONFIGS if p.parent.name == "setr"][:1]


@pytest.mark.parametrize("path", TYPED, ids=[str(p.relative_to(CONFIG_DIR)) for p in TYPED])
def test_print_config_json_as_typed(path):
    proc = subprocess.run([sys.executable, str(REPO / "jobs" / "print_config.py"), *_print_config_argv(path)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    _check_printed(path, proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize("path", CONFIGS, ids=IDS)
def test_config_builds(path):
    cfg = _load(path)
    check_run(resolve_run(cfg, work_dir=WORK_DIR), list_data=False)  # what train and print_config check
    model = _build_model(json.dumps(cfg["model"], sort_keys=True))
    assert sum(p.numel() for p in model.parameters()) > 0

    data = cfg["data"]
    classes = None
    for split in ("train", "val", "test"):
        section = dict(data[split])
        while isinstance(section.get("dataset"), dict):  # a wrapper (RepeatDataset): its own keys, then the inner
            check_kwargs(DATASETS.get(section["type"]), {k: v for k, v in section.items() if k != "type"},
                         f"data.{split}")
            section = dict(section["dataset"])
        cls = DATASETS.get(section.pop("type"))  # registered
        pipeline = section["pipeline"]
        check_kwargs(cls, section, f"data.{split}")  # every key is a constructor argument
        assert len(build_pipeline(pipeline)) == len(pipeline)
        if split == "train":
            classes = cls.CLASSES
    if classes is not None:
        for head in _heads(cfg["model"]):
            if head["type"] in OWN_CLASSES_HEADS:
                continue
            assert head["num_classes"] == len(classes), f"num_classes vs {_unwrap(data['train'])['type']}"

    optimizer = build_optimizer(model, cfg["optimizer"])
    assert type(optimizer).__name__ == cfg["optimizer"]["type"]
    schedule = build_lr_schedule(cfg["lr_config"], cfg["optimizer"]["lr"], cfg["runner"]["max_iters"])
    assert schedule.lr_at(cfg["runner"]["max_iters"] - 1) >= cfg["lr_config"].get("min_lr", 0.0)


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.parent.name in ZOO_FOLDERS],
                         ids=[i for p, i in zip(CONFIGS, IDS) if p.parent.name in ZOO_FOLDERS])
def test_zoo_names_match_contents(path):
    m = NAME_RE.match(path.stem)
    assert m, f"{path.stem} does not follow MMSeg's naming scheme"
    if path.parent.name == "unet":  # MMSeg's unet/ folder names the head first: fcn_unet_s5-d16_...
        assert m["backbone"] == "unet" and m["model"] in {"fcn", "pspnet", "deeplabv3"}
    else:
        assert re.fullmatch(FOLDER_MODEL.get(path.parent.name, path.parent.name), m["model"]), m["model"]
    cfg = load_config(path)
    train = _unwrap(cfg["data"]["train"])
    crop, batch = _crop_and_batch(m)
    assert _crop_size(train["pipeline"]) == crop
    iters = int(m["iters"][:-1]) * 1000 if m["iters"].endswith("k") else int(m["iters"])
    assert cfg["runner"]["max_iters"] == iters
    assert train["type"] == DATASET_SUFFIX[m["dataset"]]
    if m["dataset"] in TEST_SPLIT_DATASET:
        assert cfg["data"]["test"]["type"] == TEST_SPLIT_DATASET[m["dataset"]]
    if batch is not None:
        assert cfg["data"]["samples_per_gpu"] == batch
    if m["total_batch"] is not None:  # MMSeg's "_160k_b16_" (SETR on ADE20K): the batch over its 8 GPUs
        assert cfg["data"]["samples_per_gpu"] * 8 == int(m["total_batch"])
    if m["dataset"] == "voc12aug":
        assert isinstance(train["split"], list) and len(train["split"]) == 2


def test_segformer_replaces_the_sgd_schedule():
    """``_delete_`` drops SGD's momentum and the poly defaults instead of merging AdamW into them."""
    for name in ("segformer_mit-b0_512x512_160k_ade20k", "segformer_mit-b0_8x1_1024x1024_160k_cityscapes"):
        cfg = load_config(CONFIG_DIR / "segformer" / f"{name}.yaml")
        assert cfg["optimizer"] == {
            "type": "AdamW", "lr": 6e-5, "betas": [0.9, 0.999], "weight_decay": 0.01,
            "paramwise_cfg": {"custom_keys": {"pos_block": {"decay_mult": 0.0}, "norm": {"decay_mult": 0.0},
                                              "head": {"lr_mult": 10.0}}}}
        assert cfg["lr_config"] == {"policy": "poly", "warmup": "linear", "warmup_iters": 1500,
                                    "warmup_ratio": 1e-6, "power": 1.0, "min_lr": 0.0, "by_epoch": False}
        model = _build_model(json.dumps(cfg["model"], sort_keys=True))
        groups = build_optimizer(model, cfg["optimizer"]).param_groups
        head = [g for g in groups if g["name"].startswith("decode_head.")]
        norms = [g for g in groups if "norm" in g["name"] and "head" not in g["name"]]
        assert head and all(g["lr"] == pytest.approx(6e-4) for g in head)
        assert norms and all(g["weight_decay"] == 0.0 for g in norms)
