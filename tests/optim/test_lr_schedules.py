"""Every ``lr_config`` policy against MMCV 1.x's lr updater hooks: closed forms and hand-worked numbers, warmup,
``by_epoch``, a resumed run, and the errors that name the key."""
from __future__ import annotations

import math

import pytest
import torch

import mmcv_reference as ref
from rayseg.errors import ConfigError
from rayseg.optim import build_lr_schedule, build_optimizer

BASE = 0.02
ITERS = 24

# (lr_config without warmup, MMCV's regular lr as f(progress, iteration)) for a 24-iteration run.
POLICIES = {
    "poly": ({"policy": "poly", "power": 0.9, "min_lr": 1e-4}, ref.poly(BASE, ITERS, 0.9, 1e-4)),
    "poly-defaults": ({"policy": "poly"}, ref.poly(BASE, ITERS, 1.0, 0.0)),
    "step-int": ({"policy": "step", "step": 5, "gamma": 0.5}, ref.step(BASE, 5, 0.5)),
    "step-list-min_lr": ({"policy": "step", "step": [4, 9, 15], "min_lr": 3e-4}, ref.step(BASE, [4, 9, 15], 0.1, 3e-4)),
    "fixed": ({"policy": "fixed"}, lambda p, it: BASE),
    "Exp": ({"policy": "Exp", "gamma": 0.9}, ref.exp(BASE, 0.9)),
    "exp-lower-case": ({"policy": "exp", "gamma": 0.8}, ref.exp(BASE, 0.8)),
    "Inv": ({"policy": "Inv", "gamma": 0.1, "power": 0.75}, ref.inv(BASE, 0.1, 0.75)),
    "CosineAnnealing-min_lr": ({"policy": "CosineAnnealing", "min_lr": 1e-5}, ref.cosine(BASE, ITERS, 1e-5)),
    "CosineAnnealing-ratio": ({"policy": "CosineAnnealing", "min_lr_ratio": 0.01},
                              ref.cosine(BASE, ITERS, BASE * 0.01)),
    "FlatCosineAnnealing": ({"policy": "FlatCosineAnnealing", "start_percent": 0.5, "min_lr": 0.0},
                            ref.flat_cosine(BASE, ITERS, 0.0, 0.5)),
    "LinearAnnealing": ({"policy": "LinearAnnealing", "min_lr_ratio": 0.1}, ref.linear(BASE, ITERS, BASE * 0.1)),
    "CosineRestart": ({"policy": "CosineRestart", "periods": [6, 8, 10], "restart_weights": [1, 0.7, 0.4],
                       "min_lr": 1e-4}, ref.cosine_restart(BASE, [6, 8, 10], [1, 0.7, 0.4], 1e-4)),
    "cyclic": ({"policy": "cyclic", "target_ratio": [10, 1e-4], "cyclic_times": 2, "step_ratio_up": 0.4},
               ref.cyclic(BASE, ITERS, 10, 1e-4, times=2, up_ratio=0.4)),
    "Cyclic-gamma-linear": ({"policy": "Cyclic", "target_ratio": 5.0, "cyclic_times": 3, "step_ratio_up": 0.25,
                             "anneal_strategy": "linear", "gamma": 0.5},
                            ref.cyclic(BASE, ITERS, 5.0, 5e-5, times=3, up_ratio=0.25, gamma=0.5,
                                       anneal=ref.linear_anneal)),
    "Cyclic-no-up-phase": ({"policy": "Cyclic", "target_ratio": [2, 0.1], "cyclic_times": 2, "step_ratio_up": 0.0,
                            "gamma": 0.5}, ref.cyclic(BASE, ITERS, 2, 0.1, times=2, up_ratio=0.0, gamma=0.5)),
    "OneCycle": ({"policy": "OneCycle", "max_lr": 0.1}, ref.one_cycle(0.1, ITERS)),
    "OneCycle-three-phase-linear": ({"policy": "OneCycle", "max_lr": 0.1, "total_steps": 30, "pct_start": 0.25,
                                     "anneal_strategy": "linear", "div_factor": 10, "final_div_factor": 100,
                                     "three_phase": True},
                                    ref.one_cycle(0.1, 30, 0.25, 10, 100, True, ref.linear_anneal)),
}


def _schedule(cfg, max_iters=ITERS, **kwargs):
    return build_lr_schedule(cfg, BASE, max_iters, **kwargs)


