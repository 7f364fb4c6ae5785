"""A sweep config (YAML), read and checked once on the driver, before any trial starts.

::

    base_config: ../demo/fcn_r18-tiny_shapes.yaml     # relative to this file
    base_options: [runner.max_iters=40]               # --cfg-options for the base config (optional)
    search_space:
      optimizer.lr: {loguniform: [1.0e-3, 1.0e-1]}
    tune:
      metric: mIoU            # an evaluation summary key (val/ prefix optional)
      mode: max
      num_samples: 4
      max_concurrent_trials: null   # null: as many as the cluster's CPUs/GPUs fit
      scheduler: {type: asha, grace_period: 20, reduction_factor: 2}
      search_alg: {type: random}
      resources_per_trial: {num_workers: 1, cpus_per_worker: 1, gpus_per_worker: 0}
      time_budget_s: null
      storage_path: null      # null: WORK_DIR/ray_results
      max_failures: 0

Every check that can fail does so here, naming the culprit: keys missing from the base config, malformed
domains, values the training config refuses, a metric evaluation does not produce, a search algorithm whose
package is missing.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Optional

import yaml

from rayseg.config import load_config
from rayseg.errors import ConfigError
from rayseg.tune.space import Domain, apply_values, check_key, parse_search_space

SWEEP_KEYS = ("base_config", "base_options", "search_space", "tune")
TUNE_KEYS = ("metric", "mode", "num_samples", "max_concurrent_trials", "scheduler", "search_alg",
             "resources_per_trial", "time_budget_s", "storage_path", "max_failures", "register_model")
RESOURCE_KEYS = ("num_workers", "cpus_per_worker", "gpus_per_worker")
SCHEDULERS: Dict[str, tuple] = {
    # name → the arguments rayseg passes on (the time attribute is always the training iteration, ``iter``)
    "fifo": (),
    "asha": ("grace_period", "reduction_factor", "brackets", "max_t"),
    "hyperband": ("reduction_factor", "max_t", "stop_last_trials"),
    "pbt": ("perturbation_interval", "quantile_fraction", "resample_probability", "perturbation_factors",
            "synch", "hyperparam_mutations"),
}
SEARCH_ALGS: Dict[str, Optional[str]] = {"random": None, "optuna": "optuna", "hyperopt": "hyperopt"}


@dataclass(frozen=True)
class TuneSettings:
    """The sweep file's ``tune`` section, with defaults filled in."""

    metric: str = "mIoU"
    mode: str = "max"
    num_samples: int = 1
    max_concurrent_trials: Optional[int] = None
    scheduler: Dict[str, Any] = field(default_factory=lambda: {"type": "fifo"})
    search_alg: Dict[str, Any] = field(default_factory=lambda: {"type": "random"})
    resources_per_trial: Dict[str, Any] = field(default_factory=dict)
    time_budget_s: Optional[float] = None
    storage_path: Optional[str] = None
    max_failures: int = 0
    # The registered model the best trial's best weights become a version of (trials register nothing).
    register_model: Optional[str] = None

    @property
    def scheduler_type(self) -> str:
        return str(self.scheduler.get("type", "fifo")).lower()

    @property
    def search_alg_type(self) -> str:
        return str(self.search_alg.get("type", "random")).lower()


@dataclass(frozen=True)
class SweepSpec:
    """One sweep: the base training config (``--cfg-options`` applied), its search space and Tune settings."""

    path: str
    base_config_path: str
    base_cfg: Dict[str, Any]
    space: Dict[str, Domain]
    tune: TuneSettings
    work_dir: str
    raw: Dict[str, Any]  # the sweep file as read, for the parent MLflow run

    @property
    def max_iters(self) -> int:
        return int(self.base_cfg["runner"]["max_iters"])


