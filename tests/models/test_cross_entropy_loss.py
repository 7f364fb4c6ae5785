"""CrossEntropyLoss against hand computation, following MMSeg's averaging rules."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rayseg.errors import ConfigError
from rayseg.models import build_loss
from rayseg.models.losses import CrossEntropyLoss

IGNORE = 255


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 5, 6, generator=g)
    label = torch.randint(0, 4, (2, 5, 6), generator=g)
    label[0, :2, :] = IGNORE  # 12 of 60 pixels ignored
    return logits, label


def nll_map(logits, label):
    """Per-pixel −log p(label), 0 where ignored (hand computation, no torch CE)."""
    logp = logits.log_softmax(dim=1)
    safe = label.clone()
    safe[label == IGNORE] = 0
    out = -logp.gather(1, safe.unsqueeze(1)).squeeze(1)
    return out * (label != IGNORE)


def test_mean_divides_by_all_pixels_including_ignored(data):
    logits, label = data
    loss = CrossEntropyLoss()(logits, label, ignore_index=IGNORE)
    expected = nll_map(logits, label).sum() / label.numel()
    assert torch.allclose(loss, expected, atol=1e-6)
    # ...which is smaller than torch's mean over valid pixels.
    assert loss < F.cross_entropy(logits, label, ignore_index=IGNORE)


def test_avg_non_ignore_divides_by_valid_pixels(data):
    logits, label = data
    loss = CrossEntropyLoss(avg_non_ignore=True)(logits, label, ignore_index=IGNORE)
    valid = (label != IGNORE).sum()
    assert valid == 48
    assert torch.allclose(loss, nll_map(logits, label).sum() / valid, atol=1e-6)
    assert torch.allclose(loss, F.cross_entropy(logits, label, ignore_index=IGNORE), atol=1e-6)


@pytest.mark.parametrize("avg_non_ignore", [False, True])
def test_class_weight_scales_terms_not_denominator(data, avg_non_ignore):
    logits, label = data
    w = [0.5, 2.0, 1.0, 3.0]
    loss = CrossEntropyLoss(class_weight=w, avg_non_ignore=avg_non_ignore)(logits, label, ignore_index=IGNORE)
    safe = label.clamp(max=3)
    per_pixel = nll_map(logits, label) * torch.tensor(w)[safe]
    denom = (label != IGNORE).sum() if avg_non_ignore else label.numel()
    assert torch.allclose(loss, per_pixel.sum() / denom, atol=1e-6)
    # torch divides by the sum of the weights instead: a different number.
    torch_loss = F.cross_entropy(logits, label, weight=torch.tensor(w), ignore_index=IGNORE)
    assert not torch.allclose(loss, torch_loss, atol=1e-4)


def test_loss_weight_and_reductions(data):
    logits, label = data
    base = CrossEntropyLoss()(logits, label, ignore_index=IGNORE)
    assert torch.allclose(CrossEntropyLoss(loss_weight=0.4)(logits, label, ignore_index=IGNORE), 0.4 * base)
    total = CrossEntropyLoss(reduction="sum")(logits, label, ignore_index=IGNORE)
    assert torch.allclose(total, nll_map(logits, label).sum(), atol=1e-5)
    per_pixel = CrossEntropyLoss(reduction="none")(logits, label, ignore_index=IGNORE)
    assert per_pixel.shape == label.shape and (per_pixel[label == IGNORE] == 0).all()
    override = CrossEntropyLoss()(logits, label, ignore_index=IGNORE, reduction_override="sum")
    assert torch.allclose(override, total)


def test_pixel_weight_multiplies_terms(data):
    logits, label = data
    weight = torch.rand(label.shape, generator=torch.Generator().manual_seed(1))
    loss = CrossEntropyLoss()(logits, label, weight=weight, ignore_index=IGNORE)
    assert torch.allclose(loss, (nll_map(logits, label) * weight).sum() / label.numel(), atol=1e-6)


def test_all_ignored_gives_zero_not_nan(data):
    logits, _ = data
    label = torch.full((2, 5, 6), IGNORE)
    for avg in (False, True):
        loss = CrossEntropyLoss(avg_non_ignore=avg)(logits, label, ignore_index=IGNORE)
        assert torch.isfinite(loss) and loss.item() == 0


@pytest.mark.parametrize("avg_non_ignore", [False, True])
def test_use_sigmoid_multiclass(data, avg_non_ignore):
    logits, label = data
    loss = CrossEntropyLoss(use_sigmoid=True, avg_non_ignore=avg_non_ignore)(logits, label, ignore_index=IGNORE)
    valid = (label != IGNORE)
    onehot = F.one_hot(label.clamp(max=3), 4).permute(0, 3, 1, 2).float()
    p = torch.sigmoid(logits)
    terms = -(onehot * p.log() + (1 - onehot) * (1 - p).log()) * valid.unsqueeze(1)
    denom = valid.sum() * 4 if avg_non_ignore else logits.numel()
    assert torch.allclose(loss, terms.sum() / denom, atol=1e-5)


def test_use_sigmoid_binary_single_channel():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 1, 4, 4, generator=g)
    label = torch.randint(0, 2, (2, 4, 4), generator=g)
    label[1, 0] = IGNORE
    loss = CrossEntropyLoss(use_sigmoid=True, avg_non_ignore=True)(logits, label, ignore_index=IGNORE)
    valid = label != IGNORE
    expected = F.binary_cross_entropy_with_logits(logits[:, 0][valid], label[valid].float())
    assert torch.allclose(loss, expected, atol=1e-6)


def test_use_sigmoid_class_weight_is_per_channel_pos_weight(data):
    logits, label = data
    w = [1.0, 2.0, 3.0, 4.0]
    loss = CrossEntropyLoss(use_sigmoid=True, class_weight=w)(logits, label, ignore_index=IGNORE)
    valid = (label != IGNORE).unsqueeze(1)
    onehot = F.one_hot(label.clamp(max=3), 4).permute(0, 3, 1, 2).float()
    p = torch.sigmoid(logits)
    pw = torch.tensor(w).view(1, 4, 1, 1)
    terms = -(pw * onehot * p.log() + (1 - onehot) * (1 - p).log()) * valid
    assert torch.allclose(loss, terms.sum() / logits.numel(), atol=1e-5)


@pytest.mark.parametrize("suffix", [".npy", ".txt", ".json"])
def test_class_weight_from_file(tmp_path, data, suffix):
    logits, label = data
    w = [0.2595, 0.1826, 4.5640, 0.1417]
    path = tmp_path / f"weights{suffix}"
    if suffix == ".npy":
        np.save(path, np.array(w))
    elif suffix == ".txt":
        np.savetxt(path, np.array(w))
    else:
        path.write_text(json.dumps(w))
    from_file = CrossEntropyLoss(class_weight=str(path))
    assert from_file.class_weight == pytest.approx(w)
    assert torch.allclose(from_file(logits, label, ignore_index=IGNORE),
                          CrossEntropyLoss(class_weight=w)(logits, label, ignore_index=IGNORE))


def test_class_weight_missing_file_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="nope.npy"):
        CrossEntropyLoss(class_weight=str(tmp_path / "nope.npy"))


def test_build_loss_name_and_config_errors():
    loss = build_loss(dict(type="CrossEntropyLoss", loss_name="loss_other", loss_weight=0.5))
    assert loss.loss_name == "loss_other"
    with pytest.raises(ConfigError, match="loss_wieght"):
        build_loss(dict(type="CrossEntropyLoss", loss_wieght=1.0))
    with pytest.raises(ConfigError, match="use_mask"):
        build_loss(dict(type="CrossEntropyLoss", use_mask=True))
    with pytest.raises(ConfigError, match="CrossEntropyLos"):
        build_loss(dict(type="CrossEntropyLos"))


def test_gradient_flows_and_ignored_pixels_get_none(data):
    logits, label = data
    logits = logits.clone().requires_grad_(True)
    CrossEntropyLoss()(logits, label, ignore_index=IGNORE).backward()
    assert (logits.grad[0, :, :2, :] == 0).all()
    assert logits.grad[1].abs().sum() > 0
