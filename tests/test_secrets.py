"""Credentials come only from the environment and never reach anything rayseg writes: a config that carries one
is refused (naming the key, not the secret), and a training run with secret-looking variables in its environment
leaves none of them in its work dir, its MLflow store and artifacts, its console output or the Ray session logs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from secrets import token_hex

import pytest

from conftest import REPO_ROOT, data_options

from rayseg.config import load_config
from rayseg.errors import ConfigError

TINY_CONFIG = REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml"
# Made afresh for each session, so the values appear nowhere but in the environment of the run under test (not in
# this file, which a `ray job submit --working-dir .` elsewhere in the session copies into the Ray session's files).
SECRETS = {name: f"{prefix}{token_hex(12)}" for name, prefix in [
    ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI"), ("AWS_ACCESS_KEY_ID", "AKIA"), ("MLFLOW_TRACKING_PASSWORD", "mlflow-"),
    ("GOOGLE_APPLICATION_CREDENTIALS_JSON", "gcp-"), ("HF_TOKEN", "hf_")]}


@pytest.mark.parametrize("option, key, hint", [
    ("mlflow.tracking_uri=https://alice:hunter2-secret@mlflow.example.com", "mlflow.tracking_uri",
     "MLFLOW_TRACKING_USERNAME"),
    ("storage_path=s3://AKIAX:hunter2-secret@bucket/runs", "storage_path", "AWS_SECRET_ACCESS_KEY"),
    ("load_from=http://bob:hunter2-secret@files.example.com/w.pth", "load_from", "MLFLOW_TRACKING_USERNAME"),
])
def test_a_password_in_a_config_is_refused_without_echoing_it(option, key, hint):
    with pytest.raises(ConfigError) as err:
        load_config(str(TINY_CONFIG), [option])
    message = str(err.value)
    assert f"{key} holds a" in message and hint in message and "hunter2" not in message


def test_account_names_without_passwords_are_fine():
    cfg = load_config(str(TINY_CONFIG), ["mlflow.tracking_uri=http://alice@mlflow.example.com:5000"])
    assert cfg["mlflow"]["tracking_uri"] == "http://alice@mlflow.example.com:5000"


def test_train_job_refuses_it_before_anything_starts(tmp_path):
    proc = subprocess.run([sys.executable, "jobs/train.py", str(TINY_CONFIG), "--work-dir", str(tmp_path / "w"),
                           "--cfg-options", "mlflow.tracking_uri=http://u:hunter2-secret@127.0.0.1:9"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert proc.returncode == 2 and "mlflow.tracking_uri holds a http:// URI with a password" in proc.stderr
    assert "hunter2" not in proc.stdout + proc.stderr and not (tmp_path / "w").exists()


def _files(root: Path, limit: int = 64 << 20):
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.stat().st_size < limit:
            yield path


@pytest.mark.slow
def test_secrets_in_the_environment_reach_nothing_written(ray_head, demo_data, tmp_path):
    work = tmp_path / "run"
    store = tmp_path / "mlflow"
    store.mkdir()
    env = dict(os.environ, RAY_ADDRESS=ray_head.address, **SECRETS)
    proc = subprocess.run([sys.executable, "jobs/train.py", str(TINY_CONFIG), "--work-dir", str(work),
                           "--cfg-options", *data_options(demo_data), "runner.max_iters=4",
                           "checkpoint_config.interval=2", "evaluation.interval=4",
                           f"mlflow.tracking_uri=sqlite:///{store}/mlflow.db"],
                          capture_output=True, text=True, cwd=REPO_ROOT, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (work / "latest.pth").is_file() and any(store.iterdir())

    places = [work, store, Path(ray_head.temp_dir)]
    leaks = []
    scanned = 0
    for place in places:
        for path in _files(place):
            data = path.read_bytes()
            scanned += 1
            leaks += [f"{name} in {path}" for name, value in SECRETS.items() if value.encode() in data]
    leaks += [f"{name} in the console output" for name, value in SECRETS.items()
              if value in proc.stdout + proc.stderr]
    assert scanned > 10 and not leaks, leaks
    # The scan can find things: the run's own params are in the store it searched.
    assert any(b"runner.max_iters" in p.read_bytes() for p in _files(store))