@pytest.mark.parametrize("warmup", [None, "linear", "constant", "exp"])
@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_equals_mmcv_at_every_iteration(name, warmup):
    cfg, regular = POLICIES[name]
    cfg = dict(cfg)
    if warmup:
        cfg.update(warmup=warmup, warmup_iters=7, warmup_ratio=0.2)
    schedule = _schedule(cfg)
    expected = ref.hook_values(regular, ITERS, warmup, 7, 0.2)
    assert [schedule.lr_at(it) for it in range(ITERS)] == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_hand_worked_values():
    """Numbers worked out on paper from MMCV's formulas (base lr 1 unless said)."""
    def lr(cfg, it, max_iters=10, base=1.0, **kw):
        return build_lr_schedule(cfg, base, max_iters, **kw).lr_at(it)

    assert lr({"policy": "poly", "power": 1.0, "min_lr": 0.0}, 25, max_iters=100, base=0.01) == pytest.approx(0.0075)
    step = {"policy": "step", "step": [3, 6]}
    assert [lr(step, it) for it in (2, 3, 6, 9)] == pytest.approx([1, 0.1, 0.01, 0.01])
    assert lr({**step, "min_lr": 0.05}, 6) == pytest.approx(0.05)
    assert lr({"policy": "Exp", "gamma": 0.5}, 3) == pytest.approx(0.125)
    assert lr({"policy": "Inv", "gamma": 1.0, "power": 2.0}, 1) == pytest.approx(0.25)
    assert lr({"policy": "CosineAnnealing", "min_lr": 0.0}, 5) == pytest.approx(0.5)
    assert lr({"policy": "CosineAnnealing", "min_lr_ratio": 0.1}, 5) == pytest.approx(0.55)
    restart = {"policy": "CosineRestart", "periods": [4, 6], "restart_weights": [1, 0.5], "min_lr": 0.0}
    # Period 2 starts at the cumulative period 4 with weight 0.5; at 7 it is half-way through its 6 iterations.
    assert [lr(restart, it) for it in (0, 2, 4, 7)] == pytest.approx([1, 0.5, 0.5, 0.25])
    cyclic = {"policy": "cyclic"}  # target_ratio (10, 1e-4), 40% up: up for 4 iterations of 10
    assert [lr(cyclic, it) for it in (0, 2, 4, 7)] == pytest.approx([1, 5.5, 10, 5.00005])
    one = {"policy": "OneCycle", "max_lr": 1.0}  # initial 0.04; peak at 0.3·10 − 1 = 2; 0.04/1e4 at 9
    assert [lr(one, it, base=123.0) for it in (0, 1, 2, 9)] == pytest.approx([0.04, 0.52, 1.0, 4e-6])
    three = {**one, "three_phase": True}  # back to 0.04 at 2·0.3·10 − 2 = 4
    assert [lr(three, it) for it in (2, 4, 9)] == pytest.approx([1.0, 0.04, 4e-6])
    # Warmup over 4 iterations from 0.1 on top of poly (power 1): the regular lr at 2 is 0.8.
    poly = {"policy": "poly", "power": 1.0, "min_lr": 0.0, "warmup_iters": 4, "warmup_ratio": 0.1}
    assert lr({**poly, "warmup": "linear"}, 2) == pytest.approx(0.8 * (1 - 0.5 * 0.9))
    assert lr({**poly, "warmup": "constant"}, 2) == pytest.approx(0.08)
    assert lr({**poly, "warmup": "exp"}, 2) == pytest.approx(0.8 * math.sqrt(0.1))
    assert lr({**poly, "warmup": "linear"}, 4) == pytest.approx(0.6)  # warmup over


# Policies whose progress may count epochs, with MMCV's regular lr over a run of max_epochs epochs.
EPOCH_POLICIES = {
    "poly": ({"policy": "poly", "power": 0.9, "min_lr": 1e-4}, lambda e: ref.poly(BASE, e, 0.9, 1e-4)),
    "step": ({"policy": "step", "step": [2, 4]}, lambda e: ref.step(BASE, [2, 4])),
    "fixed": ({"policy": "fixed"}, lambda e: (lambda p, it: BASE)),
    "Exp": ({"policy": "Exp", "gamma": 0.7}, lambda e: ref.exp(BASE, 0.7)),
    "Inv": ({"policy": "Inv", "gamma": 0.5}, lambda e: ref.inv(BASE, 0.5)),
    "CosineAnnealing": ({"policy": "CosineAnnealing", "min_lr_ratio": 0.05},
                        lambda e: ref.cosine(BASE, e, BASE * 0.05)),
    "FlatCosineAnnealing": ({"policy": "FlatCosineAnnealing", "min_lr": 0.0, "start_percent": 0.4},
                            lambda e: ref.flat_cosine(BASE, e, 0.0, 0.4)),
    "LinearAnnealing": ({"policy": "LinearAnnealing", "min_lr": 1e-4}, lambda e: ref.linear(BASE, e, 1e-4)),
    "CosineRestart": ({"policy": "CosineRestart", "periods": [2, 4], "restart_weights": [1, 0.5], "min_lr": 0.0},
                      lambda e: ref.cosine_restart(BASE, [2, 4], [1, 0.5], 0.0)),
}


