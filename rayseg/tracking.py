"""MLflow tracking: one run per training job, with params, metrics, tables and weights.

Where runs go (docs/mlflow.md): ``mlflow.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else one SQLite store
per project checkout, ``<project root>/work_dirs/mlflow.db``, where the project root is the nearest folder
above the work dir holding ``pyproject.toml`` or ``.git``, so every work dir of a checkout (``work_dirs/a``,
``other/run2``) records into the same store. A work dir outside any checkout keeps its store beside it
(``<work_dir>/../mlflow.db``). Tracking failures never stop training: they warn once and the numbers stay in
``log.jsonl``.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
import time
import warnings
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from rayseg.config import flatten_config

if TYPE_CHECKING:
    from rayseg.spec.sections import RunSpec

PROJECT_MARKERS = ("pyproject.toml", ".git")
# Config values that describe the machine a run happened on, not the experiment: kept out of the params (the
# work dir is the rayseg.work_dir tag) and out of run names.
MACHINE_PARAMS = ("work_dir", "mlflow.tracking_uri")
# MLflow 3.17's UI opens an experiment in its GenAI view (traces, "Detect Issues") unless the link says
# otherwise; the view is decided by this URL parameter (else the browser's last choice), not by any experiment
# tag or server setting (checked in the 3.17 UI bundle: the experiment kind follows the workflow type).
ML_VIEW_QUERY = "workflowType=machine_learning"
LOCAL_UI = "http://127.0.0.1:5000"
# Headline params, capitalised so that MLflow's compare view and column chooser (which sort keys by code
# point) list them ahead of the lower-case keys of the full config.
HEADLINE_PARAMS = ("Model", "Backbone", "Dataset", "Crop", "Iterations", "LR", "Batch", "Workers")
MAX_RUN_NAME = 250  # MLflow's run name column


def project_root(path: str) -> Optional[str]:
    """The nearest folder at or above ``path`` holding ``pyproject.toml`` or ``.git`` (None outside any)."""
    folder = os.path.abspath(path)
    while True:
        if any(os.path.exists(os.path.join(folder, marker)) for marker in PROJECT_MARKERS):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def default_store(work_dir: str) -> tuple[str, str]:
    """(tracking URI, artifact root) of the local SQLite store for ``work_dir``: the project checkout's
    ``work_dirs/mlflow.db`` when the work dir lies inside one, else ``mlflow.db`` beside the work dir."""
    root = project_root(work_dir)
    area = os.path.join(root, "work_dirs") if root else os.path.dirname(os.path.abspath(work_dir))
    return f"sqlite:///{os.path.join(area, 'mlflow.db')}", "file://" + os.path.join(area, "mlartifacts")


def tracking_store(tracking_uri: Optional[str], work_dir: str) -> tuple[str, Optional[str]]:
    """(tracking URI, artifact root or None): ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the
    project's local SQLite store (``default_store``, the only case with an artifact root of rayseg's choosing)."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri, None
    return default_store(work_dir)


def resolve_tracking_uri(cfg: Dict[str, Any], work_dir: str) -> tuple[str, Optional[str]]:
    """``tracking_store`` for a config dict's ``mlflow.tracking_uri`` (evaluation jobs, which have no run spec)."""
    return tracking_store((cfg.get("mlflow") or {}).get("tracking_uri"), work_dir)


def sqlite_path(tracking_uri: str) -> Optional[str]:
    """The database file of a ``sqlite:///`` tracking URI (None for servers and other stores)."""
    return tracking_uri[len("sqlite:///"):] if tracking_uri.startswith("sqlite:///") else None


def ui_command(tracking_uri: str) -> str:
    """The shell command that opens the MLflow UI on this store."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {_ui_base(tracking_uri)}"
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"


def _ui_base(tracking_uri: str) -> str:
    return (tracking_uri if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI).rstrip("/")


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    """The experiment's runs table (the model-training view) in the MLflow UI of this store."""
    return f"{_ui_base(tracking_uri)}/#/experiments/{experiment_id}?{ML_VIEW_QUERY}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """One run's page (model-training view) in the MLflow UI of this store."""
    return f"{_ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}?{ML_VIEW_QUERY}"


def compare_url(tracking_uri: str, experiment_id: str, run_ids: Sequence[str]) -> str:
    """MLflow's compare view of ``run_ids`` (params side by side, "Show diff only", plots)."""
    runs = json.dumps(list(run_ids), separators=(",", ":"))
    return (f"{_ui_base(tracking_uri)}/#/compare-runs?runs={runs}&experiments="
            f"{json.dumps([str(experiment_id)])}&{ML_VIEW_QUERY}")


