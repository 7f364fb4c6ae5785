"""load_config: _base_ inheritance, _delete_, --cfg-options, validation errors, and the print_config job."""
import json
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from rayseg.config import DEFAULTS, dump_config, flatten_config, load_config
from rayseg.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(dirpath, name, text):
    path = dirpath / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return str(path)


@pytest.fixture
def tree(tmp_path):
    """A small MMSeg-like config tree: model and schedule bases, a runtime base, one experiment."""
    write(tmp_path, "_base_/models/fcn.yaml", """
        model:
          type: EncoderDecoder
          backbone: {type: ResNetV1c, depth: 50, strides: [1, 2, 1, 1]}
          decode_head: {type: FCNHead, num_classes: 19, dropout_ratio: 0.1}
    """)
    write(tmp_path, "_base_/schedules/40k.yaml", """
        _base_: ../default_runtime.yaml
        optimizer: {type: SGD, lr: 0.01, momentum: 0.9, weight_decay: 0.0005}
        lr_config: {policy: poly, power: 0.9, min_lr: 0.0001, by_epoch: false}
        runner: {type: IterBasedRunner, max_iters: 40000}
        checkpoint_config: {by_epoch: false, interval: 4000}
        evaluation: {interval: 4000, metric: mIoU, pre_eval: true}
    """)
    write(tmp_path, "_base_/default_runtime.yaml", """
        log_config: {interval: 50, hooks: [{type: TextLoggerHook, by_epoch: false}]}
        seed: 1
        runner: {type: EpochBasedRunner}
    """)
    write(tmp_path, "_base_/datasets/camvid.yaml", """
        data:
          samples_per_gpu: 2
          workers_per_gpu: 2
          train:
            type: CamVidDataset
            pipeline:
              - {type: LoadImageFromFile}
              - {type: LoadAnnotations}
              - {type: RandomCrop, crop_size: [256, 256], cat_max_ratio: 0.75}
    """)
    return tmp_path


def test_multilevel_list_bases_and_own_keys_win(tree):
    path = write(tree, "fcn_camvid.yaml", """
        _base_: [_base_/models/fcn.yaml, _base_/datasets/camvid.yaml, _base_/schedules/40k.yaml]
        model:
          decode_head: {num_classes: 11}
        lr_config: {min_lr: 0.0}
        runner: {max_iters: 200}
    """)
    cfg = load_config(path)
    head = cfg["model"]["decode_head"]
    assert head == {"type": "FCNHead", "num_classes": 11, "dropout_ratio": 0.1}  # merged, not replaced
    assert cfg["model"]["backbone"]["depth"] == 50
    assert cfg["lr_config"] == {"policy": "poly", "power": 0.9, "min_lr": 0.0, "by_epoch": False}
    # runtime (base of a base) says EpochBasedRunner; the schedule overrides it; the file overrides max_iters.
    assert cfg["runner"] == {"type": "IterBasedRunner", "max_iters": 200}
    assert cfg["seed"] == 1  # from the base of a base, over DEFAULTS' 0
    assert cfg["log_config"]["hooks"] == [{"type": "TextLoggerHook", "by_epoch": False}]
    assert cfg["mlflow"]["experiment_name"] == DEFAULTS["mlflow"]["experiment_name"]  # defaults underneath
    assert cfg["scaling"]["placement_strategy"] == "PACK"
    assert "_base_" not in cfg


def test_later_base_wins_and_lists_replace(tmp_path):
    write(tmp_path, "a.yaml", "model: {type: A, widths: [1, 2, 3], keep: 1}\n")
    write(tmp_path, "b.yaml", "model: {type: B, widths: [9]}\n")
    path = write(tmp_path, "c.yaml", "_base_: [a.yaml, b.yaml]\n")
    assert load_config(path)["model"] == {"type": "B", "widths": [9], "keep": 1}
    path = write(tmp_path, "d.yaml", "_base_: [b.yaml, a.yaml]\n")
    assert load_config(path)["model"] == {"type": "A", "widths": [1, 2, 3], "keep": 1}


