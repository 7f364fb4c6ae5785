"""Pretrained weights and ``load_from``: names, URLs (served on 127.0.0.1 — no network here), storage
URIs, prefixes, mismatches.

Every checkpoint is written by the test itself; TORCH_HOME points into tmp_path so the torch hub cache
that URLs are fetched into never outlives a test.
"""
import functools
import http.server
import socket
import threading
import warnings

import numpy as np

import pytest
import torch
import torchvision

from rayseg.engine.checkpoint import load_model_weights, load_weights_file
from rayseg.errors import CheckpointError, ConfigError
from rayseg.models import build_backbone, build_segmentor
from rayseg.models.pretrained import OPEN_MMLAB_URLS, resolve_checkpoint_url
from rayseg.models.utils import load_pretrained

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def hub_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home" / "hub" / "checkpoints"


def tiny_segmentor(num_classes=3, aux_channels=8):
    backbone = dict(type="ResNetV1c", depth=18, base_channels=8, stem_channels=8)
    head = dict(type="FCNHead", in_channels=64, channels=8, in_index=3, num_convs=1, num_classes=num_classes)
    aux = [dict(type="FCNHead", in_channels=32, channels=aux_channels, in_index=2, num_convs=1,
                num_classes=num_classes),
           dict(type="FCNHead", in_channels=16, channels=8, in_index=1, num_convs=1, num_classes=num_classes)]
    return build_segmentor(dict(type="EncoderDecoder", backbone=backbone, decode_head=head, auxiliary_head=aux,
                                test_cfg=dict(mode="whole")))


@functools.lru_cache(maxsize=1)
def _torchvision_resnet18_state():
    # Built once: initialising 11M parameters takes a few seconds on the shared CPUs.
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None).state_dict()


def torchvision_resnet18_file(tmp_path):
    state = _torchvision_resnet18_state()
    path = tmp_path / "resnet18-tv.pth"
    torch.save(state, path)
    return state, path


# --- torchvision checkpoints into ResNet (V1b, plain 7×7 stem) ----------------------------------------------

def test_torchvision_resnet18_loads_into_resnet_ignoring_fc(tmp_path):
    state, path = torchvision_resnet18_file(tmp_path)
    model = build_backbone(dict(type="ResNet", depth=18))
    own = model.state_dict()
    assert set(own) == {k for k in state if not k.startswith("fc.")}  # every backbone key has its twin
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all keys match and fc.* is dropped quietly: no warning at all
        load_pretrained(model, str(path))
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer4.1.bn2.weight",
                "layer2.0.downsample.0.weight"):
        assert torch.equal(model.state_dict()[key], state[key]), key
    # Through the config path too (pretrained= on the backbone).
    built = build_backbone(dict(type="ResNet", depth=18, pretrained=str(path)))
    assert torch.equal(built.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])


@pytest.fixture
def http_root(tmp_path, monkeypatch):
    """A folder served over HTTP on 127.0.0.1 (yields (folder, base URL)); counts the GET requests."""
    root = tmp_path / "served"
    root.mkdir()
    gets = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            gets.append(self.path)
            super().do_GET()

        def log_message(self, *args):
            pass

    for var in ("no_proxy", "NO_PROXY"):  # a proxy from the environment must not intercept loopback
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", gets
    server.shutdown()
    server.server_close()


def test_http_url_goes_through_the_hub_cache_once(tmp_path, hub_cache, http_root):
    root, base, gets = http_root
    state, path = torchvision_resnet18_file(root)
    url = f"{base}/{path.name}"
    model = build_backbone(dict(type="ResNet", depth=18, init_cfg=dict(type="Pretrained", checkpoint=url)))
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    assert (hub_cache / path.name).is_file()
    # load_from accepts the same URLs; the cached file is reused, not fetched again.
    assert torch.equal(load_weights_file(url)["state_dict"]["bn1.weight"], state["bn1.weight"])
    assert gets == [f"/{path.name}"]


def test_file_uri_is_read_in_place(tmp_path, hub_cache):
    state, path = torchvision_resnet18_file(tmp_path)
    model = build_backbone(dict(type="ResNet", depth=18, init_cfg=dict(type="Pretrained",
                                                                      checkpoint=path.as_uri())))
    assert torch.equal(model.conv1.weight, state["conv1.weight"])
    assert not hub_cache.exists()  # storage URIs are not copied into the download cache
    assert torch.equal(load_weights_file(path.as_uri())["state_dict"]["bn1.weight"], state["bn1.weight"])


class HistoryBuffer:
    """Stands in for mmengine's message-hub objects (unknown to the loader)."""

    def __init__(self):
        self.values = np.arange(3.0)


