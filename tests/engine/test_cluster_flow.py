"""docs/cluster.md's commands typed as a user types them, against a head started as a user starts it.

The head is ``ray start --head`` with Ray's defaults apart from loopback addresses and free ports, in an
environment like a user's shell: HOME is the test's own (so ``~/.ray/auth_token`` is the token of this head,
and token authentication is on, as after any earlier local run), no ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN``
(conftest's are removed) and a PATH without the venv: the venv's ``ray`` and ``python`` are named by path,
as the docs say. Only this head's processes are stopped at the end.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from conftest import BIN, REPO_ROOT, free_port, stop_ray_processes

pytestmark = pytest.mark.slow

TINY = "tests/configs/tiny_shapes.yaml"
# One worker on half a CPU, no validation: with its decode actor (0.5) and Ray Data's read task (1) the job
# needs 2 logical CPUs, what `ray start --head` gives on the smallest (2-core) machine this runs on.
FITS_TWO_CPUS = ["scaling.num_workers=1", "'scaling.resources_per_worker={CPU: 0.5}'", "evaluation.interval=0",
                 "mlflow.system_metrics=false"]


def _user_env(home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_AUTH_", "RAY_ADDRESS", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI"))}
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and Path(p).resolve() != BIN.resolve()]
    env.update(HOME=str(home), PATH=os.pathsep.join(path or ["/usr/bin", "/bin"]), **extra)
    env.pop("PYTHONPATH", None)
    return env


class UserHead:
    """``ray start --head`` as a user runs it (token auth on via the token in HOME), on loopback."""

    def __init__(self, home: Path):
        self.home = home
        self.port, self.dashboard_port = free_port(), free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"
        env = _user_env(home)
        # The state of a machine where rayseg or Ray ran before: any local ray.init() writes this token.
        subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True,
                       capture_output=True, timeout=120)
        started = subprocess.run(
            [str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={self.port}",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
             # Free ports instead of the fixed defaults, which another head on this machine may hold.
             f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}"],
            env=env, capture_output=True, text=True, timeout=240)
        if started.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed:\n{started.stdout}\n{started.stderr}")
        assert "Token authentication is enabled" in started.stdout + started.stderr
        self._wait_for_job_agent(dict(env, RAY_AUTH_MODE="token"))

    def _wait_for_job_agent(self, env: dict, timeout: float = 240) -> None:
        """The job agent comes up a little after `ray start` returns; until then submissions get "No available
        agent to submit job" (a user retries). Submitting a no-op job until one is accepted waits for it."""
        deadline = time.monotonic() + timeout
        while True:
            proc = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", self.dashboard, "--no-wait",
                                   "--", "true"], env=env, capture_output=True, text=True, timeout=120)
            if proc.returncode == 0:
                return
            if "No available agent" not in proc.stdout + proc.stderr or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the job agent did not come up:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
            time.sleep(3)

    def stop(self) -> None:
        stop_ray_processes(self.port)


@pytest.fixture(scope="module")
def user_head(tmp_path_factory):
    head = UserHead(tmp_path_factory.mktemp("home"))
    yield head
    head.stop()


