"""Zoo configs start from pretrained backbones as MMSeg's do, without downloading anything here.

- every zoo config names the pretrained source MMSeg's does, a name ``rayseg.models.pretrained`` resolves to a
  download URL (nothing fetched); the families MMSeg trains from scratch (BiSeNetV2, UNet, the plain BiSeNetV1 and
  STDC configs) and rayseg's own demo/CamVid/custom configs name none; BEiT and SETR name MMSeg's local converted
  files (``pretrain/...``), each one rayseg's missing-file error explains how to make;
- an unreachable URL fails the model build with an error naming the name, the URL and the remedy (the torch hub
  cache file to copy, or a local path);
- ``model.pretrained=/local/file.pth`` on the command line (``--cfg-options``) replaces the zoo's name and loads
  that file (written by the test).
"""
import socket
from pathlib import Path

import pytest
import torch

from rayseg.config import load_config
from rayseg.errors import CheckpointError
from rayseg.models import build_segmentor
from rayseg.models import pretrained as pretrained_mod
from rayseg.models.pretrained import LOCAL_PRETRAINED, pretrained_sources, resolve_checkpoint_url

torch.set_num_threads(1)
CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if not {"_base_", "tune"} & set(p.relative_to(CONFIG_DIR).parts))
# Trained by `make demo`, bench/ and the tests, or meant for a few CPU cores: never download weights.
SCRATCH_FOLDERS = {"demo", "camvid", "custom"}
# Families MMSeg itself trains from scratch (no pretrained weights in its configs).
MMSEG_SCRATCH_FOLDERS = {"bisenetv2", "unet"}
# Folders whose plain configs MMSeg trains from scratch and whose "in1k-pre" ones start from ImageNet weights.
IN1K_PRE_FOLDERS = {"bisenetv1", "stdc"}
# MMSeg names local converted files (BEiT: model.pretrained, SETR: backbone.init_cfg, ``pretrain/...``); so do these
# configs (the job check refuses a missing file, saying how to make it).
LOCAL_FOLDERS = {"beit", "setr"}
LRASPP = CONFIG_DIR / "mobilenet_v3" / "lraspp_m-v3-d8_512x1024_320k_cityscapes.yaml"

@pytest.fixture(autouse=True)
def hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def sources(model_cfg):
    """Every pretrained name a model config gives, at any depth (STDC's and BiSeNetV1's inner backbone too)."""
    return [source for _, source in pretrained_sources(model_cfg)]


def scratch(path):
    """Configs that must name no weights: rayseg's own, and those MMSeg trains from scratch."""
    folder = path.parent.name
    if folder in SCRATCH_FOLDERS | MMSEG_SCRATCH_FOLDERS or path.stem.endswith("_camvid"):
        return True
    return folder in IN1K_PRE_FOLDERS and "in1k-pre" not in path.stem


@pytest.mark.parametrize("path", CONFIGS, ids=[str(p.relative_to(CONFIG_DIR)) for p in CONFIGS])
def test_zoo_config_names_mmseg_pretrained_source(path):
    names = sources(load_config(path)["model"])
    if scratch(path):
        assert names == [], f"{path.name} trains from scratch, as MMSeg's"
        return
    assert names, f"{path.name}: MMSeg starts this family from pretrained weights"
    if path.parent.name in LOCAL_FOLDERS:
        assert all(n.startswith("pretrain/") and Path(n).name in LOCAL_PRETRAINED for n in names), names
        return
    for name in names:
        url = resolve_checkpoint_url(name)  # no download: only the name is looked up
        assert url is not None and url.startswith("https://"), (name, url)


def test_in1k_pre_configs_load_the_inner_backbone():
    stdc = load_config(CONFIG_DIR / "stdc" / "stdc2_in1k-pre_512x1024_80k_cityscapes.yaml")["model"]["backbone"]
    assert stdc["backbone_cfg"]["stdc_type"] == "STDCNet2"
    assert stdc["backbone_cfg"]["init_cfg"]["checkpoint"].endswith("/stdc2_20220308-7dbd9127.pth")
    bisenet = load_config(CONFIG_DIR / "bisenetv1" / "bisenetv1_r18-d32_in1k-pre_4x4_1024x1024_160k_cityscapes.yaml")
    init = bisenet["model"]["backbone"]["backbone_cfg"]["init_cfg"]
    assert init == {"type": "Pretrained", "checkpoint": "open-mmlab://resnet18_v1c"}


def test_swin_base_names_its_own_weights():
    base = load_config(CONFIG_DIR / "swin" / "upernet_swin_base_patch4_window12_512x512_160k_ade20k.yaml")["model"]
    assert sources(base) == ["https://download.openmmlab.com/mmsegmentation/v0.5/pretrain/swin/"
                             "swin_base_patch4_window12_384_20220317-55b0104a.pth"]


@pytest.mark.parametrize("name", ["beit_base_patch16_224_pt22k_ft22k.pth", "vit_large_p16.pth"])
def test_local_files_mmseg_names_say_how_to_make_them(name):
    assert "jobs/convert_weights.py" in LOCAL_PRETRAINED[name] and f"pretrain/{name}" in LOCAL_PRETRAINED[name]


def test_hr48_and_mobilenet_v3_small_name_their_own_weights():
    hr48 = load_config(CONFIG_DIR / "hrnet" / "fcn_hr48_512x1024_40k_cityscapes.yaml")["model"]
    assert hr48["pretrained"] == "open-mmlab://msra/hrnetv2_w48"
    small = load_config(CONFIG_DIR / "mobilenet_v3" / "lraspp_m-v3s-d8_512x1024_320k_cityscapes.yaml")["model"]
    assert resolve_checkpoint_url(small["pretrained"]).endswith("mobilenet_v3_small-47085aa1.pth")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_pretrained_url_fails_the_build_naming_it_and_the_remedy(monkeypatch, hub_cache):
    """The LR-ASPP zoo config as it is, with its open-mmlab:// name pointed at a closed local port (no network)."""
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    url = f"http://127.0.0.1:{closed_port()}/mobilenet_v3_large-bc2c3fd3.pth"
    monkeypatch.setitem(pretrained_mod.OPEN_MMLAB_URLS, "contrib/mobilenet_v3_large", url)
    cfg = load_config(LRASPP)
    with pytest.raises(CheckpointError) as info:
        build_segmentor(cfg["model"])
    text = str(info.value)
    assert "open-mmlab://contrib/mobilenet_v3_large" in text and url in text
    assert f"copy the file to {hub_cache / 'mobilenet_v3_large-bc2c3fd3.pth'}" in text
    assert "model.pretrained=/path/to/file.pth" in text


def test_cfg_option_local_pretrained_file_replaces_the_zoo_name(tmp_path):
    base = build_segmentor(load_config(LRASPP, ["model.pretrained=null"])["model"]).backbone.state_dict()
    marked = {k: torch.full_like(v, 0.25) if v.is_floating_point() else v for k, v in base.items()}
    path = tmp_path / "mine.pth"
    torch.save({"state_dict": marked}, path)
    cfg = load_config(LRASPP, [f"model.pretrained={path}"])
    assert cfg["model"]["pretrained"] == str(path)
    got = build_segmentor(cfg["model"]).backbone.state_dict()
    assert all(torch.equal(got[k], marked[k]) for k in marked)
