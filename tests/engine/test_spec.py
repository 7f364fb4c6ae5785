"""The run spec: one resolution of the config on the driver, the key policy, and the checks that run before Ray.

No Ray here: the train job's refusals happen before Ray starts, and that is what is tested.
"""
from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT
from rayseg.config import load_config
from rayseg.errors import ConfigError, DataError
from rayseg.spec import RunSpec
from rayseg.spec.check import check_run
from rayseg.spec.policy import DIST_PARAMS_NOTE, PRE_EVAL_NOTE
from rayseg.spec.resolve import resolve_run

TINY = str(REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml")


def _spec(*options, **kwargs) -> RunSpec:
    kwargs.setdefault("work_dir", "/tmp/rayseg-spec-test/run")
    return resolve_run(load_config(TINY, list(options)), **kwargs)


def _data(root) -> list:
    return [f"data.{split}.data_root={root}" for split in ("train", "val", "test")]


def test_every_section_is_resolved_into_typed_fields():
    spec = _spec("evaluation.save_best=auto", "evaluation.metric=[mDice, mIoU]", "failure.max_failures=2",
                 "mlflow.tracking_uri=http://127.0.0.1:1", "log_level=warning")
    assert spec.max_iters == 6 and spec.run_name == "run" and spec.work_dir == "/tmp/rayseg-spec-test/run"
    assert (spec.data.samples_per_gpu, spec.data.workers_per_gpu) == (2, 1)
    assert spec.data.train_pipeline[0] == {"type": "LoadImageFromFile"}
    assert spec.evaluation.interval == 3 and spec.evaluation.metrics == ("mDice", "mIoU")
    assert spec.evaluation.save_best == "mDice" and spec.evaluation.ignore_index == 255
    assert (spec.checkpoint.interval, spec.checkpoint.max_keep) == (3, None)
    assert spec.checkpoint.storage == "/tmp/rayseg-spec-test/run/ray_results"
    assert spec.scaling.num_workers == 2 and spec.scaling.cpus_per_worker == 1.0 and spec.scaling.max_failures == 2
    assert spec.model.sync_bn  # the demo model uses SyncBN
    assert spec.optim.base_lr == 0.05 and spec.optim.lr_config["warmup"] == "linear"
    assert spec.tracking.tracking_uri == "http://127.0.0.1:1" and spec.tracking.artifact_root is None
    assert spec.tracking.experiment_name == "rayseg-demo"
    assert spec.log.interval == 2 and spec.log.level == "WARNING"
    assert spec.config["work_dir"] == spec.work_dir and spec.config["seed"] == 0
    # It travels to the workers in train_loop_config: it must pickle and come back equal.
    assert pickle.loads(pickle.dumps(spec)) == spec


def test_command_line_choices_win_and_the_input_is_not_changed(tmp_path):
    cfg = load_config(TINY)
    before = pickle.dumps(cfg)
    spec = resolve_run(cfg, work_dir=str(tmp_path / "w"), seed=7, deterministic=True, load_from="x.pth",
                       config_path=TINY)
    assert (spec.seed, spec.deterministic, spec.load_from) == (7, True, "x.pth")
    assert (spec.config["seed"], spec.config["deterministic"], spec.config["load_from"]) == (7, True, "x.pth")
    assert pickle.dumps(cfg) == before
    assert spec.tracking.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"  # the store beside the work dir
    with pytest.raises(ConfigError, match="resume_from and --resume"):
        resolve_run(load_config(TINY, ["resume_from=/x"]), work_dir=str(tmp_path), resume=True)


def test_validation_ignore_index_is_the_val_datasets():
    assert _spec().evaluation.ignore_index == 255  # DemoShapesDataset's default
    assert _spec("data.val.ignore_index=0").evaluation.ignore_index == 0


def test_save_best_metric_and_missing_val_set():
    with pytest.raises(ConfigError, match="evaluation.metric: unknown metric"):
        _spec("evaluation.metric=mAP")
    with pytest.raises(ConfigError, match="evaluation.save_best: 'mIOU'"):
        _spec("evaluation.save_best=mIOU")
    cfg = load_config(TINY)
    del cfg["data"]["val"]
    with pytest.raises(ConfigError, match="data.val is not set"):
        resolve_run(cfg)
    cfg["evaluation"]["interval"] = 0
    assert resolve_run(cfg).evaluation.interval == 0


@pytest.mark.parametrize("option,match", [
    ("runner.type=EpochBasedRunner", "runner.type: only IterBasedRunner"),
    ("workflow=[[train, 1], [val, 1]]", "workflow: .* validates every evaluation.interval"),
    ("workflow=[[val, 1]]", "workflow"),
    ("tune={num_samples: 4}", "tune: .*sweep config"),
    ("log_level=LOUD", "log_level: 'LOUD'"),
    ("log_config.hooks=[{type: TensorboardLoggerHook}]", r"hooks.0.type: 'TensorboardLoggerHook' .*MLflow"),
    ("log_config.hooks=[{type: TextLoggerHook, by_epoch: true}]", r"hooks.0.by_epoch"),
    ("log_config.hooks=[{type: TextLoggerHook, interval: 7}]", r"hooks.0.interval: 7 differs from log_config"),
    ("log_config.hooks=[{type: MlflowLoggerHook, log_model: false}]", r"hooks.0.log_model"),
    ("log_config.hooks=[{type: MlflowLoggerHook, bogus: 1}]", r"hooks.0: MlflowLoggerHook key\(s\) \['bogus'\]"),
    ("checkpoint_config.by_epoch=true", "checkpoint_config.by_epoch: rayseg checkpoints by iteration"),
    ("optimizer_config.type=GradientCumulativeOptimizerHook", "optimizer_config.type"),
    ("optimizer_config.loss_scale=512.0", "optimizer_config.loss_scale applies only with"),
    ("failure.retries=3", r"failure: unknown key\(s\) \['retries'\]"),
    ("scaling.placement_strategy=ANYWHERE", "scaling.placement_strategy"),
])
def test_refused_keys_say_what_to_use(option, match):
    with pytest.raises(ConfigError, match=match):
        _spec(option)


def test_accepted_keys_do_what_they_say():
    spec = _spec("workflow=[[train, 1]]", "checkpoint_config.by_epoch=false",
                 "log_config.hooks=[{type: TextLoggerHook, by_epoch: false, interval: 2},"
                 " {type: MlflowLoggerHook, exp_name: from-hook, tags: {team: seg}}]")
    assert spec.notes == ()
    assert spec.tracking.experiment_name == "from-hook" and spec.tracking.tags == {"team": "seg"}
    assert spec.config["mlflow"]["experiment_name"] == "from-hook"  # print_config shows what runs
    noted = _spec("dist_params={backend: nccl}", "evaluation.pre_eval=true")
    assert noted.notes == (DIST_PARAMS_NOTE, PRE_EVAL_NOTE)


def test_log_level_sets_rayseg_loggers():
    from rayseg.spec.policy import set_log_level

    logger = logging.getLogger("rayseg")
    old = logger.level
    try:
        set_log_level(_spec("log_level=ERROR").log.level)
        assert logging.getLogger("rayseg.models.pretrained").getEffectiveLevel() == logging.ERROR
    finally:
        logger.setLevel(old)


@pytest.mark.parametrize("option,match", [
    ("model.decode_head.bogus=1", r"^model.decode_head: head 'FCNHead': unknown argument 'bogus'"),
    ("model.backbone.depht=18", r"^model.backbone: .*'depht'.*Did you mean 'depth'"),
    ("model.auxiliary_head.loss_decode.typo=1", r"^model.auxiliary_head: loss 'CrossEntropyLoss'.*'typo'"),
    ("model.test_cfg.mode=sliding", r"^model: .*test_cfg.mode"),
    ("lr_config.policy=nope", r"^lr_config.policy: unknown policy 'nope'\. Allowed: CosineAnnealing, "),
    ("lr_config.policy=step", r"^lr_config.power: not an argument of policy 'step'"),
    ("momentum_config={policy: cyclic, target_ratio: [0.9, 1.0], gammma: 1}",
     r"^momentum_config.gammma: not an argument of policy 'cyclic' \(did you mean 'gamma'\?\)"),
    ("optimizer.paramwise_cfg={norm_decay_mult: 0.0, bias_lr_mult: 2.0, bypass_duplicate: true}", None),
    ("optimizer_config.grad_clip={max_norm: 1, typo: 2}", r"^optimizer_config.grad_clip.typo: not an argument"),
    ("optimizer.constructor=Nope", r"^optimizer.constructor: unknown optimizer constructor type 'Nope'"),
    ("optimizer.paramwise_cfg={custom_keys: {head: {lr_multt: 2}}}",
     r"^optimizer.paramwise_cfg.custom_keys.head: unknown keys \['lr_multt'\]"),
    ("lr_config.warmup=cosine", r"^lr_config.warmup: expected linear"),
    ("optimizer.momentun=0.9", r"^optimizer: .*'momentun'"),
    ("data.train.pipeline.3.type=RandomCorp", r"^data.train.pipeline.3: unknown transform type 'RandomCorp'"),
    ("data.val.pipeline.1.transforms.0.type=Resise", r"^data.val.pipeline.1: .*'Resise'"),
    ("data.test.bogus=1", r"^data.test: .*'bogus'"),
    ("model.pretrained=/nonexistent/r18.pth", r"^model.pretrained: checkpoint file not found"),
])
def test_check_builds_everything_the_config_names(option, match):
    if match is None:  # accepted as it is
        check_run(_spec(option), list_data=False)
        return
    with pytest.raises(ConfigError, match=match):
        check_run(_spec(option), list_data=False)


def test_check_refuses_a_momentum_schedule_without_momentum():
    with pytest.raises(ConfigError, match=r"^momentum_config: optimizer Adagrad has neither momentum nor betas"):
        check_run(_spec("optimizer={type: Adagrad, lr: 0.01}",
                        "momentum_config={policy: CosineAnnealing, min_momentum_ratio: 0.5}"), list_data=False)


def test_by_epoch_resolves_the_epoch_length_from_the_training_set(demo_data):
    # 24 training images, 2 per worker x 2 workers: 6 iterations per epoch (len // global batch).
    spec = _spec(*_data(demo_data), "lr_config.by_epoch=true")
    assert spec.optim.iters_per_epoch == 6 and spec.optim.momentum_config is None
    check_run(spec, list_data=False)
    spec = _spec(*_data(demo_data), "momentum_config={policy: step, step: 1, by_epoch: true}")
    assert spec.optim.iters_per_epoch == 6 and spec.optim.momentum_config["policy"] == "step"
    assert _spec(*_data(demo_data)).optim.iters_per_epoch is None  # nothing counts epochs: nothing listed
    with pytest.raises(ConfigError, match=r"^lr_config.by_epoch: the training set \(24 samples\) is smaller"):
        _spec(*_data(demo_data), "lr_config.by_epoch=true", "data.samples_per_gpu=13")
    with pytest.raises(ConfigError, match=r"^momentum_config.by_epoch: policy cyclic is defined per iteration"):
        check_run(_spec(*_data(demo_data), "momentum_config={policy: cyclic, by_epoch: true}"), list_data=False)


def test_check_skips_pretrained_downloads():
    # An unreachable URL: building with it would try to download; the check must not.
    start = time.monotonic()
    check_run(_spec("model.backbone.init_cfg={type: Pretrained, checkpoint: 'http://127.0.0.1:9/r18.pth'}"),
              list_data=False)
    assert time.monotonic() - start < 60


def test_check_lists_the_data(demo_data, tmp_path):
    checked = check_run(_spec(*_data(demo_data)))
    assert len(checked.train_set) == 24 and len(checked.val_set) == 6
    with pytest.raises(DataError, match=r"^data.train: image directory .*nowhere.* does not exist"):
        check_run(_spec(*_data(tmp_path / "nowhere")))
    assert check_run(_spec(*_data(tmp_path / "nowhere")), list_data=False).train_set is None
    with pytest.raises(ConfigError, match="num_classes is 3 but data.train"):
        check_run(_spec(*_data(demo_data), "model.decode_head.num_classes=3", "model.auxiliary_head.num_classes=3"))


def _job(script, *args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, str(REPO_ROOT / "jobs" / script), *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd, env=env)


@pytest.mark.parametrize("option,key", [
    ("model.decode_head.bogus=1", "model.decode_head: head 'FCNHead': unknown argument 'bogus'"),
    ("lr_config.policy=nope", "lr_config.policy"),
    ("data.train.pipeline.2.type=Resise", "data.train.pipeline.2: unknown transform type 'Resise'"),
    ("runner.type=EpochBasedRunner", "runner.type"),
])
def test_train_and_print_config_refuse_the_same_configs_before_anything_starts(option, key, demo_data, tmp_path):
    start = time.monotonic()
    proc = _job("train.py", TINY, "--work-dir", "tmp/x", "--cfg-options", *_data(demo_data), option, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and key in proc.stderr and len(proc.stderr.splitlines()) == 1
    assert time.monotonic() - start < 120  # no Ray start-up: seconds on an idle machine
    assert not (tmp_path / "tmp").exists()  # no work dir, no mlflow.db beside it
    assert list(tmp_path.iterdir()) == []
    printed = _job("print_config.py", TINY, "--cfg-options", option, cwd=tmp_path)
    assert printed.returncode == 2 and printed.stdout == "" and key in printed.stderr


def test_missing_data_root_fails_before_ray(tmp_path):
    proc = _job("train.py", TINY, "--work-dir", "tmp/x", "--cfg-options", *_data(tmp_path / "gone"), cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: data.train: image directory") and str(tmp_path / "gone") in proc.stderr
    assert not (tmp_path / "tmp").exists()
    # print_config lists data only when asked to.
    assert _job("print_config.py", TINY, "--cfg-options", *_data(tmp_path / "gone"), cwd=tmp_path).returncode == 0
    checked = _job("print_config.py", TINY, "--check-data", "--cfg-options", *_data(tmp_path / "gone"), cwd=tmp_path)
    assert checked.returncode == 2 and "gone" in checked.stderr


def test_worker_errors_come_back_as_the_plain_rayseg_error():
    """What ``trainer.fit()`` raises when a worker failed: Ray Train's WorkerGroupError around Ray's wrappers."""
    import ray.exceptions
    from ray.train import WorkerGroupError

    from rayseg.utils.ray_session import user_error

    wrapped = ray.exceptions.RayTaskError("get", "Traceback ...", DataError("cannot decode image a.png")) \
        .as_instanceof_cause()
    outer = ray.exceptions.RayTaskError("SplitCoordinator.get", "Traceback ...", wrapped)
    found = user_error(WorkerGroupError("worker errors", {0: outer, 1: RuntimeError("collective aborted")}))
    assert type(found) is DataError and str(found) == "cannot decode image a.png"
    annotated = DataError("cannot decode image b.png\nFailed to apply UDF transform after 1/1 attempts (total "
                          "backoff 0.0s).\nTo change retry attempts ... if you believe this to be transient.")
    assert str(user_error(WorkerGroupError("x", {0: annotated}))) == "cannot decode image b.png"
    assert user_error(WorkerGroupError("x", {0: RuntimeError("a bug")})) is None


def test_first_batch_timeout_is_resolved_once():
    assert _spec().data.first_batch_timeout_s == 300.0
    assert _spec("data.first_batch_timeout_s=20").data.first_batch_timeout_s == 20.0
    with pytest.raises(ConfigError, match=r"data.first_batch_timeout_s must be > 0 seconds, got 0"):
        _spec("data.first_batch_timeout_s=0")
    with pytest.raises(ConfigError, match="first_batch_timeout_s"):
        _spec("data.first_batch_timeout_s=soon")


def _job_copy(tmp_path):
    """A folder where Ray unpacks ``ray job submit --working-dir``, with the uploaded repository in it."""
    pkg = tmp_path / "ray" / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    (pkg / "tests" / "configs").mkdir(parents=True)
    return pkg


def test_under_a_job_copy_relative_inputs_and_outputs_are_refused(demo_data, tmp_path, monkeypatch):
    from rayseg.utils.ray_session import job_package_dir

    pkg = _job_copy(tmp_path)
    assert job_package_dir(str(pkg / "jobs")) == str(pkg) and job_package_dir(str(tmp_path)) is None
    monkeypatch.chdir(pkg)
    # The config's own data_root (data/demo) is relative, and data/ is never uploaded.
    with pytest.raises(ConfigError, match=r"^data.train.data_root: 'data/demo' is a relative path and this job runs "
                                          r"in Ray's temporary copy .*_ray_pkg_0123abcd.*use an absolute path"):
        check_run(_spec(work_dir=str(tmp_path / "out")))
    # Data given absolutely, but the default work dir (work_dirs/<config>) would land in the copy.
    with pytest.raises(ConfigError, match=r"^the work dir .* would be inside the job's working-directory copy.*"
                                          r"--work-dir /ABSOLUTE/PATH"):
        check_run(resolve_run(load_config(TINY, _data(demo_data)), config_path=TINY))
    with pytest.raises(ConfigError, match=r"^storage_path: .* would be inside"):
        check_run(_spec(*_data(demo_data), "storage_path=ckpts", work_dir=str(tmp_path / "out")))
    with pytest.raises(ConfigError, match=r"^mlflow.tracking_uri: mlruns.db would be inside"):
        check_run(_spec(*_data(demo_data), "mlflow.tracking_uri=sqlite:///mlruns.db", work_dir=str(tmp_path / "o")))
    # Absolute paths pass; so does a relative data root that was uploaded with the code.
    assert len(check_run(_spec(*_data(demo_data), work_dir=str(tmp_path / "out"))).train_set) == 24
    os.symlink(demo_data, pkg / "uploaded")
    assert len(check_run(_spec(*_data("uploaded"), work_dir=str(tmp_path / "out"))).train_set) == 24
    # Outside a job copy relative paths keep their usual meaning (print_config never checks this).
    monkeypatch.chdir(tmp_path)
    check_run(_spec(*_data(demo_data), work_dir="rel/out"))


def test_train_under_a_job_copy_fails_in_one_line_before_anything_starts(tmp_path):
    pkg = _job_copy(tmp_path)
    start = time.monotonic()
    proc = _job("train.py", TINY, cwd=pkg)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("error: data.train.data_root: 'data/demo' is a relative path")
    assert time.monotonic() - start < 120 and sorted(p.name for p in pkg.iterdir()) == ["tests"]


@pytest.mark.parametrize("options,total,autoscaler,match", [
    # The hang: `ray start --head --num-cpus 2`, 2 workers x 1 CPU.
    ((), {"CPU": 2.0}, None, r"has 2 CPUs but this job needs 4 to start: scaling.num_workers \(2\) x "
                             r"scaling.resources_per_worker.CPU \(1\) for training, 2 decode/augment actors x 0\.5 "
                             r"\(data.workers_per_gpu 1 per worker\) and 1 for Ray Data's read tasks.*; lower "
                             r"scaling.resources_per_worker.CPU, or give the cluster 5 CPUs "
                             r"\(`ray start --head --num-cpus 5`"),
    (("scaling.num_workers=3",), {"CPU": 4.0}, None, r"has 4 CPUs but this job needs 5\.5 to start: .*; use "
                                                     r"scaling.num_workers=2 or a smaller scaling.resources_per_worker"),
    (("scaling.use_gpu=true",), {"CPU": 8.0, "GPU": 1.0}, None, r"has 1 GPU but scaling.num_workers \(2\) x 1 GPU"),
])
def test_cluster_room_is_refused_with_what_to_change(options, total, autoscaler, match):
    from rayseg.engine.trainer import check_cluster_room

    with pytest.raises(ConfigError, match=r"^the Ray cluster at 127.0.0.1:6379 " + match):
        check_cluster_room(_spec(*options), total, autoscaler, "127.0.0.1:6379")


def test_cluster_room_counts_what_runs_and_what_an_autoscaler_can_add():
    from rayseg.engine.trainer import check_cluster_room, cluster_cpus_needed

    spec = _spec("scaling.num_workers=1", "scaling.resources_per_worker={CPU: 0.5}", "evaluation.interval=0")
    assert cluster_cpus_needed(spec) == cluster_cpus_needed(spec, validation=True) == 2.0  # 0.5 + 0.5 + 1
    assert check_cluster_room(spec, {"CPU": 2.0}, None) is None
    assert check_cluster_room(_spec(), {"CPU": 5.0}, None) is None
    # 2 workers + 2 decode actors + a read task can start on 4; validation's actor would have to wait.
    assert "validation's decode actors need 4.5" in check_cluster_room(_spec(), {"CPU": 4.0}, None)
    assert check_cluster_room(_spec(), {"CPU": 2.0}, {"CPU": 64}) is None  # the autoscaler adds nodes
    assert check_cluster_room(_spec("scaling.use_gpu=true"), {"CPU": 8.0}, {"CPU": 64, "GPU": 8}) is None
