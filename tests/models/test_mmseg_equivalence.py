"""Weight compatibility with MMSegmentation 1.x, checked against reference outputs MMSeg itself produced.

``tests/fixtures/mmseg/`` holds, per architecture, a checkpoint saved from MMSeg 1.x's own model
(``<arch>.pth``: MMSeg parameter names, random weights and BN statistics), the input and the logits MMSeg
computed (``<arch>_io.pt``) and the matching rayseg config (``<arch>.yaml``); all were written by
``tools/make_mmseg_reference.py`` in a separate venv with MMSeg installed. This test needs no MMSeg: it
loads each checkpoint the way a user does (``load_weights_file`` + ``load_model_weights``) into the model
built from the YAML and compares logits. A missing fixture is a failure, never a skip.
``full_size_models.json`` holds the checkpoint layout (keys and shapes) of MMSeg's own full-size models for
the zoo configs that mirror them (``--full-size`` of the same tool).
"""
import hashlib
import json
import os

import pytest
import torch

from rayseg.config import load_config
from rayseg.engine.checkpoint import load_model_weights, load_weights_file
from rayseg.errors import CheckpointError
from rayseg.inference import without_pretrained
from rayseg.models import build_segmentor

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "mmseg")
# First zoo, then the second: HRNet + FCNHead, OCRNet (CascadeEncoderDecoder: FCNHead → OCRHead), Semantic FPN.
REQUIRED = ["fcn", "pspnet", "deeplabv3", "deeplabv3plus", "upernet", "segformer", "hrnet_fcn", "ocrnet", "fpn"]
# ... and every other architecture whose fixtures are there (tools/mmseg_reference_*.py add theirs).
ARCHS = REQUIRED + sorted({n[: -len("_io.pt")] for n in os.listdir(FIXTURES) if n.endswith("_io.pt")} - set(REQUIRED))
TOL = 1e-4


def fixture(name):
    path = os.path.join(FIXTURES, name)
    assert os.path.isfile(path), f"missing MMSeg reference fixture {path} (regenerate with tools/make_mmseg_reference.py)"
    return path


def build(arch):
    cfg = load_config(fixture(f"{arch}.yaml"))
    return build_segmentor(cfg["model"])


def reference(arch):
    """(input, MMSeg's logits, stride of the stored logits). A big reference (LR-ASPP needs 392×392 inputs) stores
    the seed of its input instead of the input, and every ``logits_stride``-th logit row and column."""
    io = torch.load(fixture(f"{arch}_io.pt"), map_location="cpu", weights_only=True)
    if "input" in io:
        return io["input"], io["logits"], 1
    x = torch.randn(*io["input_shape"], generator=torch.Generator().manual_seed(io["input_seed"]))
    return x, io["logits"], io["logits_stride"]


def test_every_architecture_has_fixtures():
    for arch in ARCHS:
        for suffix in (".pth", "_io.pt", ".yaml"):
            fixture(arch + suffix)


@pytest.mark.parametrize("arch", ARCHS)
def test_mmseg_checkpoint_gives_mmseg_logits(arch):
    path = fixture(f"{arch}.pth")
    payload = load_weights_file(path)
    meta = payload["meta"]
    assert str(meta.get("mmseg_version", "")).startswith("1."), meta.get("mmseg_version")
    state_dict = payload["state_dict"]
    model = build(arch)
    # Every rayseg key is in the checkpoint and vice versa (strict load below checks it too, by name).
    assert set(model.state_dict()) == set(state_dict), (
        sorted(set(model.state_dict()) ^ set(state_dict))[:20])
    load_model_weights(model, state_dict, path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state_dict[key]), key
    model.eval()
    x, expected, stride = reference(arch)
    with torch.no_grad():
        logits = model.inference(x)[..., ::stride, ::stride]
        out = model(x)["out"][..., ::stride, ::stride]
    assert logits.shape == expected.shape
    # The reference is not trivially small, so a tolerance of 1e-4 is a real check. It scales with the logits'
    # size: float32 sums in the attention heads (NonLocal's logits reach 44, DANet's 13) differ by a few
    # 1e-4 between CPUs (an AMD EPYC gave 3.1e-4 and 1.1e-4 on 2026-11-30; the reference came from another
    # machine), ~7e-6 of the logits' size, while a wrong weight mapping is off by whole units.
    scale = max(1.0, expected.abs().max().item())
    assert expected.abs().max() > 0.1
    diff = (logits - expected).abs().max().item()
    assert diff < TOL * scale, f"{arch}: max |rayseg - MMSeg| = {diff:.3g} (limit {TOL * scale:.3g})"
    assert (out - expected).abs().max().item() < TOL * scale