@pytest.mark.parametrize("warmup", [None, {"warmup": "linear", "warmup_iters": 6},
                                    {"warmup": "exp", "warmup_iters": 2, "warmup_by_epoch": True}])
@pytest.mark.parametrize("name", list(EPOCH_POLICIES))
def test_by_epoch_equals_mmcv_epoch_based_runner(name, warmup):
    """6 epochs of 4 iterations: the regular lr changes at epoch starts, the warmup per iteration."""
    cfg, regular = EPOCH_POLICIES[name]
    cfg = {**cfg, "by_epoch": True, **(warmup or {})}
    schedule = _schedule(cfg, max_iters=24, iters_per_epoch=4)
    w = warmup or {}
    expected = ref.hook_values(regular(6), 24, w.get("warmup"), w.get("warmup_iters", 0), 0.1, by_epoch=True,
                               epoch_len=4, warmup_by_epoch=w.get("warmup_by_epoch", False))
    assert [schedule.lr_at(it) for it in range(24)] == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_by_epoch_counts_a_last_partial_epoch():
    """10 iterations of 4 per epoch: epochs 0, 1 and a partial epoch 2, so poly divides by 3 epochs."""
    schedule = _schedule({"policy": "poly", "power": 1.0, "min_lr": 0.0, "by_epoch": True}, max_iters=10,
                         iters_per_epoch=4)
    assert [schedule.lr_at(it) / BASE for it in range(10)] == pytest.approx([1] * 4 + [2 / 3] * 4 + [1 / 3] * 2)
    # warmup_iters counts iterations unless warmup_by_epoch.
    warm = _schedule({"policy": "fixed", "warmup": "constant", "warmup_iters": 2, "warmup_ratio": 0.5,
                      "warmup_by_epoch": True}, max_iters=10, iters_per_epoch=4)
    assert [warm.lr_at(it) / BASE for it in range(10)] == pytest.approx([0.5] * 8 + [1] * 2)


def _group_lrs(optimizer):
    return [g["lr"] for g in optimizer.param_groups]


def _optimizer():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    return build_optimizer(net, {"type": "SGD", "lr": BASE, "momentum": 0.9,
                                 "paramwise_cfg": {"custom_keys": {"1.": {"lr_mult": 10.0}}}})


@pytest.mark.parametrize("name", list(POLICIES))
def test_a_resumed_run_gets_the_same_lr_as_an_uninterrupted_one(name):
    cfg = {**POLICIES[name][0], "warmup": "linear", "warmup_iters": 5}
    straight = _optimizer()
    schedule = _schedule(cfg)
    uninterrupted = []
    for it in range(ITERS):
        schedule.apply(straight, it)
        uninterrupted.append(_group_lrs(straight))
    for k in (1, 5, 11, ITERS - 1):
        first = _optimizer()
        schedule = _schedule(cfg)
        for it in range(k):
            schedule.apply(first, it)
        state = first.state_dict()
        # Right after the resume: new optimizer and schedule objects, the optimizer state from the checkpoint.
        resumed = _optimizer()
        resumed.load_state_dict(state)
        fresh = _schedule(cfg)
        assert fresh.lr_at(k) == schedule.lr_at(k)
        for it in range(k, ITERS):
            fresh.apply(resumed, it)
            assert _group_lrs(resumed) == uninterrupted[it]


def test_apply_scales_every_group_by_its_lr_mult_and_returns_the_plain_lr():
    optimizer = _optimizer()
    mults = [g["lr_mult"] for g in optimizer.param_groups]
    assert sorted(set(mults)) == [1.0, 10.0]
    for cfg in (POLICIES["poly"][0], POLICIES["CosineRestart"][0], POLICIES["OneCycle"][0]):
        schedule = _schedule(cfg)
        for it in (0, 3, 17):
            assert schedule.apply(optimizer, it) == schedule.lr_at(it)
            assert _group_lrs(optimizer) == [schedule.lr_at(it, schedule.base_lr * m) for m in mults]
    # OneCycle: the lr_mult-10 groups cycle up to 10 × max_lr (MMCV would use the same max_lr for every group).
    one = _schedule({"policy": "OneCycle", "max_lr": 0.1, "pct_start": 0.25})
    peak = int(0.25 * ITERS) - 1  # 5
    ref10 = ref.one_cycle(0.1, ITERS, pct=0.25, lr_mult=10.0)
    one.apply(optimizer, peak)
    assert max(_group_lrs(optimizer)) == pytest.approx(ref10(peak, peak)) == pytest.approx(1.0)
    assert min(_group_lrs(optimizer)) == pytest.approx(0.1) == one.lr_at(peak)


