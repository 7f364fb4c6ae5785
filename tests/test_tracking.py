"""MLflow tracking on a real local store (SQLite in tmp_path): store choice, run creation, resume, failures."""
from __future__ import annotations

import time
import warnings

import pytest

from conftest import REPO_ROOT, free_port
from rayseg.config import load_config
from rayseg.spec.resolve import resolve_run
from rayseg.tracking import (MlflowRun, default_store, resume_run, run_url, start_run, system_metrics_spec,
                             tracking_store, ui_command)

TINY = str(REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml")


@pytest.fixture(scope="module")
def area(tmp_path_factory):
    """One folder for the module: its work dirs share one mlflow.db (creating a store takes seconds)."""
    return tmp_path_factory.mktemp("tracking")


def _spec(work_dir, *options):
    return resolve_run(load_config(TINY, list(options)), work_dir=str(work_dir), config_path=TINY)


def test_store_choice(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri, root = tracking_store(None, str(tmp_path / "runs" / "a"))
    assert uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert root == f"file://{tmp_path / 'runs' / 'mlartifacts'}"
    assert (uri, root) == default_store(str(tmp_path / "runs" / "a"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert tracking_store(None, str(tmp_path)) == ("http://127.0.0.1:5999", None)
    assert tracking_store("http://example:1", str(tmp_path)) == ("http://example:1", None)  # the config wins
    assert ui_command("http://h:5000") == "open http://h:5000"
    assert ui_command(uri).startswith("mlflow ui --backend-store-uri sqlite:///")
    assert run_url(uri, "3", "abc") == "http://127.0.0.1:5000/#/experiments/3/runs/abc"


def test_start_run_logs_params_and_tags(area, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = _spec(area / "first", "mlflow.tags={team: seg}", "mlflow.experiment_name=tracking-test")
    run = start_run(spec)
    assert run is not None and run.tracking_uri == spec.tracking.tracking_uri
    client = MlflowClient(tracking_uri=run.tracking_uri)
    got = client.get_run(run.run_id)
    assert got.info.run_name == "first"  # the work dir's name without mlflow.run_name
    assert got.data.params["runner.max_iters"] == "6" and got.data.params["work_dir"] == str(area / "first")
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
