"""CrossEntropyLoss against hand computation, following MMSeg's averaging rules."""
import pytest
import torch
import torch.nn.functional as F

from rayseg.errors import ConfigError
from rayseg.models import build_loss
from rayseg.models.losses import CrossEntropyLoss

from loss_cases import (MMSEG_CLASS_WEIGHT, MMSEG_LABELS, MMSEG_LABELS_IGNORED, MMSEG_LOGITS,  # noqa: E402
                        write_weights)

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
def test_class_weight_default_divides_by_the_weights_of_valid_pixels(data, avg_non_ignore):
    """MMSeg 1.x / torch's weighted mean: Σ w[y]·nll / Σ w[y], the sums over the valid pixels."""
    logits, label = data
    w = [0.5, 2.0, 1.0, 3.0]
    loss = CrossEntropyLoss(class_weight=w, avg_non_ignore=avg_non_ignore)(logits, label, ignore_index=IGNORE)
    valid = label != IGNORE
    pixel_w = torch.tensor(w)[label.clamp(max=3)] * valid
    assert torch.allclose(loss, (nll_map(logits, label) * pixel_w).sum() / pixel_w.sum(), atol=1e-6)
    torch_loss = F.cross_entropy(logits, label, weight=torch.tensor(w), ignore_index=IGNORE)
    assert torch.allclose(loss, torch_loss, atol=1e-6)


@pytest.mark.parametrize("avg_non_ignore", [False, True])
def test_class_weight_norm_pixels_keeps_the_pixel_count(data, avg_non_ignore):
    """MMSeg 0.x: the weights scale the terms but the denominator stays a pixel count."""
    logits, label = data
    w = [0.5, 2.0, 1.0, 3.0]
    loss = CrossEntropyLoss(class_weight=w, avg_non_ignore=avg_non_ignore, class_weight_norm="pixels")(
        logits, label, ignore_index=IGNORE)
    per_pixel = nll_map(logits, label) * torch.tensor(w)[label.clamp(max=3)]
    denom = (label != IGNORE).sum() if avg_non_ignore else label.numel()
    assert torch.allclose(loss, per_pixel.sum() / denom, atol=1e-6)
    weighted = CrossEntropyLoss(class_weight=w, avg_non_ignore=avg_non_ignore)(logits, label, ignore_index=IGNORE)
    assert not torch.allclose(loss, weighted, atol=1e-4)
    # Without class weights both rules are the same pixel count.
    assert torch.equal(CrossEntropyLoss(class_weight_norm="pixels")(logits, label, ignore_index=IGNORE),
                       CrossEntropyLoss()(logits, label, ignore_index=IGNORE))


# The expected numbers below came from MMSegmentation 1.2.2 itself (mmcv-lite 2.2.0, mmengine 0.10.7,
# torch 2.14.1): `/tmp/mmseg-venv/bin/python tools/mmseg_semantics_reference.py` (tools/README.md), on the
# inputs of loss_cases.py.
@pytest.mark.parametrize("class_weight, avg_non_ignore, labels, expected", [
    (None, False, MMSEG_LABELS, 1.9577531814575195),
    (None, True, MMSEG_LABELS, 1.9577531814575195),
    (None, False, MMSEG_LABELS_IGNORED, 1.3134299516677856),
    (None, True, MMSEG_LABELS_IGNORED, 1.9701449871063232),
    (MMSEG_CLASS_WEIGHT, False, MMSEG_LABELS, 2.089515447616577),
    (MMSEG_CLASS_WEIGHT, True, MMSEG_LABELS, 2.089515447616577),
])
def test_matches_mmseg_1x(class_weight, avg_non_ignore, labels, expected):
    loss = CrossEntropyLoss(class_weight=class_weight, avg_non_ignore=avg_non_ignore)(
        torch.tensor(MMSEG_LOGITS), torch.tensor(labels), ignore_index=IGNORE)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_class_weight_rules_on_the_mmseg_case():
    """MMSeg 1.2.2 raises IndexError for a weighted batch with ignored pixels; we take its rule over the
    valid pixels (= torch's weighted mean). 'pixels' gives MMSeg 0.x's value: Σw[y] = 7 over 6 pixels,
    so 7/6 × the 1.x value (2.4378 vs 2.0895)."""
    logits = torch.tensor(MMSEG_LOGITS)
    ignored = torch.tensor(MMSEG_LABELS_IGNORED)
    for avg_non_ignore in (False, True):
        loss = CrossEntropyLoss(class_weight=MMSEG_CLASS_WEIGHT, avg_non_ignore=avg_non_ignore)(logits, ignored)
        expected = F.cross_entropy(logits, ignored, weight=torch.tensor(MMSEG_CLASS_WEIGHT), ignore_index=IGNORE)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
        assert loss.item() == pytest.approx(2.2546112537384033, rel=1e-6)
    pixels = CrossEntropyLoss(class_weight=MMSEG_CLASS_WEIGHT, class_weight_norm="pixels")
    assert pixels(logits, torch.tensor(MMSEG_LABELS)).item() == pytest.approx(2.43776798248291, rel=1e-6)
    assert pixels(logits, torch.tensor(MMSEG_LABELS)).item() == pytest.approx(2.089515447616577 * 7 / 6, rel=1e-6)


def test_class_weight_norm_is_checked():
    with pytest.raises(ConfigError, match="class_weight_norm"):
        build_loss(dict(type="CrossEntropyLoss", class_weight_norm="mean"))
    assert build_loss(dict(type="CrossEntropyLoss", class_weight_norm="pixels")).class_weight_norm == "pixels"


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
    from_file = CrossEntropyLoss(class_weight=write_weights(tmp_path, w, suffix))
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
