"""MLflow tracking on a real local store (SQLite in tmp_path): store choice, run creation, resume, failures."""
from __future__ import annotations

import time
import warnings

import pytest

from conftest import REPO_ROOT, free_port
from rayseg.config import load_config
from rayseg.spec.resolve import resolve_run
from rayseg.tracking import (HEADLINE_PARAMS, MlflowRun, compare_url, default_store, describe_store,
                             experiment_url, headline_params, project_root, resume_run, run_name, run_params,
                             run_url, start_run, system_metrics_spec, tracking_store, ui_command)

TINY = str(REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml")


@pytest.fixture(scope="module")
def area(tmp_path_factory):
    """One folder for the module: its work dirs share one mlflow.db (creating a store takes seconds)."""
    return tmp_path_factory.mktemp("tracking")


def _spec(work_dir, *options):
    return resolve_run(load_config(TINY, list(options)), work_dir=str(work_dir), config_path=TINY)


def test_store_choice(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # Inside a project checkout: one store for every work dir of it, wherever the work dir is.
    project = tmp_path / "proj"
    (project / "sub").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    store = (f"sqlite:///{project / 'work_dirs' / 'mlflow.db'}", f"file://{project / 'work_dirs' / 'mlartifacts'}")
    for work_dir in ("work_dirs/demo", "other/run2", "sub/deeper/x"):
        assert tracking_store(None, str(project / work_dir)) == store, work_dir
    assert project_root(str(project / "other" / "run2")) == str(project)
    # Outside any checkout: beside the work dir.
    uri, root = tracking_store(None, str(tmp_path / "runs" / "a"))
    assert uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert root == f"file://{tmp_path / 'runs' / 'mlartifacts'}"
    assert (uri, root) == default_store(str(tmp_path / "runs" / "a"))
    assert default_store(str(REPO_ROOT / "elsewhere" / "w"))[0] == f"sqlite:///{REPO_ROOT / 'work_dirs' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_store(None, str(tmp_path)) == ("http://127.0.0.1:5999", None)
    assert tracking_store("http://example:1", str(tmp_path)) == ("http://example:1", None)  # the config wins
    # The resolved URI is written back into the config, so config.yaml and checkpoints name the store.
    assert _spec(tmp_path / "w").config["mlflow"]["tracking_uri"] == "http://127.0.0.1:5999"


def test_printed_links_open_the_model_training_view():
    uri = "sqlite:////x/work_dirs/mlflow.db"
    assert ui_command("http://h:5000/") == "open http://h:5000"
    assert ui_command(uri) == f"mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000"
    # MLflow 3.17 opens experiments in its GenAI view unless the link asks for the model-training one.
    assert run_url(uri, "3", "abc") == "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert experiment_url("http://h:1", "3") == "http://h:1/#/experiments/3?workflowType=machine_learning"
    assert compare_url("http://h:1", "3", ["a", "b"]) == (
        'http://h:1/#/compare-runs?runs=["a","b"]&experiments=["3"]&workflowType=machine_learning')
    assert describe_store(uri) == f"MLflow store: {uri} (local SQLite file /x/work_dirs/mlflow.db)"


def test_run_names_and_headline_params(tmp_path):
    spec = _spec(tmp_path / "w", "optimizer.lr=0.02", "runner.max_iters=4", "seed=3",
                 f"data.train.data_root={tmp_path}", "mlflow.experiment_name=x")
    # The config's name plus what differs from the file; paths and tracking settings are not part of it.
    assert run_name(spec.config, TINY, spec.work_dir) == "tiny_shapes seed=3 optimizer.lr=0.02 runner.max_iters=4"
    assert run_name(_spec(tmp_path / "w").config, TINY, spec.work_dir) == "tiny_shapes"
    assert run_name(spec.config, None, str(tmp_path / "w")) == "w"
    head = headline_params(spec.config, spec.scaling.num_workers)
    assert list(head) == list(HEADLINE_PARAMS)
    assert head == {"Model": "FCNHead", "Backbone": "ResNetV1c-18", "Dataset": "DemoShapesDataset", "Crop": "48x48",
                    "Iterations": "4", "LR": "0.02", "Batch": "4", "Workers": "2"}
    params = run_params(spec.config, spec.scaling.num_workers)
    assert params["optimizer.lr"] == "0.02" and params["LR"] == "0.02"
    assert "work_dir" not in params and "mlflow.tracking_uri" not in params  # they describe the machine
    # MLflow's compare view sorts param keys by code point: the headline ones come first.
    assert sorted(params)[:len(HEADLINE_PARAMS)] == sorted(HEADLINE_PARAMS)


def test_evaluation_finds_the_training_store_and_never_creates_one(tmp_path, monkeypatch):
    from rayseg.apis.eval_outputs import evaluation_store, open_evaluation_run, training_run_id
    from rayseg.errors import ConfigError

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "gone" / "mlflow.db"
    meta = {"config": {"work_dir": str(tmp_path / "w"), "mlflow": {"tracking_uri": f"sqlite:///{missing}"}}}
    # The store recorded with the checkpoint, unless the evaluation's config or the environment says otherwise.
    assert evaluation_store({}, meta) == (f"sqlite:///{missing}", f"file://{tmp_path / 'gone' / 'mlartifacts'}")
    assert evaluation_store({"mlflow": {"tracking_uri": "http://h:1"}}, meta) == ("http://h:1", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://h:2")
    assert evaluation_store({}, meta)[0] == "http://h:2"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(ConfigError, match=f"no MLflow store at {missing}"):
        open_evaluation_run({}, meta, "f" * 32)
    assert list(tmp_path.iterdir()) == []  # no mlflow.db here, none at the recorded place
    with pytest.raises(ConfigError, match="run_state.json"):
        training_run_id(str(tmp_path / "w" / "latest.pth"), meta)
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "run_state.json").write_text('{"mlflow_run_id": "abc"}')
    assert training_run_id(str(tmp_path / "w" / "latest.pth"), {}) == "abc"


def test_start_run_logs_params_and_tags(area, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = _spec(area / "first", "mlflow.tags={team: seg}", "mlflow.experiment_name=tracking-test", "optimizer.lr=0.02")
    run = start_run(spec)
    assert run is not None and run.tracking_uri == spec.tracking.tracking_uri
    client = MlflowClient(tracking_uri=run.tracking_uri)
    got = client.get_run(run.run_id)
    assert got.info.run_name == "tiny_shapes optimizer.lr=0.02"  # without mlflow.run_name
    assert got.data.params["runner.max_iters"] == "6" and got.data.params["LR"] == "0.02"
    assert "work_dir" not in got.data.params
    assert got.data.tags["team"] == "seg" and got.data.tags["rayseg.num_workers"] == "2"
    assert got.data.tags["rayseg.work_dir"] == str(area / "first") and got.data.tags["rayseg.config"] == TINY
    experiment = client.get_experiment(run.experiment_id)
    assert experiment.name == "tracking-test"
    assert experiment.artifact_location == f"file://{area / 'mlartifacts'}/tracking-test"
    run.log_metrics({"loss": 1.5, "flag": True, "nan": float("nan"), "text": "x"}, step=3)
    history = client.get_metric_history(run.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(3, 1.5)]
    assert set(client.get_run(run.run_id).data.metrics) == {"loss"}  # bools, NaN and text are left out
    run.finish("FAILED")
    assert client.get_run(run.run_id).info.status == "FAILED"

    again = resume_run(spec, run.run_id)  # --resume: the same run, running again
    assert again.run_id == run.run_id and client.get_run(run.run_id).info.status == "RUNNING"
    with pytest.warns(RuntimeWarning, match="cannot reopen MLflow run"):
        fresh = resume_run(spec, "0" * 32)
    assert fresh.run_id != run.run_id


def test_a_run_ended_elsewhere_keeps_its_status(area, monkeypatch):
    """A Tune driver marks a stopped trial's run KILLED; the trial's training job, failing as its actor goes
    down, must not turn it FAILED; and the driver's recorder marks its runs again after the sweep."""
    from types import SimpleNamespace

    from mlflow.tracking import MlflowClient

    from rayseg.tracking import MlflowRun
    from rayseg.tune.recording import TrialEndRecorder
    from rayseg.tune.trial import MAX_ITERS_KEY, RUN_ID_KEY

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = _spec(area / "ended", "mlflow.experiment_name=ended-elsewhere")
    run = start_run(spec)
    client = MlflowClient(tracking_uri=run.tracking_uri)
    recorder = TrialEndRecorder(run.tracking_uri, max_iters=6)
    trial = SimpleNamespace(trial_id="t1")
    recorder.on_trial_result(0, [], trial, {"iter": 2, RUN_ID_KEY: run.run_id, MAX_ITERS_KEY: 6})
    recorder.on_trial_complete(0, [], trial)
    assert client.get_run(run.run_id).info.status == "KILLED"
    assert client.get_run(run.run_id).data.tags["rayseg.end_reason"] == "stopped_early"

    MlflowRun(run.tracking_uri, run.run_id).finish_unless_ended("FAILED")  # the trial's teardown
    assert client.get_run(run.run_id).info.status == "KILLED"
    MlflowRun(run.tracking_uri, run.run_id).finish("FAILED")  # a teardown that raced past the check
    recorder.reassert_ends()
    assert client.get_run(run.run_id).info.status == "KILLED"

    running = start_run(_spec(area / "ended2", "mlflow.experiment_name=ended-elsewhere"))
    running.finish_unless_ended("FAILED")  # nobody ended it: the job's own failure is recorded
    assert client.get_run(running.run_id).info.status == "FAILED"


def test_unreachable_server_warns_once_and_training_goes_on(tmp_path):
    spec = _spec(tmp_path / "w", f"mlflow.tracking_uri=http://127.0.0.1:{free_port()}")
    start = time.monotonic()
    with pytest.warns(RuntimeWarning, match="unreachable"):
        assert start_run(spec) is None
    assert time.monotonic() - start < 30  # probed once, not MLflow's minutes of retries
    assert system_metrics_spec(spec, None) is None


def test_a_failing_handle_warns_once_then_stays_quiet(area):
    run = MlflowRun(default_store(str(area / "x"))[0], "f" * 32)  # no such run
    with pytest.warns(RuntimeWarning, match="MLflow log_metrics failed"):
        run.log_metrics({"loss": 1.0}, step=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run.set_tag("a", "b")
        run.finish()


def test_system_metrics_spec(area):
    spec = _spec(area / "sm", "mlflow.system_metrics_interval=2")
    run = MlflowRun("sqlite:///x.db", "r1", "0")
    assert system_metrics_spec(spec, run) == {"tracking_uri": "sqlite:///x.db", "run_id": "r1", "interval": 2.0}
    assert system_metrics_spec(_spec(area / "sm", "mlflow.system_metrics=false"), run) is None