def test_pretrained_from_an_mmseg_1x_checkpoint_uses_the_safe_reader(tmp_path):
    """A whole MMSeg 1.x training checkpoint (message hub included) as a backbone's init_cfg."""
    torch.manual_seed(4)
    src = tiny_segmentor()
    path = tmp_path / "iter_160000.pth"
    torch.save({"state_dict": src.state_dict(), "message_hub": {"log_scalars": {"loss": HistoryBuffer()}},
                "meta": {"dataset_meta": {"classes": ["a", "b", "c"]}}}, path)
    with pytest.warns(UserWarning, match="non-tensor"):
        backbone = build_backbone(dict(type="ResNetV1c", depth=18, base_channels=8, stem_channels=8,
                                       init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="backbone.")))
    assert torch.equal(backbone.stem[0].weight, src.backbone.stem[0].weight)


# --- names -----------------------------------------------------------------------------------------------------

def test_open_mmlab_and_torchvision_names_resolve_without_downloading():
    url = "https://download.openmmlab.com/pretrain/third_party/resnet50_v1c-2cccc1ad.pth"
    assert resolve_checkpoint_url("open-mmlab://resnet50_v1c") == url
    assert resolve_checkpoint_url("openmmlab://resnet50_v1c") == url
    assert set(OPEN_MMLAB_URLS) == {"resnet18_v1c", "resnet50_v1c", "resnet101_v1c", "msra/hrnetv2_w18_small",
                                    "msra/hrnetv2_w18", "msra/hrnetv2_w32", "msra/hrnetv2_w40", "msra/hrnetv2_w48",
                                    "contrib/mobilenet_v3_large", "contrib/mobilenet_v3_small",
                                    "resnext50_32x4d", "resnext101_32x4d", "resnext101_64x4d"}
    assert resolve_checkpoint_url("torchvision://resnet50") == \
        torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    assert resolve_checkpoint_url("torchvision://resnet50.imagenet1k_v2") == \
        torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url
    assert resolve_checkpoint_url("https://example.org/w.pth") == "https://example.org/w.pth"
    assert resolve_checkpoint_url("work_dirs/latest.pth") is None
    with pytest.raises(ConfigError, match="resnet50_v1c"):  # the error lists the known names
        resolve_checkpoint_url("open-mmlab://resnet51_v1c")
    with pytest.raises(ConfigError, match="notamodel"):
        resolve_checkpoint_url("torchvision://notamodel")
    assert resolve_checkpoint_url("s3://bucket/w.pth") is None  # storage URIs are read in place, not downloaded
    assert resolve_checkpoint_url("file:///tmp/w.pth") is None
    with pytest.raises(ConfigError, match="s3://"):  # the error lists what is accepted
        resolve_checkpoint_url("ftp://host/w.pth")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_url_is_a_checkpoint_error_naming_it(monkeypatch, hub_cache):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    url = f"http://127.0.0.1:{closed_port()}/weights.pth"
    backbone = build_backbone(dict(type="ResNet", depth=18))
    with pytest.raises(CheckpointError, match=url) as info:
        load_pretrained(backbone, url)
    # The way out without network: the cache file it names, or a local path.
    assert f"copy the file to {hub_cache / 'weights.pth'}" in str(info.value) and "local path" in str(info.value)
    with pytest.raises(CheckpointError, match=url):
        load_weights_file(url)
    with pytest.raises(CheckpointError, match="file:///nonexistent/weights.pth"):
        load_weights_file("file:///nonexistent/weights.pth")
    hub_cache.mkdir(parents=True, exist_ok=True)  # the failed download made it
    torch.save({"state_dict": backbone.state_dict()}, hub_cache / "weights.pth")
    load_pretrained(build_backbone(dict(type="ResNet", depth=18)), url)  # found in the cache, nothing downloaded


def test_missing_local_file_is_a_checkpoint_error_naming_it(tmp_path):
    with pytest.raises(CheckpointError, match="not found.*nope.pth"):
        load_pretrained(build_backbone(dict(type="ResNet", depth=18)), str(tmp_path / "nope.pth"))


# --- prefixes and mismatches in pretrained loading ---------------------------------------------------------------

def test_prefix_takes_the_backbone_out_of_a_segmentor_checkpoint(tmp_path):
    torch.manual_seed(1)
    src = tiny_segmentor()
    path = tmp_path / "segmentor.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in src.state_dict().items()},
                "meta": {"iter": 5}, "optimizer": {}}, path)
    backbone = build_backbone(dict(type="ResNetV1c", depth=18, base_channels=8, stem_channels=8,
                                   init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="backbone")))
    assert torch.equal(backbone.stem[0].weight, src.backbone.stem[0].weight)
    with pytest.raises(CheckpointError, match="neck."):
        load_pretrained(backbone, str(path), prefix="neck.")


