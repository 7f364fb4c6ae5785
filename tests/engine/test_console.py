"""The training console: progress events, speed/eta from steady-state iterations, routing of Ray's output,
and (slow) what a user sees from ``jobs/train.py`` with and without ``--verbose``."""
from __future__ import annotations

import io
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from rayseg.engine.progress import (EVENT_PREFIX, ProgressEmitter, ProgressState, TrainingConsole, decode_event,
                                    encode_event, format_duration, quiet_driver_logs, verbose_requested)

TINY_CONFIG = REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml"
# What the console of a tiny run used to carry besides the user's lines (issue #10).
NOISE = ("PlacementGroupCleaner", "core_worker.cc", "exclude_resources", "Progress bars disabled",
         "execution finished", "not writable", EVENT_PREFIX.strip(), "Token authentication is enabled",
         "Creating initial MLflow database tables")


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def emitted(lines):
    return [decode_event(line) for line in lines]


# --- rank 0's emitter ---------------------------------------------------------------------------------

def test_the_first_iteration_is_not_timed():
    lines = []
    emitter = ProgressEmitter(True, write=lines.append, clock=FakeClock())
    emitter.iteration(1, 25.0)  # start-up: Ray Data's first batch
    emitter.iteration(2, 0.5, force=True)
    first, second = emitted(lines)
    assert (first["i"], first["k"], first["dt"]) == (1, 0, 0.0)
    assert (second["i"], second["k"], second["dt"]) == (2, 1, 0.5)


def test_events_are_throttled_but_carry_every_timed_iteration():
    lines, clock = [], FakeClock()
    emitter = ProgressEmitter(True, min_interval_s=1.0, write=lines.append, clock=clock)
    emitter.iteration(1, 9.0)
    for i in range(2, 6):
        clock.now += 0.2
        emitter.iteration(i, 0.25)
    assert len(lines) == 1  # iterations 2-5 came within one second of the first event
    clock.now += 0.5
    emitter.iteration(6, 0.25)
    last = emitted(lines)[-1]
    assert (last["i"], last["k"], last["dt"]) == (6, 5, 1.25)


def test_forced_events_carry_their_fields_and_a_disabled_emitter_is_silent():
    lines = []
    emitter = ProgressEmitter(True, write=lines.append, clock=FakeClock())
    emitter.iteration(1, 1.0)
    emitter.iteration(2, 1.0, force=True, log=True, loss=1.25)
    emitter.event(e="val", i=2, line="Iter(val) [2]  mIoU: 10.00", mIoU=10.0)
    assert emitted(lines)[1]["loss"] == 1.25 and emitted(lines)[1]["log"] is True
    assert emitted(lines)[2]["e"] == "val"
    quiet = []
    off = ProgressEmitter(False, write=quiet.append)
    off.iteration(1, 1.0, force=True)
    off.event(e="end")
    assert quiet == []


def test_event_lines_round_trip_and_other_lines_are_not_events():
    import numpy as np

    line = encode_event(e="it", i=3, loss=np.float32(0.5))
    assert decode_event(line) == {"e": "it", "i": 3, "loss": 0.5}
    assert decode_event("\x1b[36m(RayTrainWorker pid=1)\x1b[0m " + line)["i"] == 3
    assert decode_event("Iter [3/6]  lr: 1e-2") is None
    assert decode_event(EVENT_PREFIX + "{not json") is None


# --- the driver's state ---------------------------------------------------------------------------------

def test_eta_and_speed_come_from_steady_iterations_only():
    state = ProgressState(max_iters=100, start_iter=0, global_batch=8)
    state.record({"e": "it", "i": 1, "k": 0, "dt": 0.0})  # the start-up iteration, untimed
    assert state.eta_seconds is None and "eta: -:--:--" in state.summary()
    state.record({"e": "it", "i": 11, "k": 10, "dt": 5.0})
    assert state.sec_per_iter == pytest.approx(0.5)
    assert state.img_per_sec == pytest.approx(16.0)
    assert state.eta_seconds == pytest.approx(89 * 0.5)
    assert state.line().startswith("Iter [11/100]  ") and "16.0 img/s" in state.line()


