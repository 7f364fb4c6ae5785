"""cluster/gpu.yaml is a valid Ray cluster-launcher config, checked offline with Ray's own validator.

`prepare_config` merges the AWS provider defaults, setup commands and per-type worker limits exactly as
`ray up` does before launching anything; `validate_config` checks the result against Ray's JSON schema.
Neither needs cloud credentials; the network is blocked here to prove it.
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
CLUSTER_YAML = REPO_ROOT / "cluster" / "gpu.yaml"
# EC2 families whose instances carry NVIDIA GPUs (used only if a worker type declares no GPU resource).
GPU_FAMILIES = ("p3", "p4d", "p4de", "p5", "p5e", "p5en", "g4dn", "g5", "g6", "g6e", "gr6")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("cluster YAML validation must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def raw() -> dict:
    with open(CLUSTER_YAML) as f:
        return yaml.safe_load(f)


@pytest.fixture
def prepared(raw) -> dict:
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


def _gpu_worker_types(config: dict) -> dict:
    head = config["head_node_type"]
    out = {}
    for name, spec in config["available_node_types"].items():
        if name == head:
            continue
        gpus = (spec.get("resources") or {}).get("GPU", 0)
        family = str(spec.get("node_config", {}).get("InstanceType", "")).split(".")[0]
        if gpus > 0 or family in GPU_FAMILIES:
            out[name] = spec
    return out


def test_validates_with_rays_own_validator(prepared):
    assert prepared["provider"]["type"] == "aws"
    assert prepared["provider"]["region"]
    assert prepared["head_node_type"] in prepared["available_node_types"]


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


def test_documents_multi_node_requirements():
    text = CLUSTER_YAML.read_text()
    assert "storage_path" in text and "s3://" in text
    assert "tracking_uri" in text