def test_mit_loads_with_prefix(tmp_path):
    cfg = dict(type="MixVisionTransformer", embed_dims=8, num_layers=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    torch.manual_seed(2)
    src = build_backbone(cfg)
    path = tmp_path / "mit.pth"
    torch.save({"state_dict": {"backbone." + k: v for k, v in src.state_dict().items()}}, path)
    model = build_backbone(dict(cfg, init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="backbone.")))
    for key, value in src.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_pretrained_key_mismatch_warns_and_shape_mismatch_fails(tmp_path):
    state, path = torchvision_resnet18_file(tmp_path)
    partial = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    partial["extra.weight"] = torch.zeros(1)
    torch.save(partial, path)
    model = build_backbone(dict(type="ResNet", depth=18))
    with pytest.warns(UserWarning, match=r"missing keys \['layer4.*unexpected keys \['extra.weight'\]"):
        load_pretrained(model, str(path))
    assert torch.equal(model.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])

    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"conv1.weight: checkpoint \(64, 3, 7, 7\) vs model \(32, 3, 7, 7\)"):
        load_pretrained(build_backbone(dict(type="ResNet", depth=18, stem_channels=32)), str(path))


# --- load_from: whole-model weights ------------------------------------------------------------------------------

def test_load_weights_file_formats(tmp_path):
    model = tiny_segmentor()
    state = model.state_dict()
    mmseg = tmp_path / "mmseg.pth"
    torch.save({"state_dict": state, "meta": {"CLASSES": ("a", "b", "c")}, "optimizer": {"state": {}}}, mmseg)
    loaded = load_weights_file(str(mmseg))
    assert set(loaded) == {"state_dict", "meta", "source"} and loaded["meta"]["classes"] == ("a", "b", "c")
    assert loaded["source"] == str(mmseg)
    bare = tmp_path / "bare.pth"
    torch.save(state, bare)
    assert load_weights_file(str(bare))["meta"] == {}
    folder = tmp_path / "ray_ckpt"
    folder.mkdir()
    torch.save({"state_dict": state, "meta": {"iter": 3}}, folder / "checkpoint.pt")
    assert load_weights_file(str(folder))["meta"]["iter"] == 3


def test_load_model_weights_skips_classifiers_when_num_classes_differs():
    torch.manual_seed(3)
    src = tiny_segmentor(num_classes=19)
    model = tiny_segmentor(num_classes=11)
    before = model.decode_head.conv_seg.weight.clone()
    state = {"module." + k: v for k, v in src.state_dict().items()}
    with pytest.warns(UserWarning) as record:
        load_model_weights(model, state, "city.pth")
    messages = [str(w.message) for w in record]
    for head in ("decode_head", "auxiliary_head.0", "auxiliary_head.1"):
        assert any(m.startswith(f"{head}: num_classes differs: checkpoint 19, model 11 — classifier left at its "
                                "initialisation") for m in messages), messages
    assert torch.equal(model.decode_head.conv_seg.weight, before)
    assert torch.equal(model.backbone.stem[0].weight, src.backbone.stem[0].weight)
    assert torch.equal(model.decode_head.convs[0].conv.weight, src.decode_head.convs[0].conv.weight)
    # Evaluation must not accept a classifier of the wrong size.
    with pytest.raises(CheckpointError, match="decode_head.conv_seg.weight"):
        load_model_weights(tiny_segmentor(num_classes=11), state, "city.pth", allow_num_classes_change=False)


def test_load_model_weights_other_shape_mismatch_is_an_error():
    src = tiny_segmentor(aux_channels=16)
    model = tiny_segmentor(aux_channels=8)
    before = model.backbone.stem[0].weight.clone()
    with pytest.raises(CheckpointError, match=r"auxiliary_head.0.convs.0.conv.weight: checkpoint \(16, 32, 3, 3\) "
                                              r"vs model \(8, 32, 3, 3\)"):
        load_model_weights(model, src.state_dict(), "other.pth")
    assert torch.equal(model.backbone.stem[0].weight, before)  # nothing was loaded


def test_load_model_weights_missing_and_unexpected_keys():
    src = tiny_segmentor().state_dict()
    state = {k: v for k, v in src.items() if not k.startswith("auxiliary_head.1.")}
    state["neck.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing keys \['auxiliary_head.1.*unexpected keys \['neck.weight'\]"):
        load_model_weights(tiny_segmentor(), state, "partial.pth")
    with pytest.warns(UserWarning, match="missing keys"):
        load_model_weights(tiny_segmentor(), state, "partial.pth", strict=False)