def test_speed_follows_the_recent_window():
    state = ProgressState(max_iters=1000, global_batch=1, window=20)
    state.record({"e": "it", "i": 20, "k": 20, "dt": 20.0})  # 1 s/it
    state.record({"e": "it", "i": 40, "k": 20, "dt": 2.0})  # then 0.1 s/it
    assert state.sec_per_iter == pytest.approx(0.1)


def test_loss_miou_restart_and_end():
    state = ProgressState(max_iters=10, global_batch=2)
    state.record({"e": "it", "i": 6, "k": 5, "dt": 5.0, "loss": 0.75})
    state.record({"e": "val", "i": 6, "mIoU": 42.5})
    state.record({"e": "val", "i": 8, "mIoU": float("nan")})  # no class present: keep the last real score
    assert "loss: 0.7500" in state.summary() and "mIoU: 42.50" in state.summary()
    state.record({"e": "it", "i": 4, "k": 0, "dt": 0.0})  # the worker group restarted from iteration 4
    assert state.iter == 4 and state.eta_seconds == pytest.approx(6.0)
    assert not state.finished
    state.record({"e": "end"})
    assert state.finished


def test_format_duration():
    assert format_duration(None) == "-:--:--"
    assert format_duration(0) == "0:00:00"
    assert format_duration(3725.4) == "1:02:05"
    assert format_duration(-3) == "0:00:00"


def test_verbose_flag_and_env(monkeypatch):
    monkeypatch.delenv("RAYSEG_VERBOSE", raising=False)
    assert verbose_requested() is False
    monkeypatch.setenv("RAYSEG_VERBOSE", "1")
    assert verbose_requested() is True
    assert verbose_requested(False) is False
    monkeypatch.setenv("RAYSEG_VERBOSE", "0")
    assert verbose_requested() is False


# --- routing what Ray forwards ----------------------------------------------------------------------------

def _console(tmp_path, **kw):
    stream = io.StringIO()
    console = TrainingConsole(6, 0, 4, log_file=str(tmp_path / "ray_workers.log"), stream=stream, **kw)
    return console, stream


def _batch(lines, is_err=False, actor="RayTrainWorker"):
    return {"lines": lines, "is_err": is_err, "pid": 123, "actor_name": actor, "ip": "127.0.0.1"}


def test_events_become_plain_lines_and_stderr_goes_to_the_file(tmp_path):
    console, stream = _console(tmp_path, verbose=False, live=False)
    forwarded = []
    with console:
        console.handle_lines(_batch([encode_event(e="it", i=1, k=0, dt=0.0),
                                     encode_event(e="it", i=2, k=1, dt=0.5, log=True, loss=1.5),
                                     "a user's print inside the model"]), forwarded.append)
        console.handle_lines(_batch([encode_event(e="val", i=2, line="Iter(val) [2]  mIoU: 19.51", mIoU=19.51),
                                     encode_event(e="msg", text="Restored the training state of iteration 2")]),
                             forwarded.append)
        console.handle_lines(_batch(["core_worker.cc:2465: Actor ... max_restarts > 0"], is_err=True,
                                    actor="SplitCoordinator"), forwarded.append)
        console.handle_lines(_batch([encode_event(e="end", i=6)]), forwarded.append)
    out = stream.getvalue().splitlines()
    assert out == ["Iter [2/6]  loss: 1.5000, 8.0 img/s, eta: 0:00:02",
                   "Iter(val) [2]  mIoU: 19.51", "Restored the training state of iteration 2"]
    assert [b["lines"] for b in forwarded] == [["a user's print inside the model"]]
    assert (tmp_path / "ray_workers.log").read_text() == \
        "(SplitCoordinator pid=123) core_worker.cc:2465: Actor ... max_restarts > 0\n"


def test_raylet_notes_go_to_the_file_and_autoscaler_events_stay(tmp_path):
    console, _ = _console(tmp_path, verbose=False, live=False)
    forwarded = []
    console.handle_lines({"lines": ["WARNING: 8 PYTHON worker processes have been started"], "is_err": False,
                          "pid": "raylet"}, forwarded.append)
    console.handle_lines({"lines": ["No available node types can fulfill resource request"], "is_err": False,
                          "pid": "autoscaler"}, forwarded.append)
    assert [b["pid"] for b in forwarded] == ["autoscaler"]
    assert (tmp_path / "ray_workers.log").read_text().startswith("(pid=raylet) WARNING: 8 PYTHON")


