"""``momentum_config`` against MMCV 1.x's momentum updater hooks: SGD's momentum and Adam's betas[0], warmup,
``by_epoch``, a resumed run, and errors."""
from __future__ import annotations

import pytest
import torch

import mmcv_reference as ref
from rayseg.errors import ConfigError
from rayseg.optim import build_momentum_schedule, build_optimizer

ITERS = 20
BASE = 0.9

POLICIES = {
    "CosineAnnealing": ({"policy": "CosineAnnealing", "min_momentum_ratio": 0.5},
                        lambda b: ref.cosine(b, ITERS, b * 0.5)),
    "CosineAnnealing-min": ({"policy": "CosineAnnealing", "min_momentum": 0.8}, lambda b: ref.cosine(b, ITERS, 0.8)),
    "cyclic": ({"policy": "cyclic"}, lambda b: ref.cyclic(b, ITERS, 0.85 / 0.95, 1.0)),
    "Cyclic-gamma-linear": ({"policy": "Cyclic", "target_ratio": [0.8, 1.0], "cyclic_times": 2, "step_ratio_up": 0.3,
                             "anneal_strategy": "linear", "gamma": 0.5},
                            lambda b: ref.cyclic(b, ITERS, 0.8, 1.0, 2, 0.3, 0.5, ref.linear_anneal)),
    "step": ({"policy": "step", "step": [5, 12], "min_momentum": 0.3}, lambda b: ref.step(b, [5, 12], 0.5, 0.3)),
    "OneCycle": ({"policy": "OneCycle"}, lambda b: ref.one_cycle_momentum(ITERS)),
    "OneCycle-three-phase": ({"policy": "OneCycle", "base_momentum": 0.8, "max_momentum": 0.9, "pct_start": 0.25,
                              "three_phase": True, "anneal_strategy": "linear"},
                             lambda b: ref.one_cycle_momentum(ITERS, 0.8, 0.9, 0.25, True, ref.linear_anneal)),
}


def _sgd(momentum=BASE):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    return build_optimizer(net, {"type": "SGD", "lr": 0.01, "momentum": momentum, "weight_decay": 1e-4})


def _adamw():
    torch.manual_seed(0)
    return build_optimizer(torch.nn.Linear(3, 2), {"type": "AdamW", "lr": 1e-3, "betas": [BASE, 0.999]})


@pytest.mark.parametrize("warmup", [None, "linear", "constant", "exp"])
@pytest.mark.parametrize("name", list(POLICIES))
def test_every_policy_equals_mmcv_at_every_iteration(name, warmup):
    cfg, regular = POLICIES[name]
    cfg = dict(cfg, **({"warmup": warmup, "warmup_iters": 6, "warmup_ratio": 0.9} if warmup else {}))
    schedule = build_momentum_schedule(cfg, ITERS)
    expected = ref.hook_values(regular(BASE), ITERS, warmup, 6, 0.9, warm=ref.momentum_warmup)
    assert [schedule.momentum_at(it, BASE) for it in range(ITERS)] == pytest.approx(expected, rel=1e-12)
    sgd, adamw = _sgd(), _adamw()
    for it in range(ITERS):
        schedule.apply(sgd, it)
        schedule.apply(adamw, it)
        assert all(g["momentum"] == pytest.approx(expected[it]) for g in sgd.param_groups)
        # The Adam family: momentum is betas[0]; betas[1] stays.
        assert all(g["betas"][0] == pytest.approx(expected[it]) and g["betas"][1] == 0.999
                   for g in adamw.param_groups)


def test_hand_worked_values():
    cos = build_momentum_schedule({"policy": "CosineAnnealing", "min_momentum_ratio": 0.5}, 10)
    assert cos.momentum_at(5, 0.9) == pytest.approx(0.675)
    cyc = build_momentum_schedule({"policy": "cyclic"}, 10)  # down to 0.85/0.95 of the base over 4 iterations
    assert [cyc.momentum_at(it, 0.95) for it in (0, 4, 7)] == pytest.approx([0.95, 0.85, 0.9])
    one = build_momentum_schedule({"policy": "OneCycle"}, 10)  # 0.95 → 0.85 at 2 → 0.95 at 9
    assert [one.momentum_at(it, 0.5) for it in (0, 2, 9)] == pytest.approx([0.95, 0.85, 0.95])
    warm = build_momentum_schedule({"policy": "step", "step": 100, "warmup": "linear", "warmup_iters": 4,
                                    "warmup_ratio": 0.9}, 10)
    assert warm.momentum_at(0, 0.9) == pytest.approx(1.0) and warm.momentum_at(4, 0.9) == pytest.approx(0.9)