def _sh(command: str, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``command`` as typed in a shell in the repository root."""
    return subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _data_options(root: Path) -> str:
    return " ".join(f"data.{s}.data_root={shlex.quote(str(root))}" for s in ("train", "val", "test"))


def _job_id(output: str) -> str:
    found = re.search(r"Job '(raysubmit_\w+)'", output)
    assert found, output
    return found.group(1)


def test_job_submit_as_documented_trains_and_keeps_the_outputs(user_head, demo_data, tmp_path):
    env = _user_env(user_head.home, RAY_AUTH_MODE="token")  # docs/cluster.md: what the `ray` CLI needs
    work = tmp_path / "work_dirs" / "tiny"
    start = time.monotonic()
    # docs/cluster.md: ray job submit --address … --working-dir . -- "$PWD/.venv/bin/python" jobs/train.py …
    submitted = _sh(f'.venv/bin/ray job submit --address {user_head.dashboard} --working-dir . -- '
                    f'"$PWD/.venv/bin/python" jobs/train.py {TINY} --work-dir {work} '
                    f'--cfg-options {_data_options(demo_data)} {" ".join(FITS_TWO_CPUS)}', env)
    took = time.monotonic() - start
    out = submitted.stdout + submitted.stderr
    assert submitted.returncode == 0, out
    assert "succeeded" in out and "Iter [6/6]" in out, out
    logs = _sh(f".venv/bin/ray job logs --address {user_head.dashboard} {_job_id(out)}", env, timeout=120)
    assert logs.returncode == 0 and "Iter [6/6]" in logs.stdout and f"work dir: {work}" in logs.stdout, logs
    # Outputs where the user said, not in Ray's package copy; the MLflow store beside the work dir.
    assert (work / "latest.pth").is_file() and (work / "log.jsonl").is_file()
    assert (tmp_path / "work_dirs" / "mlflow.db").is_file()
    print(f"job submit → finished: {took:.0f} s")


def test_relative_paths_under_a_job_are_refused_in_one_line(user_head):
    env = _user_env(user_head.home, RAY_AUTH_MODE="token")
    # The README's bare form: data_root data/demo (relative, and data/ is not uploaded), default work dir.
    submitted = _sh(f'.venv/bin/ray job submit --address {user_head.dashboard} --working-dir . -- '
                    f'"$PWD/.venv/bin/python" jobs/train.py {TINY}', env, timeout=300)
    out = submitted.stdout + submitted.stderr
    assert "failed" in out, out
    logs = _sh(f".venv/bin/ray job logs --address {user_head.dashboard} {_job_id(out)}", env, timeout=120).stdout
    errors = [line for line in logs.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "data.train.data_root: 'data/demo' is a relative path" in errors[0], logs
    assert "absolute path" in errors[0] and "Traceback" not in logs
    assert "_ray_pkg_" in errors[0]


def test_driver_finds_the_token_and_refuses_a_job_the_cluster_cannot_fit(user_head, demo_data, tmp_path):
    """``RAY_ADDRESS=… python jobs/train.py`` without RAY_AUTH_MODE: the token in HOME is used; a job that needs
    more CPUs than the head has fails in one line naming the keys, instead of hanging."""
    env = _user_env(user_head.home, RAY_ADDRESS=user_head.address)
    workers = os.cpu_count() or 2  # `ray start --head` gives the head one CPU per core
    start = time.monotonic()
    proc = _sh(f'"$PWD/.venv/bin/python" jobs/train.py {TINY} --work-dir {tmp_path / "w"} --cfg-options '
               f'{_data_options(demo_data)} scaling.num_workers={workers}', env, timeout=300)
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "has" in errors[0] and "CPUs but this job needs" in errors[0] and "to start" in errors[0], proc.stderr
    for key in ("scaling.num_workers", "scaling.resources_per_worker.CPU", "data.workers_per_gpu", "--num-cpus"):
        assert key in errors[0]
    assert "InvalidAuthToken" not in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "w").exists()  # refused before the work dir or an MLflow run exists
    assert took < 180, took  # model check + Ray connect (slow on a loaded 2-core machine); no waiting


@pytest.mark.parametrize("token_env", [{}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}],
                         ids=["no-token", "wrong-token"])
def test_driver_without_the_token_fails_in_one_line(user_head, demo_data, tmp_path, token_env):
    env = _user_env(tmp_path / "elsewhere", RAY_ADDRESS=user_head.address, **token_env)  # no ~/.ray/auth_token
    start = time.monotonic()
    proc = _sh(f'"$PWD/.venv/bin/python" jobs/train.py {TINY} --work-dir {tmp_path / "w"} --cfg-options '
               f'{_data_options(demo_data)} {" ".join(FITS_TWO_CPUS)}', env, timeout=300)
    took = time.monotonic() - start
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: the Ray cluster at 127.0.0.1:") and len(proc.stderr.splitlines()) == 1, \
        proc.stderr
    assert "RAY_AUTH_MODE=token" in proc.stderr and "RAY_AUTH_TOKEN" in proc.stderr
    assert ("refused" if token_env else "no token was found") in proc.stderr
    assert took < 180, took  # the model check, then one probe: no 20 s of retries


def test_first_batch_timeout_instead_of_a_hang(user_head):
    """A stream that can never be scheduled (here: a step asking for more CPUs than exist, the same stall as
    read tasks finding no CPU) ends in a DataError naming the key, after the stated time."""
    script = (
        "import os, sys, time, torch, ray\n"
        "from rayseg.engine.loop import _BatchStream\n"
        "from rayseg.errors import DataError\n"
        "from rayseg.utils.ray_session import connect_ray, quiet_ray_data\n"
        "connect_ray(); quiet_ray_data()\n"
        "ds = ray.data.range(8).map_batches(lambda b: {'img': b['id'].astype('uint8'), "
        "'gt_semantic_seg': b['id'].astype('uint8')}, num_cpus=256)\n"
        "t = time.monotonic()\n"
        "try:\n"
        "    _BatchStream(ds.iterator(), 2, torch.device('cpu'), first_batch_timeout_s=5).next(0)\n"
        "    print('GOT A BATCH')\n"
        "except DataError as exc:\n"
        "    print(f'DataError after {time.monotonic() - t:.1f} s: {exc}')\n"
        "sys.stdout.flush(); os._exit(0)\n")
    env = _user_env(user_head.home, RAY_ADDRESS=user_head.address)
    proc = subprocess.run([str(BIN / "python"), "-c", script], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=180)
    found = re.search(r"DataError after ([\d.]+) s: (.*)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    assert 5 <= float(found.group(1)) < 30
    assert "data.first_batch_timeout_s" in found.group(2) and "scaling.num_workers" in found.group(2)


def test_the_system_python_says_which_python_to_use(tmp_path):
    """`ray job submit -- python jobs/train.py` on a head whose `python` is not the venv's."""
    system = next((p for p in ("/usr/bin/python3", "/bin/python3") if Path(p).is_file()), None)
    if system is None or subprocess.run([system, "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip("no system python without torch here")
    proc = subprocess.run([system, "jobs/train.py", TINY], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60, env=_user_env(tmp_path))
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: {system} has no module"), proc.stderr
    assert ".venv/bin/python" in proc.stderr and len(proc.stderr.splitlines()) == 1
