"""MLflow tracking: one run per training job, with params, metrics, tables and weights.

The default store is a SQLite file beside the work dir (``<work_dir>/../mlflow.db``) so every run of a
project lands in one place the UI can open; ``mlflow.tracking_uri`` or ``MLFLOW_TRACKING_URI`` point it
at a server instead. Tracking failures never stop training: they warn once and the numbers stay in
``log.jsonl``.
"""
from __future__ import annotations

import math
import os
import time
import warnings
from typing import TYPE_CHECKING, Any, Dict, Optional

from rayseg.config import flatten_config

if TYPE_CHECKING:
    from rayseg.spec.sections import RunSpec


def default_store(work_dir: str) -> tuple[str, str]:
    """(tracking URI, artifact root) of the local SQLite store that sits beside ``work_dir``."""
    area = os.path.dirname(os.path.abspath(work_dir))
    return f"sqlite:///{os.path.join(area, 'mlflow.db')}", "file://" + os.path.join(area, "mlartifacts")


def tracking_store(tracking_uri: Optional[str], work_dir: str) -> tuple[str, Optional[str]]:
    """(tracking URI, artifact root or None): ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the local
    SQLite store beside ``work_dir`` (the only case with an artifact root of rayseg's choosing)."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri, None
    return default_store(work_dir)


def resolve_tracking_uri(cfg: Dict[str, Any], work_dir: str) -> tuple[str, Optional[str]]:
    """``tracking_store`` for a config dict's ``mlflow.tracking_uri`` (evaluation jobs, which have no run spec)."""
    return tracking_store((cfg.get("mlflow") or {}).get("tracking_uri"), work_dir)


def ui_command(tracking_uri: str) -> str:
    """The shell command that opens the MLflow UI on this store."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri} --host 127.0.0.1 --port 5000"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    base = tracking_uri if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


class MlflowRun:
    """A thin, failure-tolerant handle on one MLflow run (usable from any process by ``run_id``)."""

    def __init__(self, tracking_uri: str, run_id: str, experiment_id: str = ""):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.experiment_id = experiment_id
        self._client = None
        self._warned = False

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

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

    def log_metrics(self, metrics: Dict[str, Any], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        entries = [Metric(k, float(v), now, int(step)) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(float(v))]
        for i in range(0, len(entries), 500):
            self._guard("log_metrics", self.client.log_batch, self.run_id, metrics=entries[i:i + 500])

    def log_artifact(self, path: str, artifact_path: Optional[str] = None) -> None:
        self._guard("log_artifact", self.client.log_artifact, self.run_id, path, artifact_path)

    def set_tag(self, key: str, value: Any) -> None:
        self._guard("set_tag", self.client.set_tag, self.run_id, key, str(value))

    def finish(self, status: str = "FINISHED") -> None:
        self._guard("set_terminated", self.client.set_terminated, self.run_id, status)


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
    """Create the MLflow run of a training job and log the resolved config as params.

    None (after one warning) when the tracking store is unreachable: training goes on without it.
    """
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    tracking = spec.tracking
    uri, name = tracking.tracking_uri, tracking.experiment_name
    unreachable = server_reachable(uri)
    if unreachable:
        warnings.warn(f"MLflow tracking server {uri} is unreachable ({unreachable}); training continues and logs "
                      "only to log.jsonl", RuntimeWarning, stacklevel=2)
        return None
    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            root = tracking.artifact_root
            exp_id = client.create_experiment(name, artifact_location=f"{root}/{name}" if root else None)
        else:
            exp_id = experiment.experiment_id
        tags = {"rayseg.work_dir": spec.work_dir, **environment_tags(spec.scaling.num_workers)}
        if spec.config_path:
            tags["rayseg.config"] = spec.config_path
        tags.update(tracking.tags)
        run = client.create_run(exp_id, tags=tags, run_name=tracking.run_name or spec.run_name)
    except Exception as exc:
        warnings.warn(f"MLflow tracking at {uri} is unavailable ({exc}); training continues and logs only to "
                      "log.jsonl", RuntimeWarning, stacklevel=2)
        return None
    handle = MlflowRun(uri, run.info.run_id, exp_id)
    params = [Param(k, v if v != "" else "''") for k, v in flatten_config(spec.config).items()]
    for i in range(0, len(params), 100):
        handle._guard("log_params", client.log_batch, run.info.run_id, params=params[i:i + 100])
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
    return MlflowRun(uri, run_id, run.info.experiment_id)


def system_metrics_spec(spec: "RunSpec", run: Optional[MlflowRun]) -> Optional[Dict[str, Any]]:
    """What ``start_system_metrics`` needs in the workers (``mlflow.system_metrics``), or None when off."""
    if run is None or not spec.tracking.system_metrics:
        return None
    return {"tracking_uri": run.tracking_uri, "run_id": run.run_id,
            "interval": spec.tracking.system_metrics_interval}