def _settings(raw: Any) -> TuneSettings:
    raw = dict(raw or {})
    unknown = sorted(set(raw) - set(TUNE_KEYS))
    if unknown:
        raise ConfigError(f"tune: unknown keys {unknown}; known: {', '.join(TUNE_KEYS)}")
    settings = TuneSettings(**{k: v for k, v in raw.items() if v is not None or k in ("max_concurrent_trials",
                                                                                        "time_budget_s",
                                                                                        "storage_path",
                                                                                        "register_model")})
    if settings.register_model is not None:
        from rayseg.spec.resolve import _registered_model_name

        try:
            _registered_model_name(settings.register_model)
        except ConfigError as exc:
            raise ConfigError(f"tune.{str(exc).split('mlflow.', 1)[-1]}") from None
    metric = str(settings.metric)
    if metric.startswith("val/"):
        metric = metric[len("val/"):]
    if settings.mode not in ("max", "min"):
        raise ConfigError(f"tune.mode: expected max or min, got {settings.mode!r}")
    for key in ("num_samples", "max_failures"):
        value = getattr(settings, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "num_samples" else -1):
            raise ConfigError(f"tune.{key}: expected a {'positive ' if key == 'num_samples' else ''}integer, "
                              f"got {value!r}")
    if settings.max_concurrent_trials is not None and (not isinstance(settings.max_concurrent_trials, int)
                                                       or settings.max_concurrent_trials < 1):
        raise ConfigError(f"tune.max_concurrent_trials: expected a positive integer or null, got "
                          f"{settings.max_concurrent_trials!r}")
    for key in ("scheduler", "search_alg"):
        value = getattr(settings, key)
        if isinstance(value, str):
            value = {"type": value}
        if not isinstance(value, dict) or "type" not in value:
            raise ConfigError(f"tune.{key}: expected a mapping with a type, e.g. {{type: asha}}, got {value!r}")
        settings = _replace(settings, **{key: dict(value)})
    kind = settings.scheduler_type
    if kind not in SCHEDULERS:
        raise ConfigError(f"tune.scheduler.type: unknown scheduler {kind!r}; known: {', '.join(SCHEDULERS)}")
    extra = sorted(set(settings.scheduler) - {"type", *SCHEDULERS[kind]})
    if extra:
        raise ConfigError(f"tune.scheduler: {kind} takes {', '.join(SCHEDULERS[kind]) or 'no arguments'}; "
                          f"unknown: {extra}")
    if settings.search_alg_type not in SEARCH_ALGS:
        raise ConfigError(f"tune.search_alg.type: unknown search algorithm {settings.search_alg_type!r}; "
                          f"known: {', '.join(SEARCH_ALGS)}")
    resources = dict(settings.resources_per_trial or {})
    bad = sorted(set(resources) - set(RESOURCE_KEYS))
    if bad:
        raise ConfigError(f"tune.resources_per_trial: unknown keys {bad}; known: {', '.join(RESOURCE_KEYS)}")
    for key, value in resources.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0 or (
                key == "num_workers" and (not isinstance(value, int) or value < 1)):
            raise ConfigError(f"tune.resources_per_trial.{key}: expected a {'positive integer' if key == 'num_workers' else 'number >= 0'}, got {value!r}")
    return _replace(settings, metric=metric, resources_per_trial=resources)


def _replace(settings: TuneSettings, **changes) -> TuneSettings:
    import dataclasses

    return dataclasses.replace(settings, **changes)


def with_trial_resources(cfg: Dict[str, Any], resources: Dict[str, Any]) -> Dict[str, Any]:
    """``cfg`` with ``tune.resources_per_trial`` written into its ``scaling`` section."""
    if not resources:
        return cfg
    cfg = copy.deepcopy(cfg)
    scaling = cfg.setdefault("scaling", {})
    if "num_workers" in resources:
        scaling["num_workers"] = int(resources["num_workers"])
    per_worker = dict(scaling.get("resources_per_worker") or {})
    if "cpus_per_worker" in resources:
        per_worker["CPU"] = resources["cpus_per_worker"]
    if "gpus_per_worker" in resources:
        gpus = resources["gpus_per_worker"]
        scaling["use_gpu"] = bool(gpus)
        if gpus:
            per_worker["GPU"] = gpus
        else:
            per_worker.pop("GPU", None)
    scaling["resources_per_worker"] = per_worker
    return cfg


def trial_config(sweep: SweepSpec, values: Dict[str, Any]) -> Dict[str, Any]:
    """The training config of one trial: the base config, the trial's resources and its sampled values.

    ``evaluation.save_best`` defaults to the sweep's metric. This is what ``best_config.yaml`` holds for the
    best trial: ``jobs/train.py`` runs it as is.
    """
    cfg = apply_values(with_trial_resources(sweep.base_cfg, sweep.tune.resources_per_trial), values)
    evaluation = cfg.setdefault("evaluation", {})
    if not evaluation.get("save_best"):
        evaluation["save_best"] = sweep.tune.metric  # the trial's best weights are what the sweep hands over
    cfg.setdefault("mlflow", {})["register_model"] = None  # only the sweep's best trial is registered (tune.register_model)
    return cfg