def _is_machine_key(key: str) -> bool:
    leaf = key.rsplit(".", 1)[-1]
    return (key in MACHINE_PARAMS or key.startswith("mlflow.") or key in ("storage_path", "load_from", "resume_from")
            or leaf in ("data_root", "img_dir", "ann_dir", "split"))


def run_name(config: Dict[str, Any], config_path: Optional[str], work_dir: str) -> str:
    """The default MLflow run name: the config file's name plus the settings that differ from that file
    (``--cfg-options``, ``--seed``, ...), e.g. ``fcn_r18-tiny_shapes optimizer.lr=0.02``; paths and machine
    settings are left out. Without a config file, the work dir's name."""
    if not config_path:
        return os.path.basename(os.path.abspath(work_dir))
    name = os.path.splitext(os.path.basename(config_path))[0]
    try:
        from rayseg.config import load_config
        from rayseg.spec.policy import apply_key_policy

        base = load_config(config_path)
        try:
            apply_key_policy(base)  # the same spelling fixes the run's own config went through
        except Exception:
            pass
        base_flat = flatten_config(base)
    except Exception:  # the file changed or vanished since the run was resolved: the name alone
        return name
    changed = []
    for key, value in flatten_config(config).items():
        before = base_flat.get(key)
        if before == value or _is_machine_key(key):
            continue
        if key == "seed" and before in (None, "None") and value == "0":
            continue  # seed: null resolves to 0 (reproducible by default): not a choice the user made
        changed.append(f"{key}={value}")
    full = " ".join([name, *changed])
    return full if len(full) <= MAX_RUN_NAME else full[:MAX_RUN_NAME - 1] + "…"


def _train_dataset_type(train: Any) -> str:
    if isinstance(train, list):
        return "+".join(_train_dataset_type(t) for t in train)
    if not isinstance(train, dict):
        return "none"
    if isinstance(train.get("dataset"), (dict, list)):  # RepeatDataset, MultiImageMixDataset
        return _train_dataset_type(train["dataset"])
    if isinstance(train.get("datasets"), list):  # ConcatDataset
        return _train_dataset_type(train["datasets"])
    return str(train.get("type", "none"))


def _train_pipeline(train: Any) -> List[Any]:
    from rayseg.datasets.dataset_wrappers import dataset_pipeline_cfg

    if isinstance(train, list):
        return _train_pipeline(train[0]) if train else []
    return dataset_pipeline_cfg(train)


def headline_params(config: Dict[str, Any], num_workers: int) -> Dict[str, str]:
    """The few params that tell runs apart at a glance (``HEADLINE_PARAMS``): decode head (or segmentor),
    backbone (type-depth), training dataset type, random-crop size, iterations, base lr, batch size of all
    workers together, and the number of workers."""
    model = config.get("model") or {}
    head = model.get("decode_head") or {}
    backbone = model.get("backbone") or {}
    data = config.get("data") or {}
    train = data.get("train")
    crop = next((step.get("crop_size") for step in _train_pipeline(train)
                 if isinstance(step, dict) and step.get("type") == "RandomCrop"), None)
    per_worker = data.get("samples_per_gpu")
    values = {
        "Model": (head.get("type") if isinstance(head, dict) else None) or model.get("type"),
        "Backbone": "-".join(str(v) for v in (backbone.get("type"), backbone.get("depth")) if v is not None),
        "Dataset": _train_dataset_type(train),
        "Crop": "x".join(str(v) for v in crop) if isinstance(crop, (list, tuple)) else crop,
        "Iterations": (config.get("runner") or {}).get("max_iters"),
        "LR": (config.get("optimizer") or {}).get("lr"),
        "Batch": per_worker * num_workers if isinstance(per_worker, int) else per_worker,
        "Workers": num_workers,
    }
    return {k: str(v) if v not in (None, "") else "none" for k, v in values.items()}


def run_params(config: Dict[str, Any], num_workers: int) -> Dict[str, str]:
    """What a training run logs as params: the headline params, then the full flattened config without the
    values that only describe the machine (``MACHINE_PARAMS``)."""
    params = headline_params(config, num_workers)
    params.update({k: v if v != "" else "''" for k, v in flatten_config(config).items() if k not in MACHINE_PARAMS})
    return params


def describe_store(tracking_uri: str) -> str:
    """One line naming the store, for the start and end of train and test jobs."""
    path = sqlite_path(tracking_uri)
    where = f"{tracking_uri} (local SQLite file {os.path.abspath(path)})" if path else tracking_uri
    return f"MLflow store: {where}"


