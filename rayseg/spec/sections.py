"""The typed run spec: one frozen dataclass per config section, resolved once on the driver.

Run-level scalars (intervals, counts, flags, names) are typed fields read in exactly one place each. The
sections a registry builds (the model, dataset kwargs with their pipelines, the optimizer kwargs, the lr
schedule kwargs) stay plain dicts: the registries validate them when they build them. Every class here
pickles, so the whole ``RunSpec`` travels to Ray Train's workers in ``train_loop_config``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple, Union


@dataclass(frozen=True)
class DataSpec:
    """``data``: the dataset dicts (with their pipelines) and the per-worker batch and ingest settings."""

    samples_per_gpu: int  # batch size per training worker
    workers_per_gpu: int  # decode/augment actors per training worker
    train: Dict[str, Any]
    val: Optional[Dict[str, Any]] = None
    test: Optional[Dict[str, Any]] = None
    # Seconds a training worker waits for its first batch before it stops with an error naming the likely
    # cause (no CPU left for Ray Data's read tasks and decode/augment actors) instead of hanging.
    first_batch_timeout_s: float = 300.0
    # What training does with a sample whose reading, decoding or checks fail (``rayseg.datasets.bad_samples``):
    # "error" stops the run naming it (MMSeg's behaviour); "skip" drops it, logs it once and counts it, and
    # stops only beyond ``max_bad_samples`` distinct bad samples in the run.
    on_bad_sample: str = "error"
    max_bad_samples: int = 100
    # Decoded training images kept in Ray's object store so later epochs augment without decoding
    # (``rayseg.datasets.decoded_cache``): "auto" when the split fits, "true", "false".
    cache_decoded: str = "auto"

    @property
    def train_pipeline(self) -> List[Dict[str, Any]]:
        from rayseg.datasets.dataset_wrappers import dataset_pipeline_cfg

        return dataset_pipeline_cfg(self.train)

    @property
    def val_pipeline(self) -> List[Dict[str, Any]]:
        from rayseg.datasets.dataset_wrappers import dataset_pipeline_cfg

        return dataset_pipeline_cfg(self.val)


@dataclass(frozen=True)
class ModelSpec:
    """``model``: the segmentor dict as the registry builds it, and what the engine needs to know about it."""

    config: Dict[str, Any]
    sync_bn: bool = False  # some norm_cfg is SyncBN: converted across workers when world > 1


@dataclass(frozen=True)
class OptimSpec:
    """``optimizer``, ``optimizer_config``, ``lr_config`` and ``momentum_config``: what each training step and
    the schedules do (built by ``rayseg.optim``)."""

    optimizer: Dict[str, Any]  # optimizer kwargs plus ``type``, ``constructor`` and ``paramwise_cfg``
    base_lr: float
    lr_config: Dict[str, Any]  # the lr policy and its arguments (policy, power, min_lr, warmup, by_epoch, ...)
    grad_clip: Optional[Dict[str, Any]] = None  # clip_grad_norm_ kwargs
    skip_nonfinite: bool = False
    momentum_config: Optional[Dict[str, Any]] = None  # the momentum policy and its arguments; None: not scheduled
    # Iterations in one epoch of the training set, when a schedule counts epochs (``by_epoch``/``warmup_by_epoch``):
    # len(train set) // (samples_per_gpu × num_workers), see ``rayseg.spec.policy.iters_per_epoch``; else None.
    iters_per_epoch: Optional[int] = None


@dataclass(frozen=True)
class EvalSpec:
    """``evaluation``: validation every ``interval`` iterations (0: never), on the val set's ignore_index."""

    interval: int = 0
    metrics: Tuple[str, ...] = ("mIoU",)  # mIoU/mDice/mFscore: the columns shown in the val line and table
    save_best: Optional[str] = None  # a summary key (``auto`` already resolved), or None
    ignore_index: int = 255


@dataclass(frozen=True)
class CheckpointSpec:
    """``checkpoint_config`` and ``storage_path``: when Ray Train checkpoints are taken, how many kept, where."""

    interval: int  # iterations between checkpoints (max_iters when not set: only the final one)
    max_keep: Optional[int] = None  # None keeps all
    storage: str = ""  # storage root (path or URI); the run's folder is ``<storage>/<run name>``


