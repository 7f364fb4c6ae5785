"""cluster/kuberay/: the RayCluster / RayJob manifests and the Dockerfile of their image, checked offline.

The manifests are validated against a compact schema of the KubeRay ray.io/v1 CRDs
(tests/fixtures/kuberay_schema.json; its description names the CRD commit the fields come from), then for
what a schema cannot say: image tags that name the pinned Ray version, resources that make sense for Ray
(head advertises no CPUs, GPU limits = requests, workers have CPUs), and entrypoints that name job scripts,
configs and config keys that exist in this repository.
"""
from __future__ import annotations

import copy
import json
import re
import shlex
import sys
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
KUBERAY = REPO_ROOT / "cluster" / "kuberay"
MANIFESTS = sorted(KUBERAY.glob("*.yaml"))
SCHEMA = json.loads((REPO_ROOT / "tests" / "fixtures" / "kuberay_schema.json").read_text())
PY = f"py{sys.version_info.major}{sys.version_info.minor}"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _errors(doc: dict) -> list:
    validator = jsonschema.Draft202012Validator(SCHEMA)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def _cluster_specs() -> dict:
    """Every RayCluster spec in the manifests: a RayCluster's spec and each RayJob's rayClusterSpec."""
    out = {}
    for path in MANIFESTS:
        doc = _load(path)
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"].get("rayClusterSpec")
        if spec is not None:
            out[path.name] = spec
    return out


def _jobs() -> dict:
    return {p.name: _load(p) for p in MANIFESTS if _load(p)["kind"] == "RayJob"}


def _images(node) -> list:
    """Every value of an ``image`` key anywhere in a parsed manifest."""
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "image"] + [i for v in node.values() for i in _images(v)]
    if isinstance(node, list):
        return [i for v in node for i in _images(v)]
    return []


def _workdir() -> str:
    workdirs = re.findall(r"^WORKDIR\s+(\S+)", (KUBERAY / "Dockerfile").read_text(), re.M)
    assert workdirs, "the Dockerfile sets no WORKDIR"
    return workdirs[-1]


def test_the_expected_manifests_exist():
    assert {p.name for p in MANIFESTS} >= {"raycluster.yaml", "rayjob-train.yaml", "rayjob-tune.yaml"}
    kinds = sorted(_load(p)["kind"] for p in MANIFESTS)
    assert kinds.count("RayCluster") == 1 and kinds.count("RayJob") >= 2


def test_schema_names_its_source_and_is_a_valid_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert re.search(r"ray\.io_rayjobs\.yaml at commit [0-9a-f]{40}", SCHEMA["description"])


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_matches_the_kuberay_schema(path):
    assert _errors(_load(path)) == []


