"""Shared fixtures: one Ray head per test session (loopback only), tiny generated datasets."""
from __future__ import annotations

import multiprocessing
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pytest

# Must be set before Ray starts: keeps every Ray process on 127.0.0.1 (see DESIGN.md).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Ray 2.60 enables token authentication; give the test cluster its own token so every client the tests
# start (ray.init, the `ray` CLI, job submission) uses it regardless of ~/.ray/auth_token.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))

# This process becomes a Ray driver (the ray_head fixture calls ray.init), and a Ray driver must not be
# fork()ed (https://docs.ray.io/en/latest/ray-core/patterns/fork-new-processes.html): its gRPC client is not
# fork-safe. A fork()ed child (multiprocessing's default start method on Linux, e.g. `mp.Manager()` in
# test_metrics / test_engine_units) silently broke the driver's subscription to the GCS: it stopped hearing
# that its new actors were ALIVE, so every later Ray Data actor pool in this process hung with its actors
# ALIVE and their first calls PENDING_NODE_ASSIGNMENT (issue #9). Children are spawned instead, and a test
# that forks anyway while Ray is connected fails, naming itself (see _no_fork_while_ray_is_connected).
multiprocessing.set_start_method("spawn", force=True)
_FORKS_WHILE_RAY_CONNECTED: list = []


def _note_fork() -> None:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        frames = [f for f in traceback.extract_stack()[:-1] if "/_pytest/" not in f.filename
                  and "/pluggy/" not in f.filename]
        _FORKS_WHILE_RAY_CONNECTED.append("".join(traceback.format_list(frames[-8:])))


os.register_at_fork(before=_note_fork)  # subprocess (fork+exec without preexec_fn) does not call it

REPO_ROOT = Path(__file__).resolve().parents[1]
CAMVID_ROOT = (REPO_ROOT / ".." / "shared" / "data" / "camvid").resolve()
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_options(root: Path) -> list[str]:
    """``--cfg-options`` pointing every split of a test config at the dataset under ``root``."""
    return [f"data.{split}.data_root={root}" for split in ("train", "val", "test")]


def logged_iters(log: Path) -> list[int]:
    """The ``iter`` of every line of a run's ``log.jsonl`` ([] before it exists)."""
    import json

    if not log.is_file():
        return []
    return [json.loads(line)["iter"] for line in log.read_text().splitlines() if line.strip()]


class RayHead:
    """A Ray head started with ``ray start`` on loopback, with the job server (dashboard).

    It keeps to itself on a machine shared with other Ray clusters (the simulated cluster, other people's
    test sessions): its own Ray temp dir, and RAY_ADDRESS in its processes' environment (see
    ``own_ray_temp_dir`` and ``pin_ray_address``).
    """

    def __init__(self, tmp: Path, num_cpus: int = 4):
        self.port = free_port()
        self.dashboard_port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard_url = f"http://127.0.0.1:{self.dashboard_port}"
        self.temp_dir = own_ray_temp_dir()
        cmd = [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={self.port}",
               f"--num-cpus={num_cpus}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={self.dashboard_port}", "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
               f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=pin_ray_address(self.address))
        try:
            if proc.returncode:
                raise RuntimeError(f"`ray start` exited with {proc.returncode}:\n{(proc.stdout + proc.stderr)[-4000:]}")
            self._wait_for_dashboard()
        except BaseException:
            self.stop()
            raise

    def _wait_for_dashboard(self, timeout: float = 120) -> None:
        import urllib.error
        import urllib.request

        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=5):
                    return
            except urllib.error.HTTPError:
                return  # it answers; 401 means Ray's token authentication, which the CLI handles
            except OSError:
                time.sleep(1)
        raise RuntimeError(f"Ray dashboard did not come up at {self.dashboard_url}")

    def stop(self) -> None:
        """Stop this head's processes only: ``ray stop`` would kill every Ray cluster on the machine,
        including ones other test sessions or tools are using."""
        stop_ray_processes(self.port)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


# Two ways in which one Ray cluster on a machine disturbs another. Inside a cluster, Ray looks its own
# address up in <temp dir>/ray_current_cluster whenever more than one cluster runs on the machine, and
# every `ray start` and `cluster_utils.Cluster` rewrites that file, Ray's default /tmp/ray/ray_current_cluster
# unless told otherwise, so it names whichever cluster started last:
# - the job supervisor behind `ray job submit` hands the job's driver that address as RAY_ADDRESS (it
#   resets RAY_ADDRESS to "auto" and reads the file in its node's temp dir): a job sent to the session head
#   connected to a cluster another test session had started since, and failed with InvalidAuthToken;
# - the state API with no address (which Ray Train's PlacementGroupCleaner polls to see whether a run's
#   controller is alive) reads RAY_ADDRESS, else the file in /tmp/ray: it asked another cluster, found "no
#   such controller", and could remove the placement group of a live run.
# So each test cluster gets its own temp dir (with its own ray_current_cluster), and RAY_ADDRESS in the
# environment of its processes (not of this test process).
def own_ray_temp_dir() -> str:
    """A fresh Ray temp dir for one test cluster (short: Unix socket paths under it are limited to 107 bytes)."""
    return tempfile.mkdtemp(prefix="ray-", dir="/tmp")


