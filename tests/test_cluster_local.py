"""cluster/local.sh: a simulated N-node Ray cluster on 127.0.0.1, used as docs/cluster.md shows.

`up 2` prints an export line; with only that environment a driver sees 2 alive nodes and `ray job submit`
runs a job on the cluster (token authentication on, plain `python` finding Ray); nothing listens beyond
loopback; `down` ends every process of that cluster and leaves another local cluster running.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
LOCAL_SH = REPO_ROOT / "cluster" / "local.sh"

# What the user's shell may hold that must not leak into the test: the cluster must be reachable with the
# printed variables alone (conftest.py sets RAY_AUTH_MODE / RAY_AUTH_TOKEN for the session's own head).
_CLIENT_VARS = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _base_env(tmp_path: Path, state: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in _CLIENT_VARS}
    env["RAYSEG_LOCAL_CLUSTER"] = str(tmp_path / state)
    env["HOME"] = str(tmp_path / "home")  # no ~/.ray/auth_token to fall back on
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


def _sh(args: list, env: dict, timeout: float = 400, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _exported(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("export ")]
    assert len(lines) == 1, f"expected one export line on stdout, got:\n{stdout}"
    return dict(word.split("=", 1) for word in shlex.split(lines[0])[1:])


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        return not Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")
    except OSError:
        return False


def _pids_of(temp_dir: str) -> list:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and int(p.name) != os.getpid()
            and temp_dir in _cmdline(int(p.name)) and _alive(int(p.name))]


def _listening_addresses(pids: list) -> set:
    """Local IPv4/IPv6 addresses (hex, as in /proc/net/tcp*) of TCP sockets the given processes listen on."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                addresses.add(fields[1].rsplit(":", 1)[0])
    return addresses


# 127.0.0.1 as /proc/net/tcp writes it, and as an IPv4-mapped IPv6 address in /proc/net/tcp6
LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


@pytest.mark.slow
@pytest.mark.cluster
def test_local_sh_up_submit_down(tmp_path):
    env = _base_env(tmp_path, "state")
    other_env = _base_env(tmp_path, "other")
    up = _sh(["bash", str(LOCAL_SH), "up", "2", "1"], env)
    other_up = None
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        exported = _exported(up.stdout)
        assert exported["RAY_AUTH_MODE"] == "token"
        assert exported["RAY_ADDRESS"].startswith("127.0.0.1:")
        assert exported["RAY_API_SERVER_ADDRESS"].startswith("http://127.0.0.1:")
        token_file = Path(exported["RAY_AUTH_TOKEN_PATH"])
        assert token_file.is_file() and token_file.stat().st_mode & 0o077 == 0, "the token must be private"
        client = {**env, **exported}
        temp_dir = (tmp_path / "state" / "temp_dir").read_text().strip()

        # token authentication is on: the job server refuses a request without the token
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(exported["RAY_API_SERVER_ADDRESS"] + "/api/jobs/", timeout=30)
        assert refused.value.code in (401, 403)

        # a driver started with the printed environment sees both nodes
        probe = ("import json, ray; ray.init(); print(json.dumps([[n['Alive'], n['NodeManagerAddress'], "
                 "sorted(n['Resources'])] for n in ray.nodes()]))")
        driver = _sh([str(REPO_ROOT / ".venv" / "bin" / "python"), "-c", probe], client, timeout=180,
                     cwd=tmp_path)
        assert driver.returncode == 0, driver.stderr[-3000:]
        nodes = json.loads(driver.stdout.strip().splitlines()[-1])
        assert [alive for alive, _, _ in nodes] == [True, True], nodes
        assert {address for _, address, _ in nodes} == {"127.0.0.1"}
        assert any("local_node_1" in resources for _, _, resources in nodes), nodes

        # a job: plain `python` on the cluster's PATH has Ray, and sees the same cluster (the CLI quotes
        # the words after `--` itself)
        job = _sh([str(REPO_ROOT / ".venv" / "bin" / "ray"), "job", "submit", "--", "python", "-c",
                   "import ray; ray.init(); print('alive nodes:', sum(n['Alive'] for n in ray.nodes()))"],
                  client, timeout=300, cwd=tmp_path)
        assert job.returncode == 0, (job.stdout + job.stderr)[-3000:]
        assert "alive nodes: 2" in job.stdout, job.stdout[-3000:]

        pids = _pids_of(temp_dir)
        assert pids
        listening = _listening_addresses(pids)
        assert listening and listening <= LOOPBACK, f"listening beyond 127.0.0.1: {listening}"

        # a second local cluster, which `down` of the first must leave alone
        other_up = _sh(["bash", str(LOCAL_SH), "up", "1", "1"], other_env)
        assert other_up.returncode == 0, other_up.stdout + other_up.stderr
        other_temp_dir = (tmp_path / "other" / "temp_dir").read_text().strip()
        assert _pids_of(other_temp_dir)

        down = _sh(["bash", str(LOCAL_SH), "down"], env, timeout=120)
        assert down.returncode == 0, down.stdout + down.stderr
        assert [p for p in pids if _alive(p) and temp_dir in _cmdline(p)] == []
        assert _pids_of(temp_dir) == []
        assert not Path(temp_dir).exists() and not (tmp_path / "state").exists()
        assert _pids_of(other_temp_dir), "`down` stopped another local cluster"
        again = _sh(["bash", str(LOCAL_SH), "down"], env, timeout=60)
        assert again.returncode == 0 and "nothing to stop" in again.stderr
    finally:
        _sh(["bash", str(LOCAL_SH), "down"], env, timeout=120)
        if other_up is not None:
            _sh(["bash", str(LOCAL_SH), "down"], other_env, timeout=120)


def test_local_sh_refuses_bad_arguments(tmp_path):
    env = _base_env(tmp_path, "state")
    for args in (["up", "zero"], ["up", "0"], ["up", "2", "-1"], ["up", "2", "0"], ["sideways"]):
        proc = _sh(["bash", str(LOCAL_SH), *args], env, timeout=60)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert proc.stderr.strip(), args
    assert not (tmp_path / "state").exists(), "a refused `up` must not leave state behind"


def test_local_sh_never_deletes_a_folder_it_did_not_make(tmp_path):
    """RAYSEG_LOCAL_CLUSTER may name any folder: `up` and `down` leave one without their marker alone."""
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "temp_dir").write_text("/tmp/ray-local-notmine\n")
    (foreign / "notes.txt").write_text("keep me")
    env = {**_base_env(tmp_path, "unused"), "RAYSEG_LOCAL_CLUSTER": str(foreign)}
    up = _sh(["bash", str(LOCAL_SH), "up", "1"], env, timeout=60)
    assert up.returncode == 1 and "not a local cluster's state folder" in up.stderr, up.stderr
    down = _sh(["bash", str(LOCAL_SH), "down"], env, timeout=60)
    assert down.returncode == 0 and "nothing to stop" in down.stderr, down.stderr
    assert (foreign / "notes.txt").read_text() == "keep me" and (foreign / "temp_dir").is_file()
