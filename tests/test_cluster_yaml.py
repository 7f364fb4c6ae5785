"""cluster/gpu.yaml (AWS) and cluster/gcp-gpu.yaml (GCP) are valid Ray cluster-launcher configs, checked offline.

`prepare_config` merges the provider defaults (a YAML file shipped with Ray: ray/autoscaler/<provider>/
defaults.yaml), setup commands and per-type worker limits exactly as `ray up` does before launching anything;
`validate_config` checks the result against Ray's JSON schema. Neither contacts the cloud (the provider's own
bootstrap, which creates key pairs, service accounts and firewall rules, runs later in `ray up`); the network
is blocked here to prove it.
"""
from __future__ import annotations

import copy
import re
import socket
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO_ROOT = Path(__file__).resolve().parents[1]
LAUNCHER_FILES = {"aws": REPO_ROOT / "cluster" / "gpu.yaml", "gcp": REPO_ROOT / "cluster" / "gcp-gpu.yaml"}
# EC2 families whose instances carry NVIDIA GPUs (used only if a worker type declares no GPU resource).
GPU_FAMILIES = ("p3", "p4d", "p4de", "p5", "p5e", "p5en", "g4dn", "g5", "g6", "g6e", "gr6")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("cluster YAML validation must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(params=sorted(LAUNCHER_FILES), scope="module")
def provider(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def path(provider) -> Path:
    return LAUNCHER_FILES[provider]


@pytest.fixture(scope="module")
def raw(path) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def _prepare(raw: dict) -> dict:
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


@pytest.fixture
def prepared(raw) -> dict:
    return _prepare(raw)


@pytest.fixture
def aws() -> dict:
    return _prepare(yaml.safe_load(LAUNCHER_FILES["aws"].read_text()))


@pytest.fixture
def gcp() -> dict:
    return _prepare(yaml.safe_load(LAUNCHER_FILES["gcp"].read_text()))


def _has_gpus(spec: dict) -> bool:
    if (spec.get("resources") or {}).get("GPU", 0) > 0:
        return True
    node = spec.get("node_config", {})
    family = str(node.get("InstanceType", "")).split(".")[0]
    return family in GPU_FAMILIES or bool(node.get("guestAccelerators"))


def _gpu_worker_types(config: dict) -> dict:
    head = config["head_node_type"]
    return {name: spec for name, spec in config["available_node_types"].items() if name != head and _has_gpus(spec)}


def _cpu_worker_types(config: dict) -> dict:
    head = config["head_node_type"]
    return {name: spec for name, spec in config["available_node_types"].items()
            if name != head and not _has_gpus(spec)}


def _active_lines(text: str) -> str:
    """The YAML without its comments (a commented-out alternative is documentation, not configuration)."""
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def test_validates_with_rays_own_validator(prepared, provider):
    assert prepared["provider"]["type"] == provider
    assert prepared["provider"]["region"]
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # our node types replace the provider's example ones (defaults are merged key by key at the top level)
    assert not {"ray_head_default", "ray_worker_small"} & set(prepared["available_node_types"])


def test_validator_is_not_vacuous(raw):
    bad = copy.deepcopy(raw)
    bad["available_node_types"][bad["head_node_type"]]["not_a_field"] = 1
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(bad))


def test_docker_image_matches_installed_ray_and_python(prepared):
    image = prepared["docker"]["image"]
    m = re.fullmatch(r"rayproject/ray:(?P<ver>\d+\.\d+\.\d+)-py(?P<py>3\d+)-(?P<plat>gpu|cu\d+)", image)
    assert m, f"expected rayproject/ray:<version>-py3XX-gpu, got {image!r} (rayproject/ray-ml is discontinued)"
    assert m["ver"] == ray.__version__, f"image Ray {m['ver']} != installed Ray {ray.__version__}"
    assert m["py"] == f"{sys.version_info.major}{sys.version_info.minor}"
    assert prepared["docker"].get("container_name")


def test_head_takes_no_work(prepared):
    head = prepared["available_node_types"][prepared["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "head must advertise 0 CPUs so training lands on GPU workers"
    assert not head["resources"].get("GPU")
    assert head["max_workers"] == 0


def test_gpu_worker_type(prepared):
    workers = _gpu_worker_types(prepared)
    assert workers, "no worker type with GPUs"
    for name, spec in workers.items():
        assert spec["min_workers"] == 0, name
        assert 1 <= spec["max_workers"] <= prepared["max_workers"], name
        declared = (spec.get("resources") or {}).get("GPU")
        if declared is not None:
            assert declared >= 1, name


def test_cpu_preprocessing_worker_type(prepared):
    """An autoscaling CPU-only type for Ray Data, with its resources declared (the autoscaler must know what
    a node adds without asking the cloud) and scaled from zero."""
    workers = _cpu_worker_types(prepared)
    assert workers, "no CPU-only worker type for Ray Data preprocessing"
    for name, spec in workers.items():
        assert spec["resources"].get("CPU", 0) >= 4, f"{name}: declare its CPUs in resources"
        assert not spec["resources"].get("GPU"), name
        assert spec["min_workers"] == 0, f"{name}: must scale from zero"
        assert 1 <= spec["max_workers"] <= prepared["max_workers"], name


def test_aws_spot_gpu_worker_type(aws):
    prepared = aws
    spot = {name: spec for name, spec in _gpu_worker_types(prepared).items()
            if spec["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"}
    assert spot, "no GPU worker type with InstanceMarketOptions: {MarketType: spot}"
    on_demand = {name for name, spec in _gpu_worker_types(prepared).items() if name not in spot}
    assert on_demand, "keep an on-demand GPU type beside the spot one"
    for name, spec in spot.items():
        assert spec["min_workers"] == 0, name
        assert spec["resources"].get("GPU", 0) >= 1, name


def test_gcp_gpu_workers_have_accelerators_and_terminate_on_maintenance(gcp):
    prepared = gcp
    assert prepared["provider"]["project_id"], "project_id must be set (a placeholder marked CHANGE)"
    for name, spec in _gpu_worker_types(prepared).items():
        node = spec["node_config"]
        accelerators = node.get("guestAccelerators") or []
        assert accelerators and all(a["acceleratorCount"] >= 1 for a in accelerators), name
        assert sum(a["acceleratorCount"] for a in accelerators) == spec["resources"]["GPU"], name
        # a mapping, as the Compute Engine API expects (ray-project/ray#46248)
        assert isinstance(node.get("scheduling"), dict), f"{name}: scheduling must be a mapping"
        assert node["scheduling"].get("onHostMaintenance") == "TERMINATE", name


def test_dashboard_listens_on_loopback_only(prepared, path):
    """Secure by default: the head's dashboard/job server is reached through `ray dashboard`'s ssh tunnel."""
    head_cmds = " ".join(prepared["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmds
    assert "0.0.0.0" not in head_cmds
    text = path.read_text()
    assert "0.0.0.0" not in _active_lines(text)
    assert "--dashboard-host=0.0.0.0" in text, "keep the commented alternative for users who ask for it"


def test_setup_installs_the_repo_on_every_node(prepared):
    mounts = prepared["file_mounts"]
    remote = [r for r, local in mounts.items() if (REPO_ROOT / local).resolve() == REPO_ROOT]
    assert len(remote) == 1, f"the repository root must be uploaded by file_mounts, got {mounts}"
    assert (REPO_ROOT / "pyproject.toml").is_file()
    install = re.compile(r"pip install (-e )?" + re.escape(remote[0].rstrip("/")) + r"/?(\s|$)")
    for key in ("head_setup_commands", "worker_setup_commands"):  # setup_commands merged in by prepare_config
        assert any(install.search(cmd) for cmd in prepared[key]), f"{key} does not pip-install {remote[0]}"
    excluded = set(prepared["rsync_exclude"]) | set(prepared["rsync_filter"])
    assert {"/.venv", "/data", "/work_dirs"} <= excluded or ".gitignore" in excluded


def test_aws_and_gcp_upload_and_set_up_the_same_way(aws, gcp):
    for key in ("file_mounts", "rsync_exclude", "rsync_filter", "worker_start_ray_commands"):
        assert aws[key] == gcp[key], key
    assert aws["docker"]["image"] == gcp["docker"]["image"]
    assert aws["setup_commands"][0] == gcp["setup_commands"][0]


def test_documents_multi_node_requirements(path):
    text = path.read_text()
    assert "storage_path" in text and re.search(r"(s3|gs)://", text)
    assert "tracking_uri" in text