@pytest.mark.parametrize("arch", ["fcn", "segformer", "ocrnet"])
def test_corrupted_key_fails_loudly(arch):
    path = fixture(f"{arch}.pth")
    state_dict = dict(load_weights_file(path)["state_dict"])
    key = next(k for k in state_dict if k.startswith("decode_head."))
    state_dict[key.replace("decode_head.", "decode_haed.", 1)] = state_dict.pop(key)
    model = build(arch)
    with pytest.raises(CheckpointError, match="decode_haed"):
        load_model_weights(model, state_dict, path)


def test_wrong_shape_fails_loudly():
    path = fixture("fcn.pth")
    state_dict = dict(load_weights_file(path)["state_dict"])
    key = "backbone.layer1.0.conv1.weight"
    state_dict[key] = state_dict[key][:1]
    with pytest.raises(CheckpointError, match="layer1"):
        load_model_weights(build("fcn"), state_dict, path)


def test_weights_changed_the_output():
    """Guard against a vacuous pass: the freshly initialised model does not reproduce MMSeg's logits."""
    model = build("fcn").eval()
    x, expected, _ = reference("fcn")
    with torch.no_grad():
        assert (model.inference(x) - expected).abs().max().item() > 1e-2


def test_cascade_checkpoint_keys_are_per_stage():
    """OCRNet's heads load under MMSeg's ``decode_head.0.`` / ``decode_head.1.`` keys, and the OCR stage really
    reads the first stage's logits: changing only the first head's classifier changes the final logits."""
    path = fixture("ocrnet.pth")
    state_dict = dict(load_weights_file(path)["state_dict"])
    assert {"decode_head.0.conv_seg.weight", "decode_head.1.conv_seg.weight",
            "decode_head.1.object_context_block.key_project.1.conv.weight"} <= set(state_dict)
    model = build("ocrnet")
    load_model_weights(model, state_dict, path)
    model.eval()
    x, expected, _ = reference("ocrnet")
    with torch.no_grad():
        # (A per-class bias would not do: the soft regions are a softmax over pixels, per class.)
        model.decode_head[0].conv_seg.weight.mul_(3.0)
        assert (model.inference(x) - expected).abs().max().item() > 1e-2


def _full_size():
    with open(fixture("full_size_models.json")) as fh:
        return json.load(fh)


def _signature(state_dict):
    """As ``architecture_signature`` in tools/make_mmseg_reference.py: tensor count, values per top-level part,
    sha256 of the sorted ``key:shape`` lines."""
    parts = {}
    for key, value in state_dict.items():
        fields = key.split(".")
        part = ".".join(fields[:2]) if len(fields) > 2 and fields[1].isdigit() else fields[0]
        parts[part] = parts.get(part, 0) + value.numel()
    lines = "".join(f"{k}:{list(v.shape)}\n" for k, v in sorted(state_dict.items()))
    return {"tensors": len(state_dict), "values": parts, "sha256": hashlib.sha256(lines.encode()).hexdigest()}


@pytest.mark.parametrize("config", sorted(_full_size()))
def test_full_size_zoo_config_has_mmseg_checkpoint_layout(config):
    """The full-size zoo configs (HRNet, OCRNet, Semantic FPN; Swin, SETR, LR-ASPP, BiSeNetV1/V2, STDC, DANet, ISANet,
    NonLocal, PointRend from tools/mmseg_reference_fullsize2.py) build exactly the checkpoint layout of
    MMSeg's own model for the config they mirror: every key and shape, so MMSeg's released checkpoints load.
    Built on the meta device (no weights allocated)."""
    expected = _full_size()[config]
    cfg = load_config(os.path.join(ROOT, "configs", config))
    with torch.device("meta"):  # without the pretrained weights the zoo names (nothing is downloaded)
        model = build_segmentor(without_pretrained(cfg["model"]))
    got = _signature(model.state_dict())
    assert got["values"] == expected["values"], f"{config} vs MMSeg {expected['mmseg_config']}"
    assert (got["tensors"], got["sha256"]) == (expected["tensors"], expected["sha256"]), expected["mmseg_config"]