class MlflowRun:
    """A thin, failure-tolerant handle on one MLflow run (usable from any process by ``run_id``)."""

    def __init__(self, tracking_uri: str, run_id: str, experiment_id: str = ""):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.experiment_id = experiment_id
        self._client = None
        self._client_lock = threading.Lock()
        self._warned = False

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"], state["_client_lock"] = None, None  # neither travels to another process
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._client_lock = threading.Lock()

    @property
    def client(self):
        with self._client_lock:  # warm_up_in_background may be making it on another thread
            if self._client is None:
                from mlflow.tracking import MlflowClient

                self._client = MlflowClient(tracking_uri=self.tracking_uri)
            return self._client

    def warm_up_in_background(self) -> threading.Thread:
        """Import MLflow and open the tracking store on a daemon thread, so the first ``log_*`` call does not
        pay for it (~1-2.5 s of CPU: the import, and for a database store its schema check)."""

        def warm() -> None:
            try:
                self.client
            except Exception:  # the first real call reports it, under the usual guard
                pass

        thread = threading.Thread(target=warm, name="rayseg-mlflow-warm-up", daemon=True)
        thread.start()
        return thread

    def _guard(self, what: str, fn, *args, **kwargs) -> None:
        if self._warned:
            # Once the server has failed, stop calling it: each call would sit through MLflow's retry
            # backoff (minutes) and stall whatever logs through this handle.
            return
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # tracking must never stop training
            warnings.warn(f"MLflow {what} failed ({exc}); training continues and the numbers stay in "
                          "log.jsonl. This process stops logging to MLflow.", RuntimeWarning, stacklevel=2)
            self._warned = True

    def log_metrics(self, metrics: Dict[str, Any], step: int, timestamp: Optional[float] = None) -> None:
        """Log ``metrics`` at ``step``, stamped ``timestamp`` (unix seconds; now by default)."""
        from mlflow.entities import Metric

        now = int((time.time() if timestamp is None else timestamp) * 1000)
        entries = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(float(v))]
        for i in range(0, len(entries), 500):
            self._guard("log_metrics", self.client.log_batch, self.run_id, metrics=entries[i:i + 500])

    def log_artifact(self, path: str, artifact_path: Optional[str] = None) -> None:
        self._guard("log_artifact", self.client.log_artifact, self.run_id, path, artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        """Store ``text`` as the artifact ``artifact_file`` (e.g. ``evaluation/val/table.txt``)."""
        self._guard("log_text", self.client.log_text, self.run_id, text, artifact_file)

    def log_artifact_as(self, path: str, artifact_file: str) -> None:
        """Log the file ``path`` under the artifact name ``artifact_file`` (its own name may differ)."""
        folder, name = os.path.split(artifact_file)
        with tempfile.TemporaryDirectory(prefix="rayseg-artifact-") as tmp:
            copy = os.path.join(tmp, name)
            shutil.copyfile(path, copy)
            self.log_artifact(copy, folder or None)

    @property
    def url(self) -> str:
        """This run's page in the MLflow UI (model-training view)."""
        return run_url(self.tracking_uri, self.experiment_id, self.run_id)

    def set_tag(self, key: str, value: Any) -> None:
        self._guard("set_tag", self.client.set_tag, self.run_id, key, str(value))

    def finish(self, status: str = "FINISHED") -> None:
        self._guard("set_terminated", self.client.set_terminated, self.run_id, status)

    def finish_unless_ended(self, status: str) -> None:
        """Mark the run ``status`` unless another process has already ended it (a Tune driver that stopped
        the trial marks its run KILLED; the trial's own teardown, failing as its actor goes, must not undo it)."""
        def finish_if_running() -> None:
            if self.client.get_run(self.run_id).info.status == "RUNNING":
                self.client.set_terminated(self.run_id, status)

        self._guard("set_terminated", finish_if_running)


def server_reachable(tracking_uri: str, timeout: float = 5.0) -> Optional[str]:
    """None if an http(s) tracking server answers (or the store is not a server), else why not.

    MLflow's client retries a dead server with exponential backoff for minutes; probing once first lets
    training start at once and warn instead.
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{tracking_uri.rstrip('/')}/health", timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None  # it answers; auth or routing is MLflow's business
    except (OSError, ValueError) as exc:
        return str(getattr(exc, "reason", exc))


def start_system_metrics(spec: Optional[Dict[str, Any]], train_context) -> Optional[Any]:
    """Start MLflow's system-metrics sampler (CPU, memory, disk, network, GPU) on this worker's node.

    One worker per Ray node samples (the lowest rank there); each node's metrics are named
    ``system/node-<id>/...`` in the job's MLflow run. ``spec``: ``{"tracking_uri", "run_id", "interval"}`` or
    None (off). Every worker must call this: the choice of sampler is a collective.
    """
    import ray
    import torch.distributed as dist

    if not spec:
        return None
    node_id = ray.get_runtime_context().get_node_id()
    rank = train_context.get_world_rank()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        # Ray Train's local rank groups workers by IP address, which simulated nodes share; node ids don't.
        node_ids = [None] * dist.get_world_size()
        dist.all_gather_object(node_ids, node_id)
        if node_ids.index(node_id) != rank:
            return None
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        node = f"node-{node_id[:8]}"
        monitor = SystemMetricsMonitor(spec["run_id"], sampling_interval=float(spec.get("interval", 10)),
                                       samples_before_logging=1, resume_logging=True, node_id=node,
                                       tracking_uri=spec["tracking_uri"])
        monitor.start()
        return monitor
    except Exception as exc:  # system metrics are a courtesy; never fail a run over them
        warnings.warn(f"MLflow system metrics are off on this node ({exc})", RuntimeWarning, stacklevel=2)
        return None


def _git_commit() -> Optional[str]:
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment_tags(num_workers: int) -> Dict[str, str]:
    """Tags that say where a run came from: git commit, Ray job id, cluster size, worker count."""
    tags: Dict[str, str] = {}
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    try:
        import ray

        if ray.is_initialized():
            tags["ray.job_id"] = ray.get_runtime_context().get_job_id()
            nodes = [n for n in ray.nodes() if n.get("Alive")]
            tags["ray.num_nodes"] = str(len(nodes))
            tags["ray.cluster_cpus"] = str(int(ray.cluster_resources().get("CPU", 0)))
            tags["ray.cluster_gpus"] = str(int(ray.cluster_resources().get("GPU", 0)))
    except Exception:  # tags are a courtesy; never fail a run over them
        pass
    tags["rayseg.num_workers"] = str(num_workers)
    return tags


def start_run(spec: "RunSpec") -> Optional[MlflowRun]:
    """Create the MLflow run of a training job: named after the config and its overrides (``run_name``),
    with the headline params and the flattened config (``run_params``); prints the store.

    None (after one warning) when the tracking store is unreachable: training goes on without it.
    """
    from mlflow.entities import Param

    from rayseg.tracking_store import open_experiment, retry_transient

    tracking = spec.tracking
    uri, name = tracking.tracking_uri, tracking.experiment_name
    unreachable = server_reachable(uri)
    if unreachable:
        warnings.warn(f"MLflow tracking server {uri} is unreachable ({unreachable}); training continues and logs "
                      "only to log.jsonl", RuntimeWarning, stacklevel=2)
        return None
    title = tracking.run_name or run_name(spec.config, spec.config_path, spec.work_dir)
    try:
        root = tracking.artifact_root
        client, exp_id = open_experiment(uri, name, f"{root}/{name}" if root else None)
        tags = {"rayseg.work_dir": spec.work_dir, **environment_tags(spec.scaling.num_workers)}
        if spec.config_path:
            tags["rayseg.config"] = spec.config_path
        tags.update(tracking.tags)
        run = retry_transient(lambda: client.create_run(exp_id, tags=tags, run_name=title))
    except Exception as exc:
        warnings.warn(f"MLflow tracking at {uri} is unavailable ({exc}); training continues and logs only to "
                      "log.jsonl", RuntimeWarning, stacklevel=2)
        return None
    handle = MlflowRun(uri, run.info.run_id, exp_id)
    params = [Param(k, v) for k, v in run_params(spec.config, spec.scaling.num_workers).items()]
    for i in range(0, len(params), 100):
        handle._guard("log_params", client.log_batch, run.info.run_id, params=params[i:i + 100])
    print(f"{describe_store(uri)}; run '{title}' ({run.info.run_id})", flush=True)
    return handle


def resume_run(spec: "RunSpec", run_id: str) -> Optional[MlflowRun]:
    """Reopen the MLflow run of a resumed job so its history stays one run; a new run if it is gone."""
    from mlflow.tracking import MlflowClient

    uri = spec.tracking.tracking_uri
    if server_reachable(uri):
        return start_run(spec)  # warns that the server is unreachable
    try:
        client = MlflowClient(tracking_uri=uri)
        run = client.get_run(run_id)
        client.update_run(run_id, status="RUNNING")
    except Exception as exc:
        warnings.warn(f"cannot reopen MLflow run {run_id} at {uri} ({exc}); starting a new run", RuntimeWarning,
                      stacklevel=2)
        return start_run(spec)
    print(f"{describe_store(uri)}; continuing run '{run.info.run_name}' ({run_id})", flush=True)
    return MlflowRun(uri, run_id, run.info.experiment_id)


def system_metrics_spec(spec: "RunSpec", run: Optional[MlflowRun]) -> Optional[Dict[str, Any]]:
    """What ``start_system_metrics`` needs in the workers (``mlflow.system_metrics``), or None when off."""
    if run is None or not spec.tracking.system_metrics:
        return None
    return {"tracking_uri": run.tracking_uri, "run_id": run.run_id,
            "interval": spec.tracking.system_metrics_interval}
