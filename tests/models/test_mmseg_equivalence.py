"""Weight compatibility with MMSegmentation 1.x, checked against reference outputs MMSeg itself produced.

``tests/fixtures/mmseg/`` holds, per architecture, a checkpoint saved from MMSeg 1.x's own model
(``<arch>.pth``: MMSeg parameter names, random weights and BN statistics), the input and the logits MMSeg
computed (``<arch>_io.pt``) and the matching rayseg config (``<arch>.yaml``); all were written by
``tools/make_mmseg_reference.py`` in a separate venv with MMSeg installed. This test needs no MMSeg: it
loads each checkpoint the way a user does (``load_weights_file`` + ``load_model_weights``) into the model
built from the YAML and compares logits. A missing fixture is a failure, never a skip.
"""
import os

import pytest
import torch

from rayseg.config import load_config
from rayseg.engine.checkpoint import load_model_weights, load_weights_file
from rayseg.errors import CheckpointError
from rayseg.models import build_segmentor

torch.set_num_threads(1)
FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures", "mmseg")
ARCHS = ["fcn", "pspnet", "deeplabv3", "deeplabv3plus", "upernet", "segformer"]
TOL = 1e-4


def fixture(name):
    path = os.path.join(FIXTURES, name)
    assert os.path.isfile(path), f"missing MMSeg reference fixture {path} (regenerate with tools/make_mmseg_reference.py)"
    return path


def build(arch):
    cfg = load_config(fixture(f"{arch}.yaml"))
    return build_segmentor(cfg["model"])


def reference(arch):
    io = torch.load(fixture(f"{arch}_io.pt"), map_location="cpu", weights_only=True)
    return io["input"], io["logits"]


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
    x, expected = reference(arch)
    with torch.no_grad():
        logits = model.inference(x)
        out = model(x)["out"]
    assert logits.shape == expected.shape
    # The reference is not trivially small, so a tolerance of 1e-4 is a real check.
    assert expected.abs().max() > 0.1
    diff = (logits - expected).abs().max().item()
    assert diff < TOL, f"{arch}: max |rayseg - MMSeg| = {diff:.3g}"
    assert (out - expected).abs().max().item() < TOL


@pytest.mark.parametrize("arch", ["fcn", "segformer"])
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
    x, expected = reference("fcn")
    with torch.no_grad():
        assert (model.inference(x) - expected).abs().max().item() > 1e-2
