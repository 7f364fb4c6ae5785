"""Sweep configs: parsing, the search space, and every error that must come before a trial starts (no Ray)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT
from rayseg.errors import ConfigError
from rayseg.tune import load_sweep
from rayseg.tune.space import apply_values, decode_sample, parse_domain
from rayseg.tune.sweep import produced_metrics, trial_config

TINY = REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml"


DATA_ROOTS: list = []  # data.<split>.data_root=<the session's generated data>: sweeps list the data they name


@pytest.fixture(autouse=True)
def _data_roots(demo_data):
    DATA_ROOTS[:] = [f"data.{split}.data_root={demo_data}" for split in ("train", "val", "test")]


def write_sweep(tmp_path: Path, search_space=None, tune=None, **extra) -> Path:
    doc = {"base_config": str(TINY), "search_space": search_space or {"optimizer.lr": {"loguniform": [1e-3, 1e-1]}},
           "tune": tune or {"num_samples": 2}}
    doc.update(extra)
    if isinstance(doc.get("base_options", []), list):
        doc["base_options"] = DATA_ROOTS + doc.get("base_options", [])
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def load(tmp_path, **kwargs):
    return load_sweep(str(write_sweep(tmp_path, **kwargs)), work_dir=str(tmp_path / "work"))


def test_a_sweep_loads_with_defaults(tmp_path):
    sweep = load(tmp_path, search_space={"optimizer.lr": {"loguniform": [1e-3, 1e-1]},
                                          "lr_config.power": {"uniform": [0.5, 1.5]},
                                          "model.decode_head.loss_decode.loss_weight": {"choice": [0.5, 1.0]}})
    assert sweep.tune.metric == "mIoU" and sweep.tune.mode == "max" and sweep.tune.scheduler_type == "fifo"
    assert sweep.max_iters == 6
    assert sweep.base_config_path == str(TINY)
    assert list(sweep.space) == ["optimizer.lr", "lr_config.power", "model.decode_head.loss_decode.loss_weight"]


def test_base_config_is_relative_to_the_sweep_file(tmp_path, demo_data):
    path = REPO_ROOT / "configs" / "tune" / "tiny_asha_shapes.yaml"
    roots = [f"data.{split}.data_root={demo_data}" for split in ("train", "val", "test")]
    sweep = load_sweep(str(path), work_dir=str(tmp_path), cfg_options=roots)
    assert sweep.base_config_path == str(REPO_ROOT / "configs" / "demo" / "fcn_r18-tiny_shapes.yaml")


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "configs" / "tune").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sweeps_load(path, tmp_path, demo_data):
    roots = [f"data.{split}.data_root={demo_data}" for split in ("train", "val", "test")]  # listed, not read
    sweep = load_sweep(str(path), work_dir=str(tmp_path), cfg_options=roots)
    assert sweep.space


def test_cfg_options_apply_to_the_base_config(tmp_path):
    sweep = load_sweep(str(write_sweep(tmp_path)), work_dir=str(tmp_path / "w"), cfg_options=["runner.max_iters=9"])
    assert sweep.max_iters == 9


def test_val_prefix_is_accepted_for_the_metric(tmp_path):
    assert load(tmp_path, tune={"metric": "val/mIoU"}).tune.metric == "mIoU"


def test_unknown_search_space_key_names_the_key_and_its_siblings(tmp_path):
    with pytest.raises(ConfigError, match=r"search_space.optimizer.lrr: the base config has no key "
                                          r"'optimizer.lrr'.*keys under optimizer: type, lr"):
        load(tmp_path, search_space={"optimizer.lrr": {"uniform": [0.1, 0.2]}})


def test_list_index_out_of_range(tmp_path):
    with pytest.raises(ConfigError, match=r"data.train.pipeline.42.*indexes a list of 8 items"):
        load(tmp_path, search_space={"data.train.pipeline.42.crop_size": {"choice": [[32, 32]]}})


@pytest.mark.parametrize("spec, message", [
    ({"uniform": [0.2, 0.1]}, "needs lower < upper"),
    ({"loguniform": [0, 0.1]}, "needs 0 < lower"),
    ({"uniform": [0.1]}, r"takes \[lower, upper\]"),
    ({"quniform": [0.1, 0.5]}, r"takes \[lower, upper, q\]"),
    ({"randint": [0.5, 4]}, "integer bounds"),
    ({"normal": [0, 1]}, "unknown domain 'normal'"),
    ({"choice": []}, "takes a list"),
    ({"uniform": [0.1, 0.2], "choice": [1]}, "one-key mapping"),
    (0.1, "one-key mapping"),
])
def test_malformed_domains(spec, message):
    with pytest.raises(ConfigError, match=r"search_space.optimizer.lr: .*" + message):
        parse_domain("optimizer.lr", spec)


def test_metric_evaluation_does_not_produce(tmp_path):
    with pytest.raises(ConfigError, match=r"tune.metric: evaluation does not produce 'mDice'.*aAcc, mIoU, mAcc"):
        load(tmp_path, tune={"metric": "mDice"})


def test_metric_needs_validation(tmp_path):
    with pytest.raises(ConfigError, match="never validates"):
        load_sweep(str(write_sweep(tmp_path)), work_dir=str(tmp_path / "w"), cfg_options=["evaluation.interval=0"])


def test_produced_metrics_follow_evaluation_metric():
    assert produced_metrics({"evaluation": {"metric": ["mIoU", "mFscore"]}}) == (
        "aAcc", "mIoU", "mAcc", "mFscore", "mPrecision", "mRecall")


@pytest.mark.skipif(importlib.util.find_spec("hyperopt") is not None, reason="hyperopt is installed here")
def test_search_alg_whose_package_is_missing(tmp_path):
    with pytest.raises(ConfigError, match=r"tune.search_alg.type: hyperopt needs the 'hyperopt' package.*pip install"):
        load(tmp_path, tune={"search_alg": {"type": "hyperopt"}})


def test_unknown_tune_settings(tmp_path):
    with pytest.raises(ConfigError, match=r"tune: unknown keys \['num_trials'\]"):
        load(tmp_path, tune={"num_trials": 3})
    with pytest.raises(ConfigError, match="unknown scheduler 'median'"):
        load(tmp_path, tune={"scheduler": {"type": "median"}})
    with pytest.raises(ConfigError, match=r"tune.scheduler: asha takes grace_period.*unknown: \['patience'\]"):
        load(tmp_path, tune={"scheduler": {"type": "asha", "patience": 3}})
    with pytest.raises(ConfigError, match="unknown search algorithm 'bayes'"):
        load(tmp_path, tune={"search_alg": "bayes"})
    with pytest.raises(ConfigError, match=r"resources_per_trial: unknown keys \['gpus'\]"):
        load(tmp_path, tune={"resources_per_trial": {"gpus": 1}})
    with pytest.raises(ConfigError, match="tune.mode: expected max or min"):
        load(tmp_path, tune={"mode": "maximise"})


def test_unknown_top_level_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown keys \['space'\]"):
        load(tmp_path, space={})


def test_grid_search_cannot_be_mutated_by_pbt(tmp_path):
    with pytest.raises(ConfigError, match="PBT mutates values and cannot mutate grid_search keys"):
        load(tmp_path, search_space={"optimizer.lr": {"grid_search": [0.01, 0.02]}}, tune={"scheduler": "pbt"})


def test_a_value_the_training_config_refuses_fails_before_any_trial(tmp_path):
    bad_policy = {"choice": [{"policy": "poly", "power": 0.9, "min_lr": 0.0, "by_epoch": False},
                             {"policy": "SuperConvergence"}]}
    with pytest.raises(ConfigError, match=r"lr_config=\{'policy': 'SuperConvergence'\}.* is refused: .*lr_config"):
        load(tmp_path, search_space={"lr_config": bad_policy})
    with pytest.raises(ConfigError, match=r"optimizer.type='Adamm'.*is refused.*unknown optimizer"):
        load(tmp_path, search_space={"optimizer.type": {"choice": ["SGD", "Adamm"]}})


def test_choices_of_mappings_are_sampled_by_index_and_decoded(tmp_path):
    policies = [{"policy": "poly", "power": 0.9, "min_lr": 0.0, "by_epoch": False},
                {"policy": "poly", "power": 2.0, "min_lr": 0.0, "by_epoch": False}]
    sweep = load(tmp_path, search_space={"lr_config": {"choice": policies}, "optimizer.lr": {"uniform": [0.01, 0.02]}})
    domain = sweep.space["lr_config"]
    assert domain.by_index and domain.param_name == "lr_config#index"
    values = decode_sample(sweep.space, {"lr_config#index": 1, "optimizer.lr": 0.015})
    assert values == {"lr_config": policies[1], "optimizer.lr": 0.015}


def test_trial_config_applies_resources_then_values(tmp_path):
    sweep = load(tmp_path, tune={"resources_per_trial": {"num_workers": 1, "cpus_per_worker": 0.5}},
                 search_space={"data.train.pipeline.3.crop_size": {"choice": [[32, 32], [48, 48]]},
                               "model.auxiliary_head.loss_decode.loss_weight": {"uniform": [0.1, 0.5]}})
    cfg = trial_config(sweep, {"data.train.pipeline.3.crop_size": [32, 32],
                               "model.auxiliary_head.loss_decode.loss_weight": 0.25})
    assert cfg["scaling"]["num_workers"] == 1 and cfg["scaling"]["resources_per_worker"]["CPU"] == 0.5
    assert cfg["data"]["train"]["pipeline"][3] == {"type": "RandomCrop", "crop_size": [32, 32], "cat_max_ratio": 0.9}
    assert cfg["model"]["auxiliary_head"]["loss_decode"]["loss_weight"] == 0.25
    assert sweep.base_cfg["model"]["auxiliary_head"]["loss_decode"]["loss_weight"] == 0.4  # base untouched


def test_apply_values_refuses_missing_keys():
    with pytest.raises(ConfigError, match="no key 'a.c'"):
        apply_values({"a": {"b": 1}}, {"a.c": 2})


def test_to_tune_domains():
    from ray.tune.search.sample import Categorical, Float, Integer

    assert isinstance(parse_domain("k", {"loguniform": [1e-4, 1e-1]}).to_tune(), Float)
    assert isinstance(parse_domain("k", {"randint": [1, 5]}).to_tune(), Integer)
    assert isinstance(parse_domain("k", {"choice": [1, 2]}).to_tune(), Categorical)
    assert parse_domain("k", {"grid_search": [1, 2]}).to_tune() == {"grid_search": [1, 2]}
    assert parse_domain("k", {"grid_search": [[1], [2]]}).to_tune() == {"grid_search": [0, 1]}


def test_base_options_apply_before_the_command_line(tmp_path):
    path = write_sweep(tmp_path, base_options=["runner.max_iters=9", "log_config.interval=3"])
    sweep = load_sweep(str(path), work_dir=str(tmp_path / "w"), cfg_options=["runner.max_iters=12"])
    assert sweep.max_iters == 12 and sweep.base_cfg["log_config"]["interval"] == 3
    with pytest.raises(ConfigError, match="base_options must be a list of KEY=VALUE strings"):
        load(tmp_path, base_options="runner.max_iters=9")


@pytest.mark.skipif(importlib.util.find_spec("optuna") is None, reason="optuna (rayseg's dev extras) is not installed")
def test_optuna_samples_the_space_including_choices_of_mappings(tmp_path):
    from rayseg.tune.runner import build_search_alg

    policies = [{"policy": "poly", "power": 0.9, "min_lr": 0.0, "by_epoch": False},
                {"policy": "CosineAnnealing", "min_lr_ratio": 0.01, "by_epoch": False}]
    sweep = load(tmp_path, search_space={"optimizer.lr": {"loguniform": [1e-3, 1e-1]}, "lr_config": {"choice": policies}},
                 tune={"search_alg": {"type": "optuna", "seed": 3}})
    search = build_search_alg(sweep)
    assert search.set_search_properties("mIoU", "max", {d.param_name: d.to_tune() for d in sweep.space.values()})
    values = decode_sample(sweep.space, search.suggest("trial-1"))
    assert 1e-3 <= values["optimizer.lr"] <= 1e-1 and values["lr_config"] in policies
    trial_config(sweep, values)  # a config the trial can train


@pytest.mark.parametrize("scheduler, cls", [("fifo", "FIFOScheduler"), ("asha", "AsyncHyperBandScheduler"),
                                            ("hyperband", "HyperBandScheduler"), ("pbt", "PopulationBasedTraining")])
def test_schedulers_count_training_iterations(tmp_path, scheduler, cls):
    from rayseg.tune.runner import build_scheduler

    sweep = load(tmp_path, tune={"scheduler": {"type": scheduler}},
                 search_space={"optimizer.lr": {"loguniform": [1e-3, 1e-1]},
                               "lr_config": {"choice": [{"policy": "poly", "power": 0.9, "min_lr": 0.0},
                                                        {"policy": "fixed"}]}})
    built = build_scheduler(sweep)
    assert type(built).__name__ == cls
    if scheduler != "fifo":
        assert built._time_attr == "iter"
    if scheduler in ("asha", "hyperband"):
        assert getattr(built, "_max_t", getattr(built, "_max_t_attr", None)) == sweep.max_iters == 6
    if scheduler == "pbt":
        assert built._perturbation_interval == 3  # the base config's evaluation.interval
        assert set(built._hyperparam_mutations) == {"optimizer.lr", "lr_config#index"}


def test_concurrent_trials_fit_the_cluster(tmp_path):
    from rayseg.tune.runner import concurrent_trials, trial_cpus_and_gpus

    sweep = load(tmp_path, tune={"resources_per_trial": {"num_workers": 2, "cpus_per_worker": 1}})
    cpus, gpus = trial_cpus_and_gpus(sweep)
    # 2 workers x 1 CPU, 2 train + 1 val decode actors x 0.5, one read task, the trial function's 0.01
    assert (cpus, gpus) == (pytest.approx(4.51), 0)
    assert concurrent_trials(sweep, {"CPU": 10}) == 2
    with pytest.raises(ConfigError, match="one trial needs 4.51 CPUs"):
        concurrent_trials(sweep, {"CPU": 4})


def test_register_model_is_checked_and_trials_register_nothing(tmp_path):
    with pytest.raises(ConfigError, match="tune.register_model: 'a/b' is not a registered model name"):
        load_sweep(str(write_sweep(tmp_path, tune={"register_model": "a/b"})))
    sweep = load_sweep(str(write_sweep(tmp_path, tune={"register_model": "best"})),
                       cfg_options=["mlflow.register_model=per-trial"])
    assert sweep.tune.register_model == "best"
    assert trial_config(sweep, {"optimizer.lr": 0.01})["mlflow"]["register_model"] is None
