"""cluster/mlflow-server.sh as a team would start it: a real server on loopback with a SQLite store and a proxied
artifact folder; the URI it prints is the one to put in ``mlflow.tracking_uri``; bad options fail before start."""
from __future__ import annotations

import os
import re
import subprocess

import psutil
import pytest

from conftest import REPO_ROOT, TeamMlflowServer

SCRIPT = REPO_ROOT / "cluster" / "mlflow-server.sh"


@pytest.mark.parametrize("args, message", [
    (["--db", "postgresql://me:secret@db.internal/mlflow"], "password in ~/.pgpass or PGPASSWORD"),
    (["--db", "mysql://db/mlflow"], "--db must be sqlite:///ABSOLUTE/PATH or postgresql://"),
    (["--bogus"], "unknown option --bogus"),
])
def test_bad_options_fail_before_starting(args, message, tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert proc.returncode == 2 and message in proc.stderr and proc.stdout == ""


@pytest.mark.slow
def test_server_on_loopback_stores_runs_and_proxies_artifacts(tmp_path):
    import mlflow

    server = TeamMlflowServer(tmp_path)
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", server.url)
        # Loopback only, as promised: every listening socket of the server's processes is on 127.0.0.1.
        procs = [psutil.Process(server.proc.pid), *psutil.Process(server.proc.pid).children(recursive=True)]
        listening = [c.laddr for p in procs for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert listening and {a.ip for a in listening} == {"127.0.0.1"}, listening

        client = mlflow.MlflowClient(tracking_uri=server.url)
        experiment = client.create_experiment("team")
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "mIoU", 61.5, step=100)
        (tmp_path / "table.txt").write_text("mIoU 61.5\n")
        client.log_artifact(run.info.run_id, str(tmp_path / "table.txt"), "evaluation")
        stored = list((tmp_path / "rayseg-mlflow" / "artifacts").rglob("table.txt"))
        assert len(stored) == 1 and stored[0].read_text() == "mIoU 61.5\n"  # the server wrote it, not the client
        assert (tmp_path / "rayseg-mlflow" / "mlflow.db").is_file()
        assert client.get_metric_history(run.info.run_id, "mIoU")[0].value == 61.5
    finally:
        server.stop()