def pin_ray_address(address: str) -> dict:
    """``os.environ`` plus ``RAY_ADDRESS=address``: the environment to start a test cluster's processes in."""
    return dict(os.environ, RAY_ADDRESS=address)


def ray_processes(gcs_port: int) -> list[int]:
    """PIDs of the Ray processes that belong to the cluster whose GCS listens on ``gcs_port``."""
    markers = (f"127.0.0.1:{gcs_port}".encode(), f"--gcs_server_port={gcs_port}".encode())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if any(m in cmdline for m in markers):
            pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")
    except OSError:
        return False


def stop_ray_processes(gcs_port: int, grace: float = 10.0) -> None:
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = ray_processes(gcs_port)
        for pid in pids:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + grace
        while pids and time.time() < deadline:
            pids = [p for p in pids if _alive(p)]
            time.sleep(0.2)
        if not pids:
            return


class MlflowServer:
    """A real MLflow tracking server on 127.0.0.1 with a SQLite store under ``root``; ``url`` once it answers.

    ``proxy_artifacts``: the server stores artifacts itself (``--artifacts-destination``, clients upload over
    HTTP), else clients write them straight to ``root/artifacts`` (``--default-artifact-root``).
    """

    def __init__(self, root: Path, proxy_artifacts: bool = True, timeout: float = 180):
        import urllib.request

        port = free_port()
        self.log_path = root / "server.log"
        artifacts = ["--artifacts-destination" if proxy_artifacts else "--default-artifact-root", str(root / "artifacts")]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                 "--backend-store-uri", f"sqlite:///{root}/mlflow.db", *artifacts],
                stdout=log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return
            except OSError:
                time.sleep(1)
        self.stop()
        pytest.fail(f"mlflow server did not start: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


class TeamMlflowServer:
    """The team server as ``cluster/mlflow-server.sh`` starts it (SQLite + proxied artifact folder under
    ``root/rayseg-mlflow``, 127.0.0.1), with ``url`` read from the line the script prints."""

    def __init__(self, root: Path, timeout: float = 180):
        import re
        import urllib.request

        self.root = root
        self.log_path = root / "team-server.log"
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(["bash", str(REPO_ROOT / "cluster" / "mlflow-server.sh"), "--port",
                                          str(free_port()), "--workers", "1"], stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, env={**os.environ, "HOME": str(root)})
        deadline = time.time() + timeout
        while time.time() < deadline:
            text = self.log_path.read_text()
            found = re.search(r"mlflow\.tracking_uri=(\S+)", text)
            if found:
                self.url = found.group(1)
                try:
                    with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                        return
                except OSError:
                    pass
            if self.proc.poll() is not None:
                break
            time.sleep(1)
        self.stop()
        pytest.fail(f"cluster/mlflow-server.sh did not start: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=60)


@pytest.fixture(autouse=True)
def _no_fork_while_ray_is_connected():
    """Fail the test that fork()ed this process while it was a Ray driver (see the top of this file)."""
    yield
    if _FORKS_WHILE_RAY_CONNECTED:
        where = _FORKS_WHILE_RAY_CONNECTED[-1]
        _FORKS_WHILE_RAY_CONNECTED.clear()
        pytest.fail("this test fork()ed the pytest process while it is a Ray driver, which leaves Ray's gRPC "
                    "client broken for every later test (actor pools hang); start children with "
                    "multiprocessing.get_context('spawn') or subprocess instead. Forked at:\n" + where,
                    pytrace=False)


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory):
    """One Ray head for the whole session; tests connect with ``ray.init(address=head.address)``."""
    import ray

    head = RayHead(tmp_path_factory.mktemp("ray"))
    ray.init(address=head.address)
    yield head
    ray.shutdown()
    head.stop()


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A small synthetic shapes dataset (64×64 images) in the custom img_dir/ann_dir layout."""
    from rayseg.datasets.demo import make_demo_dataset

    root = tmp_path_factory.mktemp("demo_data")
    make_demo_dataset(str(root), num_train=24, num_val=6, size=(64, 64), seed=0)
    return root


@pytest.fixture
def camvid_root() -> Path:
    if not (CAMVID_ROOT / "img_dir").is_dir():
        pytest.skip(f"CamVid not found at {CAMVID_ROOT} (the shared data folder is absent)")
    return CAMVID_ROOT