@pytest.mark.parametrize("mutate, where", [
    (lambda d: _spec(d)["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}), "rayStartParams/num-cpus"),
    (lambda d: _spec(d)["workerGroupSpecs"][0].update(maxReplicas="4"), "maxReplicas"),
    (lambda d: _spec(d)["workerGroupSpecs"][0].update(replica=1), "workerGroupSpecs/0"),
    (lambda d: _spec(d)["workerGroupSpecs"][0].pop("groupName"), "workerGroupSpecs/0"),
    (lambda d: _container(d)["resources"]["limits"].update(cpu="two"), "limits/cpu"),
    (lambda d: _container(d).pop("name"), "containers/0"),
    (lambda d: d["spec"].update(shutdownAfterJobFinishes="true"), "shutdownAfterJobFinishes"),
    (lambda d: d["spec"].update(ttlSecondsAfterFinished=1.5), "ttlSecondsAfterFinished"),
    (lambda d: d["spec"].update(submissionMode="K8sMode"), "submissionMode"),
    (lambda d: d["spec"].update(entrypoint=["python", "jobs/train.py"]), "entrypoint"),
    (lambda d: d.update(apiVersion="ray.io/v1alpha1"), "apiVersion"),
], ids=["num-cpus-int", "maxReplicas-str", "unknown-field", "no-groupName", "bad-quantity", "no-container-name",
        "shutdown-str", "ttl-float", "bad-submissionMode", "entrypoint-list", "old-apiVersion"])
def test_schema_rejects_wrong_fields(mutate, where):
    """The schema is not vacuous: each of these edits of a valid RayJob is refused at the edited field."""
    doc = copy.deepcopy(_load(KUBERAY / "rayjob-train.yaml"))
    mutate(doc)
    errors = _errors(doc)
    assert errors and any(where in e for e in errors), errors


def _spec(job: dict) -> dict:
    return job["spec"]["rayClusterSpec"]


def _container(job: dict) -> dict:
    return _spec(job)["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]


def test_every_image_names_the_pinned_ray_version():
    """Every image: field (manifests), the Dockerfile's base and rayVersion match the installed (pinned) Ray."""
    pinned = re.search(r'"ray\[[^\]]*\]==([\d.]+)"', (REPO_ROOT / "pyproject.toml").read_text())
    assert pinned and pinned[1] == ray.__version__
    version = re.escape(ray.__version__)
    seen = 0
    for path in MANIFESTS:
        text = path.read_text()
        images = _images(_load(path))
        # the parsed fields are all the image: lines of the file (none hidden in an unusual place)
        assert len(images) == len(re.findall(r"^\s*(- )?image:", text, re.M)), path.name
        for image in images:
            seen += 1
            tag = image.rsplit(":", 1)[-1]
            assert re.fullmatch(rf"rayproject/ray:{version}-{PY}-gpu", image) or \
                re.search(rf"(^|-)ray{version}-{PY}-gpu$", tag), \
                f"{path.name}: image {image!r} does not name Ray {ray.__version__} and {PY}"
    assert seen >= 9  # head + 2 worker groups, in the RayCluster and in both RayJobs
    for name, spec in _cluster_specs().items():
        assert spec["rayVersion"] == ray.__version__, name
    base = re.findall(r"^FROM\s+(\S+)", (KUBERAY / "Dockerfile").read_text(), re.M)
    assert base == [f"rayproject/ray:{ray.__version__}-{PY}-gpu"]


def test_rayjobs_run_the_clusters_of_raycluster_yaml():
    """One cluster layout: the RayJobs' own clusters are raycluster.yaml's (edit one, edit all)."""
    cluster = _load(KUBERAY / "raycluster.yaml")["spec"]
    for name, job in _jobs().items():
        assert job["spec"]["rayClusterSpec"] == cluster, f"{name}: rayClusterSpec differs from raycluster.yaml"


@pytest.mark.parametrize("name", sorted(_cluster_specs()))
def test_resources_are_consistent(name):
    spec = _cluster_specs()[name]
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0", "the head must advertise 0 CPUs (no work lands on it)"
    head_limits = head["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in head_limits, "the head needs no GPU"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu_groups, cpu_groups = [], []
    for group_name, group in groups.items():
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], group_name
        assert group["maxReplicas"] >= 1, group_name
        container = group["template"]["spec"]["containers"][0]
        limits, requests = container["resources"]["limits"], container["resources"]["requests"]
        assert float(limits["cpu"]) > 0, f"{group_name}: workers need CPUs (Ray reads them from the limits)"
        gpus = limits.get("nvidia.com/gpu", 0)
        # Kubernetes requires GPU requests == limits; keeping cpu/memory equal too gives Guaranteed QoS
        assert requests.get("nvidia.com/gpu", 0) == gpus, f"{group_name}: GPU requests != limits"
        assert requests == limits, f"{group_name}: requests != limits"
        (gpu_groups if int(gpus) > 0 else cpu_groups).append(group_name)
        # ray start must not be told other numbers than the container has
        assert "num-gpus" not in group["rayStartParams"] and "num-cpus" not in group["rayStartParams"], group_name
    assert gpu_groups, "no GPU worker group"
    assert cpu_groups, "no CPU worker group for Ray Data preprocessing"
    assert spec.get("enableInTreeAutoscaling") is True
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", "the head service must not be exposed outside"


def _entrypoint(job: dict) -> tuple:
    """(directory the entrypoint cds to, argv of the python command) of a RayJob."""
    parts = [shlex.split(p) for p in job["spec"]["entrypoint"].split("&&")]
    assert len(parts) == 2 and parts[0][0] == "cd" and len(parts[0]) == 2, job["spec"]["entrypoint"]
    return parts[0][1], parts[1]


def _options(argv: list) -> list:
    start = argv.index("--cfg-options") + 1
    end = next((i for i in range(start, len(argv)) if argv[i].startswith("--")), len(argv))
    return argv[start:end]


@pytest.mark.parametrize("name", sorted(_jobs()))
def test_rayjob_entrypoint_names_files_that_exist(name):
    from rayseg.config import load_config

    job = _jobs()[name]
    workdir, argv = _entrypoint(job)
    assert workdir == _workdir(), f"{name}: the entrypoint must cd to the image's copy of the repository"
    assert argv[0] == "python" and argv[1] in ("jobs/train.py", "jobs/tune.py"), argv[:2]
    assert (REPO_ROOT / argv[1]).is_file()
    config = REPO_ROOT / argv[2]
    assert config.is_file(), f"{name}: {argv[2]} does not exist"
    work_dir = argv[argv.index("--work-dir") + 1]
    assert work_dir.startswith("/mnt/shared/"), f"{name}: the work dir must be on the shared volume"
    options = _options(argv)
    assert "scaling.use_gpu=true" in options
    if argv[1] == "jobs/tune.py":
        sweep = _load(config)
        config = config.parent / sweep["base_config"]
        options = list(sweep.get("base_options", [])) + options
    cfg = load_config(str(config), options)  # refuses an unknown key or a wrong type, naming it
    assert cfg["scaling"]["use_gpu"] is True
    for split in ("train", "val"):
        assert cfg["data"][split]["data_root"].startswith("/mnt/shared/"), split
    assert not cfg["storage_path"].startswith(("/tmp", ".")), "storage_path must be shared"
    assert job["spec"]["shutdownAfterJobFinishes"] is True and "rayClusterSpec" in job["spec"]
    assert job["spec"]["ttlSecondsAfterFinished"] >= 0


def test_shared_volume_is_mounted_where_the_entrypoints_write():
    for name, spec in _cluster_specs().items():
        groups = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
        for group in groups:
            pod = group["template"]["spec"]
            claims = {v["name"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
            mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0].get("volumeMounts", [])}
            assert mounts.get("/mnt/shared") in claims, f"{name}: /mnt/shared is not a mounted claim"


def test_dockerfile_installs_the_repository_without_secrets():
    text = (KUBERAY / "Dockerfile").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert re.search(r"^COPY\s+(--chown=\S+\s+)?\.\s+\.\s*$", code, re.M), "copies the repository"
    assert re.search(r"pip install .*-e \.", code), "pip-installs it"
    assert not re.search(r"^(ARG|ENV)\s+\S*(TOKEN|SECRET|PASSWORD|KEY|CREDENTIAL)", code, re.M | re.I)
    assert "--mount=type=secret" not in code and ".aws" not in code and "auth_token" not in code
    ignore = (KUBERAY / "Dockerfile.dockerignore").read_text().split()
    for pattern in (".venv/", "data/", "work_dirs/", ".git/", "**/auth_token", ".env"):
        assert pattern in ignore, f"Dockerfile.dockerignore must exclude {pattern}"
