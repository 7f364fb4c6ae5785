"""TrainLogCallback (runs in Ray Train's controller): log.jsonl, train.log, MLflow metrics, best copy, replicas.

The callback is called directly with what Ray Train would pass; MLflow is a real local SQLite store.
"""
from __future__ import annotations

import json
import time

import pytest
import torch

from rayseg.engine.callbacks import TrainLogCallback, last_logged_iter, scalar_metrics, text_log_lines

VAL = {"aAcc": 90.0, "mIoU": 50.0, "mAcc": 60.0, "mDice": 65.0, "mFscore": 66.0, "mPrecision": 67.0,
       "mRecall": 60.0}


def test_scalar_metrics_keep_json_scalars_only():
    out = scalar_metrics({"iter": 3, "loss": 0.5, "nan": float("nan"), "per_class": {"IoU": [1.0]},
                          "saved_best": "mIoU", "flag": True})
    assert out == {"iter": 3, "loss": 0.5, "nan": None}


def test_text_lines_show_the_selected_metrics():
    record = {"iter": 4, "lr": 0.01, "time": 0.5, "loss": 1.25, "decode.acc_seg": 80.0, **VAL}
    train, val = text_log_lines(record, max_iters=10)
    assert train.startswith("Iter [4/10]\tlr: 1.000e-02, eta: 0:00:03, time: 0.500, loss: 1.2500")
    assert val == "Iter(val) [4]\taAcc: 90.00, mIoU: 50.00, mAcc: 60.00"
    _, val = text_log_lines(record, max_iters=10, metrics=("mDice", "mFscore"))
    assert val == "Iter(val) [4]\taAcc: 90.00, mAcc: 60.00, mDice: 65.00, mFscore: 66.00, mPrecision: 67.00, " \
                  "mRecall: 60.00"
    assert len(text_log_lines({"iter": 2, "loss": 1.0}, max_iters=10)) == 1  # no validation, one line
    train, _ = text_log_lines(dict(record, data_time=0.125), max_iters=10)
    assert "time: 0.500, data_time: 0.125, loss: 1.2500" in train  # MMSeg's order


def test_last_logged_iter_survives_a_cut_line(tmp_path):
    log = tmp_path / "log.jsonl"
    assert last_logged_iter(str(log)) == 0
    log.write_text('{"iter": 2}\n{"iter": 4}\n{"iter": 6, "lo')
    assert last_logged_iter(str(log)) == 4


@pytest.fixture(scope="module")
def mlflow_run(tmp_path_factory):
    from mlflow.tracking import MlflowClient

    from rayseg.tracking import MlflowRun

    uri = f"sqlite:///{tmp_path_factory.mktemp('cb_store') / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.create_run(client.create_experiment("callbacks"))
    return MlflowRun(uri, run.info.run_id), client


def test_reports_go_to_both_logs_and_mlflow_once(tmp_path, mlflow_run):
    run, client = mlflow_run
    log = tmp_path / "work" / "log.jsonl"
    cb = TrainLogCallback(str(log), run.tracking_uri, run.run_id, max_iters=6, metrics=("mDice",))
    cb.after_report(None, [{"iter": 2, "lr": 0.1, "loss": 1.0}, {"iter": 2, "lr": 0.1, "loss": 9.0}], None)
    cb.after_report(None, [{"iter": 4, "lr": 0.05, "loss": 0.5, **VAL, "per_class": {"IoU": [0.5]}}], None)
    cb.after_report(None, [{"iter": 2, "lr": 0.1, "loss": 1.0}], None)  # replayed after a restart: skipped
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["iter"] for r in records] == [2, 4]
    assert records[0]["loss"] == 1.0  # rank 0's metrics
    text = (tmp_path / "work" / "train.log").read_text()
    assert "Iter [2/6]" in text and "Iter(val) [4]\taAcc: 90.00, mAcc: 60.00, mDice: 65.00" in text
    assert "mIoU" not in text.split("Iter(val)")[1]
    # MLflow names: train/<key> for the loop's numbers, val/<metric> for validation (as jobs/test.py logs).
    history = client.get_metric_history(run.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(2, 1.0), (4, 0.5)]
    assert [m.step for m in client.get_metric_history(run.run_id, "val/mDice")] == [4]
    assert set(client.get_run(run.run_id).data.metrics) == {"train/lr", "train/loss", *(f"val/{k}" for k in VAL)}
    # A new callback over the same log (a resumed job) starts after what is already written.
    assert TrainLogCallback(str(log)).last_iter == 4