@dataclass(frozen=True)
class ScalingSpec:
    """``scaling`` and ``failure``: Ray Train's ScalingConfig and FailureConfig."""

    num_workers: int = 1  # elastic: MAX, the size the global batch and the data stream are counted for
    use_gpu: bool = False
    resources_per_worker: Optional[Dict[str, float]] = None
    placement_strategy: str = "PACK"
    max_failures: int = 0
    min_workers: Optional[int] = None  # elastic (``num_workers: [MIN, MAX]``): MIN; None: a fixed size
    elastic_resize_monitor_interval_s: float = 60.0  # how often Ray Train looks for room to grow

    @property
    def elastic(self) -> bool:
        return self.min_workers is not None

    @property
    def cpus_per_worker(self) -> float:
        return float((self.resources_per_worker or {}).get("CPU", 1))


@dataclass(frozen=True)
class PrecisionSpec:
    """``amp``/``fp16``/``optimizer_config.type: Fp16OptimizerHook``, ``channels_last``, ``cudnn_benchmark``."""

    amp_dtype: Optional[str] = None  # "bf16" or "fp16"; None: fp32
    loss_scale: Union[str, float, None] = None  # "dynamic" or a number (fp16 only)
    channels_last: bool = False
    cudnn_benchmark: bool = False


@dataclass(frozen=True)
class TrackingSpec:
    """``mlflow``: where the run is recorded. The tracking URI is resolved once on the driver
    (``rayseg.tracking.tracking_store``: config, ``MLFLOW_TRACKING_URI``, else the project checkout's
    ``work_dirs/mlflow.db``) and written back into the config's ``mlflow.tracking_uri``."""

    tracking_uri: str
    artifact_root: Optional[str] = None  # only for the local default store
    experiment_name: str = "rayseg"
    run_name: Optional[str] = None
    tags: Dict[str, str] = field(default_factory=dict)
    system_metrics: bool = True
    system_metrics_interval: float = 10.0
    # ``mlflow.register_model``: the registered model the run's best (else final) weights become a version of.
    register_model: Optional[str] = None


@dataclass(frozen=True)
class LogSpec:
    """``log_config`` and ``log_level``: progress-line interval and the level of rayseg's Python loggers."""

    interval: int = 50
    level: str = "INFO"


@dataclass(frozen=True)
class CustomImportsSpec:
    """``custom_imports``: the user's modules, imported on the driver when the run is resolved and again in
    every Ray worker and actor (``rayseg.custom_imports``), so the parts they register are known everywhere.

    ``paths``: the folders the driver imported them from that a worker's ``sys.path`` may lack (the driver's
    current directory, ``PYTHONPATH`` entries); each is added on a node only where it exists.
    """

    modules: Tuple[str, ...] = ()
    allow_failed_imports: bool = False
    paths: Tuple[str, ...] = ()


@dataclass(frozen=True)
class RunSpec:
    """One training run, fully resolved: every config key consumed once, in the section that owns it.

    ``config`` is the resolved config dict (defaults, overrides and the command-line choices filled in),
    kept for MLflow params, ``config.yaml`` and checkpoint meta. ``notes`` are the lines printed for keys
    that are accepted but have no effect under Ray (e.g. ``dist_params``).
    """

    config: Dict[str, Any]
    work_dir: str
    run_name: str  # Ray Train's run name: the work dir's base name
    max_iters: int
    seed: int
    deterministic: bool
    data: DataSpec
    model: ModelSpec
    optim: OptimSpec
    evaluation: EvalSpec
    checkpoint: CheckpointSpec
    scaling: ScalingSpec
    precision: PrecisionSpec
    tracking: TrackingSpec
    log: LogSpec
    config_path: Optional[str] = None
    resume: bool = False  # --resume: continue the run in the work dir
    load_from: Optional[str] = None
    resume_from: Optional[str] = None
    notes: Tuple[str, ...] = ()
    custom_imports: CustomImportsSpec = CustomImportsSpec()
    # ``custom_hooks`` resolved (``rayseg.engine.hooks.resolve_custom_hooks``): hook configs in run order, each
    # with its ``priority`` as an int; built by every training worker.
    custom_hooks: Tuple[Dict[str, Any], ...] = ()

    @property
    def log_path(self) -> str:
        return os.path.join(self.work_dir, "log.jsonl")