def test_delete_replaces_inherited_mapping(tree):
    path = write(tree, "no_merge.yaml", """
        _base_: _base_/models/fcn.yaml
        model:
          decode_head: {_delete_: true, type: PSPHead, num_classes: 11}
        optimizer_config: {_delete_: true}
    """)
    cfg = load_config(path)
    assert cfg["model"]["decode_head"] == {"type": "PSPHead", "num_classes": 11}
    assert cfg["model"]["backbone"]["type"] == "ResNetV1c"  # siblings still inherited
    assert cfg["optimizer_config"] == {}
    assert "_delete_" not in dump_config(cfg)


def test_cfg_options_nested_index_and_yaml_types(tree):
    path = write(tree, "exp.yaml", "_base_: [_base_/datasets/camvid.yaml, _base_/schedules/40k.yaml]\n")
    cfg = load_config(path, [
        "data.train.pipeline.2.crop_size=[64,64]",
        "lr_config.power=1",  # int accepted where a float was
        "runner.max_iters=10",
        "work_dir=null",
        "seed=null",
        "mlflow.run_name=smoke",
        "model.decode_head.num_classes=3",  # new key path in a free-form section
        "evaluation.metric=[mIoU, mDice]",
        "scaling.resources_per_worker={CPU: 1}",
        "scaling.resources_per_worker.CPU=0.5",  # a float where an int was, in a free-form mapping
    ])
    assert cfg["scaling"]["resources_per_worker"] == {"CPU": 0.5}
    assert cfg["data"]["train"]["pipeline"][2]["crop_size"] == [64, 64]
    assert cfg["lr_config"]["power"] == 1 and isinstance(cfg["lr_config"]["power"], int)
    assert cfg["runner"]["max_iters"] == 10
    assert cfg["seed"] is None and cfg["work_dir"] is None
    assert cfg["mlflow"]["run_name"] == "smoke"
    assert cfg["model"] == {"decode_head": {"num_classes": 3}}
    assert cfg["evaluation"]["metric"] == ["mIoU", "mDice"]


def test_cfg_options_int_keys_of_yaml_mappings(tmp_path):
    path = write(tmp_path, "a.yaml", "data: {train: {type: X, label_map: {11: 255}}}\n")
    cfg = load_config(path, ["data.train.label_map.11=0"])
    assert cfg["data"]["train"]["label_map"] == {11: 0}


@pytest.mark.parametrize("option,match", [
    ("runner.max_iters", "expected KEY=VALUE"),
    ("=3", "empty key"),
    ("runner..max_iters=3", "empty key"),
    ("data.train.pipeline.7.type=X", "index 7 out of range"),
    ("data.train.pipeline.x.type=X", "needs an integer"),
    ("runner.max_iters.deep=3", "cannot index into 'runner.max_iters'"),
    ("runner.max_iters=ten", r"'runner.max_iters' holds an int, the override gives a str"),
    ("lr_config.by_epoch=1", "holds a bool, the override gives an int"),
    ("runner.max_iters=1.5", "holds an int, the override gives a float"),
    ("data.train.pipeline={a: 1}", "holds a list, the override gives a dict"),
    ("runner.max_itres=3", r"unknown key 'runner.max_itres'; did you mean 'max_iters'\?"),
    ("bogus=1", "unknown key 'bogus'"),
    ("data.samples_per_gpu=[", "cannot parse value"),
])
def test_bad_cfg_options(tree, option, match):
    path = write(tree, "exp.yaml", "_base_: [_base_/datasets/camvid.yaml, _base_/schedules/40k.yaml]\n")
    with pytest.raises(ConfigError, match=match) as err:
        load_config(path, [option])
    assert option in str(err.value) or "after --cfg-options" in str(err.value)