def produced_metrics(cfg: Dict[str, Any]) -> tuple:
    """The summary keys the base config's validation reports (what ``tune.metric`` may name)."""
    from rayseg.evaluation.report import summary_columns

    metric = (cfg.get("evaluation") or {}).get("metric", "mIoU")
    metrics = [metric] if isinstance(metric, str) else list(metric)
    return tuple(summary_columns(metrics))


def _check_metric(sweep_path: str, cfg: Dict[str, Any], settings: TuneSettings) -> None:
    evaluation = cfg.get("evaluation") or {}
    if not evaluation.get("interval") or not (cfg.get("data") or {}).get("val"):
        raise ConfigError(f"{sweep_path}: the base config never validates (evaluation.interval and data.val are "
                          f"needed), so there is no {settings.metric} to compare trials by")
    produced = produced_metrics(cfg)
    if settings.metric not in produced:
        raise ConfigError(f"tune.metric: evaluation does not produce {settings.metric!r}; with evaluation.metric "
                          f"{evaluation.get('metric', 'mIoU')!r} it reports {', '.join(produced)}")


def _check_search_alg(settings: TuneSettings, space: Dict[str, Domain]) -> None:
    import importlib.util

    kind = settings.search_alg_type
    package = SEARCH_ALGS[kind]
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(f"tune.search_alg.type: {kind} needs the {package!r} package, which is not installed "
                          f"in {os.path.dirname(os.path.dirname(os.__file__))}: pip install {package}")
    grids = [d.key for d in space.values() if d.kind == "grid_search"]
    if package and grids:
        raise ConfigError(f"search_space: grid_search ({', '.join(grids)}) works only with search_alg random; "
                          f"{kind} samples every key itself (use choice)")
    if settings.scheduler_type == "pbt" and grids:
        raise ConfigError(f"search_space: PBT mutates values and cannot mutate grid_search keys "
                          f"({', '.join(grids)}); use choice")


def _check_values(sweep: SweepSpec) -> None:
    """Resolve and build the training config with each domain's bounds/options, so a value the training
    config would refuse (a policy name, a crop size) fails now rather than inside a trial; list the data once
    (relative data roots mean the same in the trials: they run from the job's working dir)."""
    from rayseg.spec.check import check_run
    from rayseg.spec.resolve import resolve_run

    first = {key: domain.probe_values()[0] for key, domain in sweep.space.items()}
    probes = [first]
    for key, domain in sweep.space.items():
        for value in domain.probe_values()[1:]:
            probes.append({**first, key: value})
    for index, values in enumerate(probes):
        try:
            spec = resolve_run(trial_config(sweep, values), work_dir=os.path.join(sweep.work_dir, "trials", "check"),
                               config_path=sweep.base_config_path)
            check_run(spec, list_data=index == 0)  # the data once: trials read it from the same place
        except ConfigError as exc:
            shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
            raise ConfigError(f"{sweep.path}: the base config with {shown} is refused: {exc}") from None


def load_sweep(path: str, work_dir: Optional[str] = None, cfg_options: Iterable[str] = ()) -> SweepSpec:
    """Read and check a sweep file; ``cfg_options`` apply to the base training config of every trial.

    ``work_dir``: where the sweep's trials, table and ``best_config.yaml`` go (default
    ``work_dirs/<sweep file name>``).
    """
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read sweep config {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with {', '.join(SWEEP_KEYS)}")
    unknown = sorted(set(raw) - set(SWEEP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}; a sweep config has {', '.join(SWEEP_KEYS)}")
    if not raw.get("base_config"):
        raise ConfigError(f"{path}: base_config (a training config, relative to this file) is required")
    base_path = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), str(raw["base_config"])))
    base_options = raw.get("base_options") or []
    if not isinstance(base_options, list) or not all(isinstance(o, str) for o in base_options):
        raise ConfigError(f"{path}: base_options must be a list of KEY=VALUE strings, got {base_options!r}")
    base_cfg = load_config(base_path, [*base_options, *cfg_options])  # the command line has the last word
    space = parse_search_space(raw.get("search_space"))
    for key in space:
        check_key(base_cfg, key)
    settings = _settings(raw.get("tune"))
    _check_metric(path, base_cfg, settings)
    _check_search_alg(settings, space)
    name = os.path.splitext(os.path.basename(path))[0]
    sweep = SweepSpec(path=os.path.abspath(path), base_config_path=base_path, base_cfg=base_cfg, space=space,
                      tune=settings, work_dir=os.path.abspath(work_dir or os.path.join("work_dirs", name)), raw=raw)
    _check_values(sweep)
    return sweep