def test_by_epoch_equals_mmcv_epoch_based_runner():
    cfg = {"policy": "CosineAnnealing", "min_momentum": 0.5, "by_epoch": True, "warmup": "exp", "warmup_iters": 6}
    schedule = build_momentum_schedule(cfg, 20, iters_per_epoch=4)
    expected = ref.hook_values(ref.cosine(BASE, 5, 0.5), 20, "exp", 6, 0.9, by_epoch=True, epoch_len=4,
                               warm=ref.momentum_warmup)
    assert [schedule.momentum_at(it, BASE) for it in range(20)] == pytest.approx(expected)
    step = build_momentum_schedule({"policy": "step", "step": 2, "by_epoch": True}, 20, iters_per_epoch=4)
    assert [step.momentum_at(it, 0.8) for it in (0, 7, 8, 19)] == pytest.approx([0.8, 0.8, 0.4, 0.2])


@pytest.mark.parametrize("name", list(POLICIES))
def test_a_resumed_run_gets_the_same_momentum(name):
    cfg = POLICIES[name][0]
    straight, schedule = _sgd(), build_momentum_schedule(cfg, ITERS)
    values = []
    for it in range(ITERS):
        schedule.apply(straight, it)
        values.append([g["momentum"] for g in straight.param_groups])
    for k in (1, 7, ITERS - 1):
        first, schedule = _sgd(), build_momentum_schedule(cfg, ITERS)
        for it in range(k):
            schedule.apply(first, it)
        resumed, fresh = _sgd(), build_momentum_schedule(cfg, ITERS)
        resumed.load_state_dict(first.state_dict())  # holds initial_momentum: the base is not the scheduled value
        assert all(g["initial_momentum"] == BASE for g in resumed.param_groups)
        for it in range(k, ITERS):
            fresh.apply(resumed, it)
            assert [g["momentum"] for g in resumed.param_groups] == values[it]


def test_without_momentum_config_nothing_is_scheduled():
    assert build_momentum_schedule(None, 10) is None and build_momentum_schedule({}, 10) is None


@pytest.mark.parametrize("cfg,match", [
    ({"by_epoch": False}, r"^momentum_config.policy: required \(one of CosineAnnealing, Cyclic, OneCycle, Step\)"),
    ({"policy": "poly"}, r"^momentum_config.policy: unknown policy 'poly'\. Allowed: CosineAnnealing, Cyclic, "),
    ({"policy": "CosineAnnealing"}, r"exactly one of min_momentum and min_momentum_ratio"),
    ({"policy": "cyclic", "by_epoch": True}, r"^momentum_config.by_epoch: policy cyclic is defined per iteration"),
    ({"policy": "OneCycle", "max_lr": 0.1}, r"^momentum_config.max_lr: not an argument of policy 'OneCycle'"),
    ({"policy": "step", "step": 3, "warmup": "linear"}, r"^momentum_config.warmup_iters"),
])
def test_mistakes_are_config_errors_naming_the_key(cfg, match):
    with pytest.raises(ConfigError, match=match):
        build_momentum_schedule(cfg, 10, iters_per_epoch=2)


def test_an_optimizer_without_momentum_is_refused():
    adagrad = build_optimizer(torch.nn.Linear(2, 2), {"type": "Adagrad", "lr": 0.1})
    schedule = build_momentum_schedule({"policy": "step", "step": 2}, 10)
    with pytest.raises(ConfigError, match=r"^momentum_config: optimizer Adagrad has neither momentum nor betas"):
        schedule.apply(adagrad, 0)