def test_missing_file_and_missing_base(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_config(str(tmp_path / "nope.yaml"))
    path = write(tmp_path, "child.yaml", "_base_: [gone/base.yaml]\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert "child.yaml" in msg and "'gone/base.yaml' not found" in msg and str(tmp_path / "gone") in msg


def test_inheritance_cycle_shows_chain(tmp_path):
    write(tmp_path, "a.yaml", "_base_: b.yaml\n")
    write(tmp_path, "b.yaml", "_base_: c.yaml\n")
    write(tmp_path, "c.yaml", "_base_: a.yaml\n")
    with pytest.raises(ConfigError, match=r"cycle: .*a\.yaml -> .*b\.yaml -> .*c\.yaml -> .*a\.yaml"):
        load_config(str(tmp_path / "a.yaml"))


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = write(tmp_path, "bad.yaml", "seed: 1\nmodel: {type: X\nrunner: {}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: YAML syntax error"):
        load_config(path)
    path = write(tmp_path, "dup.yaml", "seed: 1\nwork_dir: a\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml:3: .*duplicate key 'seed'"):
        load_config(path)


def test_top_level_not_a_mapping(tmp_path):
    path = write(tmp_path, "list.yaml", "- a\n- b\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: top level must be a mapping"):
        load_config(path)
    path = write(tmp_path, "badbase.yaml", "_base_: 3\n")
    with pytest.raises(ConfigError, match=r"badbase\.yaml: _base_ must be a path"):
        load_config(path)


@pytest.mark.parametrize("text,match", [
    ("lr_config: {powr: 0.9}\n", r"unknown key 'lr_config.powr'; did you mean 'power'\?"),
    ("optimzer: {type: SGD}\n", r"unknown key 'optimzer'; did you mean 'optimizer'\?"),
    ("lr_config: {power: high}\n", r"'lr_config.power' must be a number, got str"),
    ("deterministic: 1\n", r"'deterministic' must be a bool, got int"),
    ("runner: {max_iters: true}\n", r"'runner.max_iters' must be an int, got bool"),  # bool is not an int
    ("seed: 1.5\n", r"'seed' must be an int or null"),
    ("runner: 5\n", r"'runner' must be a mapping"),
    ("data: {train: [1]}\n", r"'data.train' must be a mapping"),
    ("scaling: {num_workers: 2, use_gpus: true}\n", r"'scaling.use_gpus'; did you mean 'use_gpu'"),
])
def test_validation_errors_name_file_and_key(tmp_path, text, match):
    path = write(tmp_path, "cfg.yaml", text)
    with pytest.raises(ConfigError, match=match) as err:
        load_config(path)
    assert "cfg.yaml" in str(err.value)


def test_validation_accepts_int_for_float_and_free_form_sections(tmp_path):
    path = write(tmp_path, "ok.yaml", """
        lr_config: {power: 1, min_lr: 0}
        model: {anything: {goes: [1, 2]}}
        tune: {num_samples: 4}
        failure: {max_failures: 2}
    """)
    cfg = load_config(path)
    assert cfg["lr_config"]["power"] == 1 and cfg["tune"] == {"num_samples": 4}


def test_result_is_plain_and_round_trips(tree):
    path = write(tree, "exp.yaml", """
        _base_: [_base_/models/fcn.yaml, _base_/datasets/camvid.yaml, _base_/schedules/40k.yaml]
        mlflow: {tags: {date: 2024-01-02}}
    """)
    cfg = load_config(path)
    assert cfg["mlflow"]["tags"]["date"] == "2024-01-02"  # YAML date → string, stays plain
    assert yaml.safe_load(dump_config(cfg)) == cfg
    assert json.loads(json.dumps(cfg)) == cfg
    again = load_config(path)
    again["model"]["backbone"]["depth"] = 101
    assert load_config(path)["model"]["backbone"]["depth"] == 50  # no shared state between loads
    assert DEFAULTS["mlflow"]["tags"] == {}


def test_dump_keeps_key_order(tmp_path):
    path = write(tmp_path, "o.yaml", "runner: {type: IterBasedRunner}\nmodel: {z: 1, a: 2}\n")
    text = dump_config(load_config(path))
    assert text.index("z: 1") < text.index("a: 2")


def test_flatten_config():
    cfg = {
        "model": {"backbone": {"depth": 50, "strides": [1, 2, 1, 1]}, "empty": {}},
        "data": {"train": {"pipeline": [{"type": "Load"}, {"type": "RandomCrop", "crop_size": [8, 8]}]}},
        "seed": None,
        "deterministic": False,
        "big": "x" * 7000,
    }
    flat = flatten_config(cfg)
    assert flat["model.backbone.depth"] == "50"
    assert json.loads(flat["model.backbone.strides"]) == [1, 2, 1, 1]
    assert flat["data.train.pipeline.0.type"] == "Load"
    assert json.loads(flat["data.train.pipeline.1.crop_size"]) == [8, 8]
    assert flat["model.empty"] == "{}"
    assert flat["seed"] == "None" and flat["deterministic"] == "False"
    assert len(flat["big"]) == 6000
    assert all(isinstance(v, str) for v in flat.values())
    assert set(flatten_config({"a": {"b": 1}}, sep="/")) == {"a/b"}


def _run_cli(*args):
    # PYTHONPATH makes the job importable from a checkout even where rayseg is not pip-installed.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, os.path.join(REPO, "jobs", "print_config.py"), *args],
                          capture_output=True, text=True, timeout=120, env=env)


TINY = os.path.join(REPO, "tests", "configs", "tiny_shapes.yaml")


def test_print_config_cli(tmp_path):
    """print_config prints the resolved run config (defaults and command-line keys filled in), as YAML or JSON."""
    from rayseg.spec.resolve import resolve_run

    work = str(tmp_path / "w")
    proc = _run_cli(TINY, "--json", "--work-dir", work, "--cfg-options", "runner.max_iters=7", "seed=3")
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)  # exactly one JSON document: json.loads rejects trailing data
    assert cfg["runner"]["max_iters"] == 7 and cfg["seed"] == 3 and cfg["work_dir"] == work
    expected = resolve_run(load_config(TINY, ["runner.max_iters=7", "seed=3"]), work_dir=work).config
    assert cfg == json.loads(json.dumps(expected))

    proc = _run_cli(TINY, "--work-dir", work, "--cfg-options", "dist_params={backend: nccl}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# note: dist_params is not used")  # accepted, and says why it does nothing
    assert yaml.safe_load(proc.stdout) == resolve_run(load_config(TINY, ["dist_params={backend: nccl}"]),
                                                      work_dir=work).config

    proc = _run_cli(TINY, "--cfg-options", "lr_config.powr=1")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("error: ") and "lr_config.powr" in proc.stderr

    proc = _run_cli(str(tmp_path / "missing.yaml"))
    assert proc.returncode == 2 and "missing.yaml" in proc.stderr


@pytest.mark.parametrize("option,key", [
    ("runner.type=EpochBasedRunner", "runner.type"),
    ("lr_config.policy=nope", "lr_config.policy"),
    ("model.decode_head.bogus_key=1", "model.decode_head"),
])
def test_print_config_fails_on_configs_training_refuses(option, key):
    proc = _run_cli(TINY, "--cfg-options", option)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith(f"error: {key}")


def test_cfg_options_read_scientific_notation_as_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optimizer: {type: SGD, lr: 0.01}\nrun_name: x\n".replace("run_name: x\n", ""))
    cfg = load_config(str(path), ["optimizer.lr=1e-3", "optimizer.momentum=5E2", "optimizer.type=1e3x"])
    assert cfg["optimizer"]["lr"] == 0.001 and cfg["optimizer"]["momentum"] == 500.0
    assert cfg["optimizer"]["type"] == "1e3x"  # not a number: stays text