def test_verbose_forwards_stderr(tmp_path):
    console, _ = _console(tmp_path, verbose=True)
    assert console.live is False
    forwarded = []
    console.handle_lines(_batch(["Traceback (most recent call last):"], is_err=True), forwarded.append)
    assert forwarded and not (tmp_path / "ray_workers.log").exists()


def test_the_live_bar_shows_iteration_speed_eta_and_miou(tmp_path):
    console, stream = _console(tmp_path, verbose=False, live=True)
    with console:
        console.handle_lines(_batch([encode_event(e="it", i=3, k=2, dt=1.0, loss=1.0),
                                     encode_event(e="val", i=3, line="Iter(val) [3]  mIoU: 19.51", mIoU=19.51)]),
                             lambda data: None)
        console.handle_lines(_batch([encode_event(e="end", i=6)]), lambda data: None)
    text = stream.getvalue()
    assert "Iter 3/6" in text and "8.0 img/s" in text and "eta: 0:00:02" in text and "mIoU: 19.51" in text
    assert "Iter(val) [3]  mIoU: 19.51" in text


def test_quiet_driver_logs_keeps_the_security_warning(caplog):
    quiet_driver_logs()
    logger = logging.getLogger("ray._private.authentication.authentication_token_setup")
    with caplog.at_level(logging.WARNING, logger=logger.name):
        logger.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
        logger.warning("Token authentication is disabled for this Ray cluster. Anyone with network access ...")
    assert [r.getMessage().split(".")[0] for r in caplog.records] == \
        ["Token authentication is disabled for this Ray cluster"]


# --- what a user sees ---------------------------------------------------------------------------------------

def _train_cli(demo_data: Path, work: Path, *flags: str, options: tuple = ()) -> subprocess.CompletedProcess:
    options = [f"data.{split}.data_root={demo_data}" for split in ("train", "val", "test")] + list(options)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAYSEG_VERBOSE")}
    env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    cmd = [sys.executable, str(REPO_ROOT / "jobs" / "train.py"), str(TINY_CONFIG), "--work-dir", str(work),
           *flags, "--cfg-options", *options]
    # As a user runs it: a new local Ray instance, output captured (not a terminal: plain progress lines).
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=work.parent, env=env)


@pytest.mark.slow
def test_the_console_of_a_tiny_run_is_progress_and_results_only(demo_data, tmp_path):
    proc = _train_cli(demo_data, tmp_path / "quiet")
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    for noise in NOISE:
        assert noise not in output, f"{noise!r} on the console:\n{output}"
    assert "(RayTrainWorker pid=" not in output  # progress comes from the driver, not Ray's forwarded lines
    progress = [line for line in proc.stdout.splitlines() if line.startswith("Iter [")]
    assert [line.split("]")[0] for line in progress] == ["Iter [2/6", "Iter [4/6", "Iter [6/6"]
    assert all(re.search(r"\d+\.\d img/s, eta: \d+:\d\d:\d\d", line) for line in progress), progress
    assert "mIoU: " in progress[-1]  # the last validation's score rides along
    assert any(line.startswith("Iter(val) [6]") for line in proc.stdout.splitlines())
    assert "work dir: " in proc.stdout and "log: " in proc.stdout
    assert len(output.splitlines()) <= 35, output
    # The MMSeg-style log and Ray's own reports are still written, to files.
    assert "Iter [6/6]" in (tmp_path / "quiet" / "train.log").read_text()


@pytest.mark.slow
def test_verbose_shows_what_ray_prints(demo_data, tmp_path):
    proc = _train_cli(demo_data, tmp_path / "loud", "--verbose",
                      options=("runner.max_iters=2", "evaluation.interval=0", "checkpoint_config.interval=2",
                               "log_config.interval=1"))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert re.search(r"\((TrainController|SplitCoordinator|DatasetManager|MapWorker)[^)]* pid=\d+\)", output), output
    assert "Iter [2/2]" in proc.stdout
    assert not (tmp_path / "loud" / "ray_workers.log").exists()
