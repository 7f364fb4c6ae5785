"""DiceLoss, FocalLoss, LovaszLoss and OHEMPixelSampler against hand computation and plain-Python references.

The references below loop over pixels and classes with Python floats (no torch loss code), so they check the
vectorised implementations independently. All tensors are tiny.
"""
import copy
import itertools
import math

import pytest
import torch

from rayseg.errors import ConfigError
from rayseg.models import build_head, build_loss
from rayseg.models.losses import CrossEntropyLoss
from rayseg.models.losses.dice_loss import DiceLoss
from rayseg.models.losses.focal_loss import FocalLoss
from rayseg.models.losses.lovasz_loss import LovaszLoss
from rayseg.models.samplers.ohem_pixel_sampler import OHEMPixelSampler
from rayseg.registry import PIXEL_SAMPLERS, build

from loss_cases import MMSEG_CLASS_WEIGHT, MMSEG_FOCAL_ALPHA, MMSEG_LABELS, MMSEG_LOGITS, write_weights  # noqa: E402

torch.set_num_threads(1)
IGNORE = 255


def random_case(seed, n=2, c=3, h=4, w=5, ignored=3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    label = torch.randint(0, c, (n, h, w), generator=g)
    label.view(-1)[torch.randperm(label.numel(), generator=g)[:ignored]] = IGNORE
    return logits, label


def pixels(label):
    """(n, i, j) index tuples of every pixel."""
    n, h, w = label.shape
    return list(itertools.product(range(n), range(h), range(w)))


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def softmax_at(logits, n, i, j):
    row = [float(v) for v in logits[n, :, i, j]]
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


# ----------------------------------------------------------------------------------------------- Dice
def ref_dice(logits, label, use_sigmoid=True, naive=False, eps=1e-3, ignore_index=IGNORE, pixel_weight=None):
    """Per-sample dice loss, one Python loop per sample/class/pixel."""
    c = logits.shape[1]
    out = []
    for n in range(logits.shape[0]):
        a = b = t2 = 0.0
        for (_, i, j) in [p for p in pixels(label) if p[0] == n]:
            probs = [sigmoid(float(v)) for v in logits[n, :, i, j]] if use_sigmoid else softmax_at(logits, n, i, j)
            pw = 1.0 if pixel_weight is None else float(pixel_weight[n, i, j])
            for k in range(c):
                if k == ignore_index:
                    continue
                t = 1.0 if int(label[n, i, j]) == k else 0.0  # out-of-range labels never match
                a += probs[k] * t * pw
                b += (probs[k] if naive else probs[k] ** 2) * pw
                t2 += t * pw
        out.append(1 - (2 * a + eps) / (b + t2 + eps) if naive else 1 - 2 * a / (b + eps + t2 + eps))
    return torch.tensor(out, dtype=torch.float64)


def test_dice_hand_computed():
    # One image, two pixels, probabilities given directly (activate=False).
    probs = torch.tensor([[[[0.8, 0.3]], [[0.2, 0.7]]]])
    label = torch.tensor([[[0, 1]]])
    eps = 1e-3
    # a = 0.8 + 0.7, Σp² = 0.64 + 0.09 + 0.04 + 0.49, Σt² = 2
    expected = 1 - 2 * 1.5 / ((1.26 + eps) + (2 + eps))
    assert DiceLoss(activate=False)(probs, label).item() == pytest.approx(expected, rel=1e-6)
    naive = 1 - (2 * 1.5 + eps) / (2.0 + 2 + eps)
    assert DiceLoss(activate=False, naive_dice=True)(probs, label).item() == pytest.approx(naive, rel=1e-6)


def test_dice_ignored_pixel_keeps_its_prediction_in_the_denominator():
    # MMSeg 1.x: label 255 → all-zero target, but the pixel's p² still enters Σp².
    probs = torch.tensor([[[[0.8, 0.3]], [[0.2, 0.7]]]])
    label = torch.tensor([[[0, IGNORE]]])
    eps = 1e-3
    expected = 1 - 2 * 0.8 / ((1.26 + eps) + (1 + eps))
    assert DiceLoss(activate=False)(probs, label).item() == pytest.approx(expected, rel=1e-6)
    # ignore_index names a class channel: 1 drops channel 1 from every sum.
    only0 = 1 - 2 * 0.8 / ((0.64 + 0.09 + eps) + (1 + eps))
    assert DiceLoss(activate=False, ignore_index=1)(probs, label).item() == pytest.approx(only0, rel=1e-6)


@pytest.mark.parametrize("use_sigmoid,naive", [(True, False), (False, False), (True, True), (False, True)])
@pytest.mark.parametrize("seed", [0, 1])
def test_dice_matches_reference(seed, use_sigmoid, naive):
    logits, label = random_case(seed)
    loss = DiceLoss(use_sigmoid=use_sigmoid, naive_dice=naive, reduction="none")(logits, label)
    expected = ref_dice(logits, label, use_sigmoid=use_sigmoid, naive=naive)
    assert torch.allclose(loss, expected, atol=1e-9)
    mean = DiceLoss(use_sigmoid=use_sigmoid, naive_dice=naive)(logits, label)
    assert torch.allclose(mean, expected.mean(), atol=1e-9)


def test_dice_reductions_loss_weight_and_sample_weight():
    logits, label = random_case(3)
    per_sample = ref_dice(logits, label)
    assert torch.allclose(DiceLoss(reduction="sum")(logits, label), per_sample.sum())
    assert torch.allclose(DiceLoss()(logits, label, reduction_override="none"), per_sample)
    assert torch.allclose(DiceLoss(loss_weight=0.3)(logits, label), 0.3 * per_sample.mean())
    w = torch.tensor([2.0, 0.5], dtype=torch.float64)
    assert torch.allclose(DiceLoss()(logits, label, weight=w), (w * per_sample).mean())
    assert torch.allclose(DiceLoss()(logits, label, weight=w, avg_factor=4), (w * per_sample).sum() / 4)
    with pytest.raises(ValueError):
        DiceLoss()(logits, label, reduction_override="max")


def test_dice_pixel_weight_scales_each_pixel():
    logits, label = random_case(4)
    pw = torch.rand(label.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    pw[0, 0, :] = 0
    loss = DiceLoss(reduction="none")(logits, label, weight=pw)
    assert torch.allclose(loss, ref_dice(logits, label, pixel_weight=pw), atol=1e-9)
    # Weight 0 removes a pixel entirely: same as cropping it away.
    mask = torch.ones_like(label, dtype=torch.float64)
    mask[:, 0, :] = 0
    cropped = DiceLoss(reduction="none")(logits[:, :, 1:], label[:, 1:])
    assert torch.allclose(DiceLoss(reduction="none")(logits, label, weight=mask), cropped, atol=1e-12)


def test_dice_accepts_one_hot_targets_and_gradients_flow():
    logits, label = random_case(6, ignored=0)
    one_hot = torch.nn.functional.one_hot(label, 3).permute(0, 3, 1, 2)
    assert torch.allclose(DiceLoss()(logits, one_hot), DiceLoss()(logits, label))
    x = logits.clone().requires_grad_(True)
    DiceLoss(use_sigmoid=False)(x, label).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_dice_config_errors():
    assert build_loss(dict(type="DiceLoss", loss_name="loss_d")).loss_name == "loss_d"
    with pytest.raises(ConfigError, match="smooth"):  # MMSeg 0.x argument, not part of the 1.x loss
        build_loss(dict(type="DiceLoss", smooth=1))
    with pytest.raises(ConfigError, match="class_weight"):
        build_loss(dict(type="DiceLoss", class_weight=[1.0, 2.0]))
    with pytest.raises(ConfigError, match="reduction"):
        build_loss(dict(type="DiceLoss", reduction="avg"))


# ---------------------------------------------------------------------------------------------- Focal
def ref_focal(logits, label, gamma=2.0, alpha=0.5, class_weight=None, pixel_weight=None):
    """Per-term focal loss map (N,C,H,W) in plain Python; ignored pixels give 0."""
    out = torch.zeros_like(logits)
    c = logits.shape[1]
    for (n, i, j) in pixels(label):
        y = int(label[n, i, j])
        if y == IGNORE:
            continue
        for k in range(c):
            p = sigmoid(float(logits[n, k, i, j]))
            t = 1.0 if y == k else 0.0
            a = alpha[k] if isinstance(alpha, list) else alpha
            bce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
            fw = (a * t + (1 - a) * (1 - t)) * abs(t - p) ** gamma
            cw = 1.0 if class_weight is None else class_weight[k]
            pw = 1.0 if pixel_weight is None else float(pixel_weight[n, i, j])
            out[n, k, i, j] = bce * fw * cw * pw
    return out


def test_focal_hand_computed():
    # One pixel, two classes, logits 0: p = 0.5 for both; each term ln2 · 0.5 · 0.5².
    logits = torch.zeros(1, 2, 1, 1)
    label = torch.zeros(1, 1, 1, dtype=torch.long)
    assert FocalLoss()(logits, label).item() == pytest.approx(math.log(2) * 0.125, rel=1e-6)
    assert FocalLoss(reduction="sum")(logits, label).item() == pytest.approx(2 * math.log(2) * 0.125, rel=1e-6)
    # alpha 0.25: positive term ×0.25, negative term ×0.75.
    assert FocalLoss(alpha=0.25, reduction="sum")(logits, label).item() == \
        pytest.approx(math.log(2) * 0.25 * (0.25 + 0.75), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_focal_matches_reference(seed):
    logits, label = random_case(seed)
    expected = ref_focal(logits, label)
    per_term = FocalLoss(reduction="none")(logits, label, ignore_index=IGNORE)
    assert per_term.shape == logits.shape
    assert torch.allclose(per_term, expected, atol=1e-12)
    # 'mean' divides by every term, ignored pixels included (MMSeg).
    assert torch.allclose(FocalLoss()(logits, label), expected.sum() / logits.numel(), atol=1e-12)
    opts = dict(gamma=1.5, alpha=[0.2, 0.5, 0.9], class_weight=[1.0, 3.0, 0.5])
    loss = FocalLoss(**opts, loss_weight=0.7, reduction="sum")(logits, label)
    assert torch.allclose(loss, 0.7 * ref_focal(logits, label, **opts).sum(), atol=1e-10)


def test_focal_gamma0_is_half_sigmoid_bce():
    # With gamma 0 and alpha 0.5 every term is 0.5·BCE; both average over all N·C·H·W terms.
    logits, label = random_case(7)
    logits = logits.float()  # CrossEntropyLoss(use_sigmoid) builds float32 targets
    focal = FocalLoss(gamma=0.0, alpha=0.5)(logits, label, ignore_index=IGNORE)
    bce = CrossEntropyLoss(use_sigmoid=True)(logits, label, ignore_index=IGNORE)
    assert torch.allclose(focal, 0.5 * bce, atol=1e-6)


def test_focal_ignore_index_and_pixel_weight():
    logits, label = random_case(8)
    x = logits.clone().requires_grad_(True)
    FocalLoss()(x, label, ignore_index=IGNORE).backward()
    ignored = (label == IGNORE).unsqueeze(1).expand_as(x)
    assert (x.grad[ignored] == 0).all() and x.grad[~ignored].abs().sum() > 0
    # A custom ignore value: label 2 pixels drop out, 255 would be out of range.
    label2 = label.clone()
    label2[label2 == IGNORE] = 2
    masked = FocalLoss(reduction="none")(logits, label2, ignore_index=2)
    assert (masked.permute(0, 2, 3, 1)[label2 == 2] == 0).all()
    pw = torch.rand(label.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    assert torch.allclose(FocalLoss(reduction="sum")(logits, label, weight=pw),
                          ref_focal(logits, label, pixel_weight=pw).sum(), atol=1e-10)
    with pytest.raises(ValueError, match="labels must lie"):
        FocalLoss()(logits, label, ignore_index=0)  # 255 is now an ordinary (out-of-range) label


def _one_hot(label, c):
    return torch.nn.functional.one_hot(label, c).permute(0, 3, 1, 2).to(torch.float64)


@pytest.mark.parametrize("seed", [0, 1])
def test_focal_one_hot_target_equals_index_labels(seed):
    """MMSeg's (N, C, H, W) float target: a one-hot of the labels gives the index-label loss."""
    logits, label = random_case(seed, ignored=0)
    target = _one_hot(label, logits.shape[1])
    for opts in (dict(), dict(gamma=1.5, alpha=[0.2, 0.5, 0.9], class_weight=[1.0, 3.0, 0.5], loss_weight=0.7)):
        for reduction in ("mean", "sum", "none"):
            dense = FocalLoss(reduction=reduction, **opts)(logits, target)
            assert torch.allclose(dense, FocalLoss(reduction=reduction, **opts)(logits, label), atol=1e-12)
    pw = torch.rand(label.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.allclose(FocalLoss()(logits, target, weight=pw), FocalLoss()(logits, label, weight=pw))


# From MMSegmentation 1.2.2 itself (tools/mmseg_semantics_reference.py; inputs in loss_cases.py). MMSeg has
# no ignored pixels in a one-hot target; a label-smoothed target is used as given.
MMSEG_FOCAL = {
    "one_hot": (0.25933489203453064, 0.6942028403282166, [1.654086709022522, 1.0472643375396729, 1.9666765928268433]),
    "smoothed": (0.23958748579025269, 0.6452181339263916, [1.519968867301941, 0.9963674545288086, 1.796238899230957]),
}


@pytest.mark.parametrize("kind", sorted(MMSEG_FOCAL))
def test_focal_dense_target_matches_mmseg(kind):
    logits = torch.tensor(MMSEG_LOGITS)
    target = _one_hot(torch.tensor(MMSEG_LABELS), 3).float()
    if kind == "smoothed":
        target = target * 0.9 + 0.1 / 3
    default, custom, per_class = MMSEG_FOCAL[kind]
    assert FocalLoss()(logits, target).item() == pytest.approx(default, rel=1e-6)
    loss = FocalLoss(gamma=1.5, alpha=MMSEG_FOCAL_ALPHA, class_weight=MMSEG_CLASS_WEIGHT, loss_weight=2.0)
    assert loss(logits, target).item() == pytest.approx(custom, rel=1e-6)
    none = FocalLoss(reduction="none")(logits, target)
    assert none.shape == (1, 3, 2, 3)
    assert none.sum(dim=(0, 2, 3)).tolist() == pytest.approx(per_class, rel=1e-6)


def test_focal_rejects_shapes_that_are_neither_labels_nor_target():
    logits = torch.zeros(2, 5, 17, 19)
    with pytest.raises(ValueError, match="match neither"):
        FocalLoss()(logits, torch.zeros(2, 4, 17, 19))
    with pytest.raises(ValueError, match="match neither"):
        FocalLoss()(logits, torch.zeros(2, 17, 18, dtype=torch.long))
    assert FocalLoss()(logits, torch.zeros(2, 5, 17, 19)).item() > 0  # the shape the issue reported refused


@pytest.mark.parametrize("suffix", [".npy", ".txt", ".json"])
def test_focal_and_lovasz_class_weight_from_file(tmp_path, suffix):
    logits, label = random_case(10)
    w = [0.2595, 4.564, 1.5]
    path = write_weights(tmp_path, w, suffix)
    focal = FocalLoss(class_weight=path)
    assert focal.class_weight == pytest.approx(w)
    assert torch.allclose(focal(logits, label), FocalLoss(class_weight=w)(logits, label))
    lovasz = LovaszLoss(class_weight=path)
    assert lovasz.class_weight == pytest.approx(w)
    assert torch.allclose(lovasz(logits, label), LovaszLoss(class_weight=w)(logits, label))
    with pytest.raises(ConfigError, match="missing.json"):
        LovaszLoss(class_weight=str(tmp_path / "missing.json"))


def test_focal_config_errors():
    with pytest.raises(ConfigError, match="sigmoid"):
        build_loss(dict(type="FocalLoss", use_sigmoid=False))
    with pytest.raises(ConfigError, match="gama"):
        build_loss(dict(type="FocalLoss", gama=2.0))
    with pytest.raises(ConfigError, match="alpha"):
        build_loss(dict(type="FocalLoss", alpha=1.5))
    with pytest.raises(ConfigError, match="alpha"):
        build_loss(dict(type="FocalLoss", alpha="big"))
    assert build_loss(dict(type="FocalLoss", gamma=2)).gamma == 2.0


# --------------------------------------------------------------------------------------------- Lovasz
def jaccard_loss_of_set(errors_set, gt):
    """Δ_J(S) = |S| / |gt ∪ S| for a set S of pixel indices (0 for the empty set)."""
    return len(errors_set) / len(gt | errors_set) if errors_set else 0.0


def lovasz_extension(errors, gt):
    """Σ_i e_(i)·(Δ(S_i) − Δ(S_{i−1})), S_i = the i pixels with the largest errors (Berman et al., eq. 8)."""
    order = sorted(range(len(errors)), key=lambda k: -errors[k])
    total, prev, chosen = 0.0, 0.0, set()
    for k in order:
        chosen.add(k)
        cur = jaccard_loss_of_set(chosen, gt)
        total += errors[k] * (cur - prev)
        prev = cur
    return total


def ref_lovasz_softmax(logits, label, classes="present", class_weight=None):
    rows = [(softmax_at(logits, n, i, j), int(label[n, i, j])) for (n, i, j) in pixels(label)
            if int(label[n, i, j]) != IGNORE]
    if not rows:
        return 0.0
    c = logits.shape[1]
    wanted = range(c) if classes in ("all", "present") else classes
    losses = []
    for k in wanted:
        gt = {idx for idx, (_, y) in enumerate(rows) if y == k}
        if classes == "present" and not gt:
            continue
        errors = [abs((1.0 if y == k else 0.0) - p[k]) for p, y in rows]
        losses.append(lovasz_extension(errors, gt) * (1.0 if class_weight is None else class_weight[k]))
    return sum(losses) / len(losses)


def ref_lovasz_hinge(logits, label):
    rows = [(float(logits.reshape(-1)[k]), int(v)) for k, v in enumerate(label.reshape(-1)) if int(v) != IGNORE]
    if not rows:
        return 0.0
    errors = [max(0.0, 1.0 - x * (2 * y - 1)) for x, y in rows]
    gt = {k for k, (_, y) in enumerate(rows) if y == 1}
    # The hinge sorts the raw errors, then applies the ReLU; zeros at the end contribute nothing either way.
    return lovasz_extension(errors, gt)


def test_lovasz_hand_computed():
    # Binary: errors 1 − 2 = −1 and 1 + 1 = 2; both pixels foreground; grad (1/2, 1/2) → 2·½ = 1.
    logits = torch.tensor([[[2.0, -1.0]]])
    label = torch.tensor([[[1, 1]]])
    assert LovaszLoss(loss_type="binary")(logits, label).item() == pytest.approx(1.0)
    # Multi-class: probabilities (0.8, 0.2) and (0.4, 0.6), both labelled 0.
    mc = torch.log(torch.tensor([[0.8, 0.4], [0.2, 0.6]])).reshape(1, 2, 1, 2)
    y = torch.tensor([[[0, 0]]])
    # class 0: errors (0.2, 0.6) → 0.6·½ + 0.2·½ = 0.4; class 1 absent (ignored with 'present').
    assert LovaszLoss()(mc, y).item() == pytest.approx(0.4, rel=1e-6)
    # 'all': class 1 errors (0.2, 0.6), no ground truth → Δ = 1 after the first pixel → 0.6; mean 0.5.
    assert LovaszLoss(classes="all")(mc, y).item() == pytest.approx(0.5, rel=1e-6)
    assert LovaszLoss(classes=[1])(mc, y).item() == pytest.approx(0.6, rel=1e-6)
    assert LovaszLoss(classes="all", class_weight=[1.0, 2.0])(mc, y).item() == pytest.approx(0.8, rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("classes", ["present", "all", [0, 2]])
def test_lovasz_softmax_matches_reference(seed, classes):
    logits, label = random_case(seed, c=4)
    cw = [0.5, 1.0, 2.0, 3.0]
    loss = LovaszLoss(classes=classes, class_weight=cw)(logits, label, ignore_index=IGNORE)
    assert loss.item() == pytest.approx(ref_lovasz_softmax(logits, label, classes, cw), abs=1e-9)
    per_image = LovaszLoss(classes=classes, per_image=True, reduction="none")(logits, label)
    expected = [ref_lovasz_softmax(logits[n:n + 1], label[n:n + 1], classes) for n in range(2)]
    assert per_image.tolist() == pytest.approx(expected, abs=1e-9)
    summed = LovaszLoss(classes=classes, per_image=True, reduction="sum", loss_weight=0.5)(logits, label)
    assert summed.item() == pytest.approx(0.5 * sum(expected), abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lovasz_hinge_matches_reference(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 1, 3, 4, generator=g, dtype=torch.float64) * 2
    label = torch.randint(0, 2, (2, 3, 4), generator=g)
    label[0, 0, :2] = IGNORE
    loss = LovaszLoss(loss_type="binary")(logits, label)
    assert loss.item() == pytest.approx(ref_lovasz_hinge(logits, label), abs=1e-9)
    per_image = LovaszLoss(loss_type="binary", per_image=True)(logits[:, 0], label)
    expected = [ref_lovasz_hinge(logits[n], label[n]) for n in range(2)]
    assert per_image.item() == pytest.approx(sum(expected) / 2, abs=1e-9)


def test_lovasz_ignored_pixels_drop_out():
    logits, label = random_case(11, ignored=0)
    cut = label.clone()
    cut[:, 0, :] = IGNORE
    x = logits.clone().requires_grad_(True)
    loss = LovaszLoss()(x, cut, ignore_index=IGNORE)
    assert loss.item() == pytest.approx(LovaszLoss()(logits[:, :, 1:], label[:, 1:]).item(), abs=1e-12)
    loss.backward()
    assert (x.grad[:, :, 0, :] == 0).all()
    # Nothing valid: zero loss, zero (not NaN) gradients.
    x = logits.clone().requires_grad_(True)
    empty = LovaszLoss()(x, torch.full_like(label, IGNORE))
    empty.backward()
    assert empty.item() == 0 and (x.grad == 0).all()
    one = LovaszLoss()(logits, torch.where(torch.arange(label.numel()).view_as(label) == 0, label, IGNORE))
    assert torch.isfinite(one)  # a single valid pixel keeps its (1, C) shape


def test_lovasz_config_errors():
    with pytest.raises(ConfigError, match="loss_type"):
        build_loss(dict(type="LovaszLoss", loss_type="multiclass"))
    with pytest.raises(ConfigError, match="classes"):
        build_loss(dict(type="LovaszLoss", classes="some"))
    with pytest.raises(ConfigError, match="classes"):
        build_loss(dict(type="LovaszLoss", classes=[]))
    with pytest.raises(ConfigError, match="per_img"):
        build_loss(dict(type="LovaszLoss", per_img=True))
    # MMSeg configs write reduction='none' without per_image; it is accepted and changes nothing.
    logits, label = random_case(12)
    assert torch.allclose(LovaszLoss(reduction="none")(logits, label), LovaszLoss()(logits, label))
    with pytest.raises(ValueError, match="binary"):
        LovaszLoss(loss_type="binary")(logits, label)


# ------------------------------------------------------------------------------------- heads with losses
def fcn_head(**extra):
    cfg = dict(type="FCNHead", in_channels=8, channels=8, in_index=0, num_convs=1, num_classes=3,
               dropout_ratio=0.0)
    cfg.update(extra)
    return build_head(cfg)


def test_head_sums_ce_dice_lovasz_by_name():
    torch.manual_seed(0)
    head = fcn_head(loss_decode=[dict(type="CrossEntropyLoss", loss_weight=1.0),
                                 dict(type="DiceLoss", use_sigmoid=False, loss_weight=3.0),
                                 dict(type="LovaszLoss", reduction="none", loss_weight=0.5),
                                 dict(type="FocalLoss", loss_name="loss_dice")])
    logits = head([torch.randn(2, 8, 4, 4)])
    label = torch.randint(0, 3, (2, 16, 16))
    label[:, :2] = IGNORE
    losses = head.losses(logits, label)
    assert set(losses) == {"loss_ce", "loss_dice", "loss_lovasz", "acc_seg"}
    up = torch.nn.functional.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
    assert torch.allclose(losses["loss_ce"], CrossEntropyLoss()(up, label))
    assert torch.allclose(losses["loss_dice"], 3.0 * DiceLoss(use_sigmoid=False)(up, label) + FocalLoss()(up, label))
    assert torch.allclose(losses["loss_lovasz"], 0.5 * LovaszLoss()(up, label))
    sum(v for k, v in losses.items() if k.startswith("loss_")).backward()
    assert head.conv_seg.weight.grad is not None and torch.isfinite(head.conv_seg.weight.grad).all()


# ------------------------------------------------------------------------------------------------- OHEM
class _Context:
    """Stands in for a decode head: the sampler reads only these two attributes."""

    def __init__(self, loss_decode=None, ignore_index=IGNORE):
        self.loss_decode = loss_decode if loss_decode is not None else CrossEntropyLoss()
        self.ignore_index = ignore_index


# Ground-truth probabilities of 7 pixels of one image (the 4th is ignored).
PROBS = [0.1, 0.95, 0.5, 0.3, 0.8, 0.2, 0.6]


def crafted(batch=1):
    """Two-class logits whose softmax gives PROBS for the labelled class; pixel 3 is ignored."""
    p = torch.tensor(PROBS, dtype=torch.float64)
    label = torch.tensor([0, 1, 0, IGNORE, 1, 0, 1])
    p_class0 = torch.where(label == 1, 1 - p, p)
    logits = torch.stack([p_class0.log(), (1 - p_class0).log()]).reshape(1, 2, 1, 7)
    return logits.repeat(batch, 1, 1, 1), label.reshape(1, 1, 1, 7).repeat(batch, 1, 1, 1)


def kept(weight):
    return [int(i) for i in torch.nonzero(weight.reshape(-1)).reshape(-1)]


def test_ohem_with_thresh_keeps_low_probability_pixels():
    logits, label = crafted()
    # Valid probs sorted: 0.1 0.2 0.5 0.6 0.8 0.95; min_kept 2 → t = 0.5 < thresh 0.7: keep p < 0.7.
    w = OHEMPixelSampler(_Context(), thresh=0.7, min_kept=2).sample(logits, label)
    assert w.shape == (1, 1, 7) and set(w.unique().tolist()) <= {0.0, 1.0}
    assert kept(w) == [0, 2, 5, 6]
    # min_kept honoured: thresh 0.25 alone keeps 2 pixels; min_kept 4 → t = sorted[4] = 0.8 → keep p < 0.8.
    w = OHEMPixelSampler(_Context(), thresh=0.25, min_kept=4).sample(logits, label)
    assert kept(w) == [0, 2, 5, 6]
    w = OHEMPixelSampler(_Context(), thresh=0.25, min_kept=2).sample(logits, label)
    assert kept(w) == [0, 5]  # t = 0.5 (pixel 2 itself): p < 0.5
    # min_kept beyond the valid count: t = the largest prob, so every pixel below it is kept.
    w = OHEMPixelSampler(_Context(), thresh=0.25, min_kept=50).sample(logits, label)
    assert kept(w) == [0, 2, 4, 5, 6]
    assert w.reshape(-1)[3] == 0  # the ignored pixel never


def test_ohem_min_kept_scales_with_batch_size():
    logits, label = crafted(batch=2)
    # batch_kept = 2·2 = 4 → index 4 of the 12 sorted valid probs (each twice): 0.5 → keep p < max(0.5, 0.25).
    w = OHEMPixelSampler(_Context(), thresh=0.25, min_kept=2).sample(logits, label.squeeze(1))
    assert w.shape == (2, 1, 7) and kept(w) == [0, 5, 7, 12]


def test_ohem_without_thresh_keeps_largest_losses():
    logits, label = crafted()
    # CE loss = −log p: the 3 largest are the 3 lowest probabilities.
    w = OHEMPixelSampler(_Context(), min_kept=3).sample(logits, label)
    assert kept(w) == [0, 2, 5]  # probs 0.1, 0.5, 0.2 (0.3 belongs to the ignored pixel)
    assert w.sum() == 3
    # Several losses are summed per pixel; a sigmoid loss's (N,C,H,W) map is summed over classes.
    ctx = _Context(torch.nn.ModuleList([CrossEntropyLoss(), FocalLoss(loss_weight=0.5)]))
    w = OHEMPixelSampler(ctx, min_kept=2).sample(logits, label)
    per_pixel = CrossEntropyLoss(reduction="none")(logits, label[:, 0]) + \
        0.5 * FocalLoss(reduction="none")(logits, label[:, 0]).sum(1)
    top = per_pixel.reshape(-1).masked_fill(label.reshape(-1) == IGNORE, -1).topk(2).indices
    assert sorted(kept(w)) == sorted(top.tolist())
    with pytest.raises(ConfigError, match="set thresh"):
        OHEMPixelSampler(_Context(LovaszLoss()), min_kept=2).sample(logits, label)


def test_ohem_config_errors():
    with pytest.raises(ConfigError, match="min_kept"):
        OHEMPixelSampler(_Context(), min_kept=1)
    with pytest.raises(ConfigError, match="thresh"):
        OHEMPixelSampler(_Context(), thresh="0.7")
    with pytest.raises(ConfigError, match="min_keep"):
        build(dict(type="OHEMPixelSampler", min_keep=10), PIXEL_SAMPLERS, context=_Context())
    with pytest.raises(ConfigError, match="OHEMPixelSampler"):
        fcn_head(sampler=dict(type="OHEMPixelSampleR"))


def test_head_with_ohem_sampler():
    torch.manual_seed(1)
    sampled = fcn_head(sampler=dict(type="OHEMPixelSampler", thresh=0.7, min_kept=10))
    assert isinstance(sampled.sampler, OHEMPixelSampler) and sampled.sampler.context is sampled
    plain = fcn_head()
    plain.load_state_dict(sampled.state_dict())  # the sampler adds no parameters or buffers
    # Sharpen the near-uniform initial logits so some ground-truth probabilities exceed thresh.
    logits = sampled([torch.randn(2, 8, 4, 4)]) * 40
    label = torch.randint(0, 3, (2, 16, 16))
    label[:, :3] = IGNORE
    with_ohem = sampled.losses(logits, label)["loss_ce"]
    without = plain.losses(logits, label)["loss_ce"]
    assert torch.isfinite(with_ohem) and not torch.allclose(with_ohem, without)
    # The weight is exactly the sampler's 0/1 map (mean still over all pixels, as MMSeg's CE).
    up = torch.nn.functional.interpolate(logits, size=(16, 16), mode="bilinear", align_corners=False)
    weight = sampled.sampler.sample(up, label.unsqueeze(1))
    assert 0 < weight.sum() < (label != IGNORE).sum()
    assert torch.allclose(with_ohem, CrossEntropyLoss()(up, label, weight=weight))
    with_ohem.backward()
    assert torch.isfinite(sampled.conv_seg.weight.grad).all()
    # The head → sampler → head cycle survives a deep copy.
    clone = copy.deepcopy(sampled)
    assert clone.sampler.context is clone


def test_head_with_ohem_and_zoo_losses():
    torch.manual_seed(2)
    head = fcn_head(sampler=dict(type="OHEMPixelSampler", thresh=0.7, min_kept=10),
                    loss_decode=[dict(type="CrossEntropyLoss"), dict(type="DiceLoss"), dict(type="FocalLoss"),
                                 dict(type="LovaszLoss")])
    losses = head.losses(head([torch.randn(2, 8, 4, 4)]), torch.randint(0, 3, (2, 1, 16, 16)))
    assert all(torch.isfinite(v) for v in losses.values())
    no_thresh = fcn_head(sampler=dict(type="OHEMPixelSampler", min_kept=10),
                         loss_decode=[dict(type="CrossEntropyLoss"), dict(type="FocalLoss")])
    losses = no_thresh.losses(no_thresh([torch.randn(2, 8, 4, 4)]), torch.randint(0, 3, (2, 16, 16)))
    assert torch.isfinite(losses["loss_ce"]) and torch.isfinite(losses["loss_focal"])