def test_without_lr_config_the_schedule_is_mmseg_poly():
    schedule = build_lr_schedule(None, 0.01, 100)
    assert schedule.lr_at(40) == pytest.approx((0.01 - 1e-4) * 0.6 ** 0.9 + 1e-4)
    assert build_lr_schedule({"power": 1.0}, 0.01, 100).lr_at(50) == pytest.approx(0.005)  # no policy: poly


@pytest.mark.parametrize("cfg,kwargs,match", [
    ({"policy": "nope"}, {}, r"^lr_config.policy: unknown policy 'nope'\. Allowed: CosineAnnealing, CosineRestart, "
                             r"Cyclic, Exp, Fixed, FlatCosineAnnealing, Inv, LinearAnnealing, OneCycle, Poly, Step"),
    ({"policy": "onecycle", "max_lr": 0.1}, {}, r"^lr_config.policy: unknown policy 'onecycle' \(did you mean "
                                                r"'OneCycle'\?\)"),
    ({"policy": "poly", "powr": 0.9}, {}, r"^lr_config.powr: not an argument of policy 'poly' \(did you mean "
                                          r"'power'\?\)\. It takes: power, min_lr, by_epoch, warmup"),
    ({"policy": "step"}, {}, r"^lr_config.step: required by policy 'step'"),
    ({"policy": "step", "step": [3, 0]}, {}, r"^lr_config.step: expected a positive int or a list"),
    ({"policy": "Exp"}, {}, r"^lr_config.gamma: required by policy 'Exp'"),
    ({"policy": "CosineAnnealing"}, {}, r"exactly one of min_lr and min_lr_ratio, got neither"),
    ({"policy": "CosineAnnealing", "min_lr": 0, "min_lr_ratio": 0.1}, {}, r"exactly one .* got both"),
    ({"policy": "CosineRestart", "periods": [10, 5], "min_lr": 0}, {}, r"^lr_config.restart_weights: needs one"),
    ({"policy": "CosineRestart", "periods": [10], "min_lr": 0}, {}, r"^lr_config.periods: they add up to 10 "
                                                                   r"iterations but the run lasts 24"),
    ({"policy": "cyclic", "by_epoch": True}, {"iters_per_epoch": 4}, r"^lr_config.by_epoch: policy cyclic is "
                                                                    r"defined per iteration"),
    ({"policy": "OneCycle", "max_lr": 0.1, "by_epoch": True}, {"iters_per_epoch": 4}, r"^lr_config.by_epoch"),
    ({"policy": "cyclic", "cyclic_times": 25}, {}, r"^lr_config.cyclic_times: 25 cycles do not fit"),
    ({"policy": "cyclic", "step_ratio_up": 1.0}, {}, r"^lr_config.step_ratio_up: expected a number in \[0, 1\)"),
    ({"policy": "cyclic", "anneal_strategy": "cosine"}, {}, r"^lr_config.anneal_strategy: expected cos or linear"),
    ({"policy": "OneCycle", "max_lr": 0.1, "total_steps": 10}, {}, r"^lr_config.total_steps: must be an int >= "),
    ({"policy": "OneCycle", "max_lr": [0.1, 0.2]}, {}, r"^lr_config.max_lr: expected a positive number"),
    ({"policy": "poly", "warmup": "cosine"}, {}, r"^lr_config.warmup: expected linear, constant, exp or null"),
    ({"policy": "poly", "warmup": "linear"}, {}, r"^lr_config.warmup_iters: warmup 'linear' needs a positive"),
    ({"policy": "poly", "warmup": "linear", "warmup_iters": 5, "warmup_ratio": 0}, {}, r"^lr_config.warmup_ratio"),
    ({"policy": "poly", "by_epoch": True}, {}, r"^lr_config.by_epoch: counting epochs needs"),
    ({"policy": "poly", "iters_per_epoch": 3}, {}, r"^lr_config.iters_per_epoch: not an argument"),
])
def test_mistakes_are_config_errors_naming_the_key(cfg, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        _schedule(cfg, **kwargs)