def test_held_log_records_are_written_in_order_with_their_own_times(tmp_path, mlflow_run):
    """Records the loop held back (so as not to block on Ray Train's one-slot result queue) arrive with the
    next report; each is written in order, stamped when the worker logged it."""
    from rayseg.engine.reporting import HELD_KEY, ReportPacer
    from rayseg.tracking import MlflowRun

    shared, client = mlflow_run
    run = MlflowRun(shared.tracking_uri, client.create_run(client.get_run(shared.run_id).info.experiment_id).info.run_id)
    log = tmp_path / "work" / "log.jsonl"
    cb = TrainLogCallback(str(log), run.tracking_uri, run.run_id, max_iters=8)
    pacer = ReportPacer(interval_s=2.0)
    pacer.hold({"iter": 2, "lr": 0.1, "loss": 1.0})
    pacer.hold({"iter": 4, "lr": 0.1, "loss": 0.8})
    pacer._held[0]["at"] = 1767225600.0  # 2026-01-01 00:00:00 UTC: a time train.log shows as logged
    report = pacer.with_held({"iter": 6, "lr": 0.1, "loss": 0.6})
    assert [r["metrics"]["iter"] for r in report[HELD_KEY]["held"]] == [2, 4]
    cb.after_report(None, [report, dict(report)], None)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(r["iter"], r["loss"]) for r in records] == [(2, 1.0), (4, 0.8), (6, 0.6)]
    assert all(HELD_KEY not in r for r in records)
    first = (tmp_path / "work" / "train.log").read_text().splitlines()[0]
    assert first.startswith(time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(1767225600.0)))
    history = client.get_metric_history(run.run_id, "train/loss")
    assert [m.timestamp for m in history if m.step == 2] == [1767225600000]
    assert pacer.with_held({"iter": 8})[HELD_KEY]["held"] == []  # nothing held twice


def test_best_checkpoint_is_copied_and_replicas_recorded(tmp_path):
    from ray.train import Checkpoint

    ckpt_dir = tmp_path / "run" / "iter_00000004"
    ckpt_dir.mkdir(parents=True)
    torch.save({"meta": {"iter": 4}}, ckpt_dir / "checkpoint.pt")
    (tmp_path / "work").mkdir()  # the driver creates the work dir before training starts
    cb = TrainLogCallback(str(tmp_path / "work" / "log.jsonl"), run_dir=str(tmp_path / "run"), max_iters=4)
    replicas = [{"rank": r, "weights_sha256": "ab"} for r in (0, 1)]
    cb.after_report(None, [{"iter": 4, "saved_best": "mIoU", "replica": replicas[0]},
                           {"iter": 4, "saved_best": "mIoU", "replica": replicas[1]}],
                    Checkpoint.from_directory(str(ckpt_dir)))
    kept = torch.load(tmp_path / "run" / "best_mIoU" / "checkpoint.pt", weights_only=True)
    assert kept["meta"]["iter"] == 4
    assert json.loads((tmp_path / "work" / "replicas.json").read_text()) == replicas


def test_a_log_report_waits_while_any_result_queue_is_full():
    """Ray Train's result queue holds one report; reporting into a full one blocks the training thread until
    the controller's next poll, so a log report is due only after the poll interval AND with every queue empty
    (the loop averages the busy flag across workers, so any rank's full queue holds everyone's)."""
    from rayseg.engine.reporting import ReportPacer, result_queue_busy

    pacer = ReportPacer(interval_s=2.0)
    assert not pacer.due(1.0, queue_busy=0.0)  # too early: the controller has not polled yet
    assert pacer.due(2.5, queue_busy=0.0)
    assert not pacer.due(2.5, queue_busy=1.0)  # this worker's last report is still in its queue
    assert not pacer.due(2.5, queue_busy=0.5)  # one of two workers' queues is full
    assert result_queue_busy() == 0.0  # outside a Ray Train worker there is no queue: pace by time alone


def test_a_worker_groups_first_log_record_is_reported_at_once():
    """A (re)started worker group reports its first log record without waiting for the poll interval: its
    queue is empty, and holding it would leave train.log and the driver's view of the group size waiting for
    the next report (the elastic test's hold before the last iterations waited forever on that record)."""
    from rayseg.engine.reporting import ReportPacer

    pacer = ReportPacer(interval_s=2.0)
    assert pacer.due(pacer.seconds_since_report(), queue_busy=0.0)
    pacer.with_held({"iter": 5})
    assert not pacer.due(pacer.seconds_since_report(), queue_busy=0.0)  # from now on: once per poll


def test_an_unpickled_callback_opens_mlflow_before_the_first_report(tmp_path, mlflow_run):
    """In the Train controller the callback arrives pickled; it opens MLflow there on a background thread, so
    the import and store set-up (1.5-2.5 CPU-s) do not land on the first training iterations."""
    import pickle

    from rayseg.tracking import MlflowRun

    shared, client = mlflow_run
    run = MlflowRun(shared.tracking_uri, client.create_run(client.create_experiment("warm-up")).info.run_id)
    cb = TrainLogCallback(str(tmp_path / "log.jsonl"), run.tracking_uri, run.run_id, max_iters=4)
    assert cb._run is None  # the driver's copy opens nothing
    in_controller = pickle.loads(pickle.dumps(cb))
    in_controller._warm_up.join(60)
    assert in_controller._run._client is not None
    again = pickle.loads(pickle.dumps(in_controller))  # the lock and the thread do not travel
    again._warm_up.join(60)
    again.after_report(None, [{"iter": 2, "lr": 0.1, "loss": 1.0}], None)
    assert [m.step for m in client.get_metric_history(run.run_id, "train/loss")] == [2]
    no_mlflow = pickle.loads(pickle.dumps(TrainLogCallback(str(tmp_path / "other.jsonl"))))
    assert no_mlflow._warm_up is None
