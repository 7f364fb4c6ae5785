"""``custom_hooks``: user code run by every training worker at MMSeg's points of the training loop.

A hook is a class deriving from ``Hook``, registered with ``@HOOKS.register_module()`` in a module named by
``custom_imports``, and listed in the config::

    custom_hooks:
      - {type: MyHook, priority: NORMAL, every: 10}   # the other keys are MyHook's arguments

Hooks run in order of ``priority`` (a name of ``PRIORITIES`` or an int from 0 to 100; lower runs first;
default ``NORMAL``), hooks of equal priority in config order. The loop (``rayseg.engine.loop``) calls, on every
worker:

==========================  =====================================================  ========================
point                       when                                                   extra keyword arguments
==========================  =====================================================  ========================
``before_run``              model, optimizer and any checkpoint are ready           —
``before_train_iter``       before an iteration reads its batch (lr already set)    ``batch_idx``
``after_train_iter``        after the iteration's optimizer step                    ``batch_idx``, ``outputs``
``after_val_epoch``         after a validation (every worker holds the metrics)     ``metrics``
``before_save_checkpoint``  on rank 0, before a checkpoint is written               ``checkpoint``
``after_run``               after the last iteration                                —
==========================  =====================================================  ========================

Each method receives the ``HookRunner`` first (``runner.iter``, ``runner.max_iters``, ``runner.rank``,
``runner.model``, ``runner.optimizer``, ``runner.work_dir`` …), the MMCV 1.x convention; the extra keyword
arguments (MMEngine's) are passed only to methods that declare them. MMEngine's names run at the same points
(``before_train`` with ``before_run``, ``after_val`` with ``after_val_epoch``, ``after_train`` with
``after_run``). ``before_save_checkpoint`` may add entries to ``checkpoint``: they are saved with it.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from rayseg.errors import ConfigError

# MMCV's priority names (mmcv.runner.priority.Priority).
PRIORITIES: Dict[str, int] = {
    "HIGHEST": 0, "VERY_HIGH": 10, "HIGH": 30, "ABOVE_NORMAL": 40, "NORMAL": 50, "BELOW_NORMAL": 60,
    "LOW": 70, "VERY_LOW": 90, "LOWEST": 100,
}

# Loop point → the hook methods called there, in order (MMCV 1.x's name first, then MMEngine's).
POINTS: Dict[str, Tuple[str, ...]] = {
    "before_run": ("before_run", "before_train"),
    "before_train_iter": ("before_train_iter",),
    "after_train_iter": ("after_train_iter",),
    "after_val_epoch": ("after_val_epoch", "after_val"),
    "before_save_checkpoint": ("before_save_checkpoint",),
    "after_run": ("after_train", "after_run"),
}


class Hook:
    """Base class of ``custom_hooks``: override the methods of the points you need (see the module docstring).

    Every method takes the ``HookRunner`` and returns nothing; the base methods do nothing.
    """

    priority: Union[int, str] = "NORMAL"  # set from the config's ``priority`` when the hook is built

    def before_run(self, runner: "HookRunner") -> None:
        """Once, before the first iteration of this worker group (again after a restart from a checkpoint)."""

    def before_train(self, runner: "HookRunner") -> None:
        """MMEngine's name for ``before_run``."""

    def before_train_iter(self, runner: "HookRunner", batch_idx: Optional[int] = None) -> None:
        """Before iteration ``runner.iter`` (0-based) reads its batch."""

    def after_train_iter(self, runner: "HookRunner", batch_idx: Optional[int] = None,
                         outputs: Optional[Dict[str, float]] = None) -> None:
        """After iteration ``runner.iter``'s step; ``outputs`` is the step's loss dict (None: step skipped)."""

    def after_val_epoch(self, runner: "HookRunner", metrics: Optional[Dict[str, Any]] = None) -> None:
        """After a validation at iteration ``runner.iter``; ``metrics`` are the dataset-level results."""

    def after_val(self, runner: "HookRunner") -> None:
        """MMEngine's name, called right after ``after_val_epoch``."""

    def before_save_checkpoint(self, runner: "HookRunner", checkpoint: Optional[Dict[str, Any]] = None) -> None:
        """On rank 0, before the checkpoint of iteration ``runner.iter`` is written; entries added to
        ``checkpoint`` are saved in it (plain types and tensors: checkpoints are read with a safe unpickler)."""

    def after_train(self, runner: "HookRunner") -> None:
        """MMEngine's name, called right before ``after_run``."""

    def after_run(self, runner: "HookRunner") -> None:
        """After the last iteration (``runner.iter == runner.max_iters``)."""

    # MMCV's helpers, so hooks ported from MMSeg keep working.
    def every_n_iters(self, runner: "HookRunner", n: int) -> bool:
        """True on every ``n``-th iteration (counting from 1)."""
        return n > 0 and (runner.iter + 1) % n == 0

    def is_last_iter(self, runner: "HookRunner") -> bool:
        """True on the run's last iteration."""
        return runner.iter + 1 == runner.max_iters


@dataclass
class HookRunner:
    """What a hook sees of the training worker (MMCV's ``runner``, reduced to what exists under Ray Train).

    ``iter``: MMCV's counter, the 0-based index of the current iteration in ``*_train_iter``, validation and
    checkpoint points, and ``max_iters`` at ``after_run``. ``model`` is the bare model (not the DDP wrapper);
    ``rank``/``world_size`` say which worker this is (write files from rank 0 only). ``meta`` is a dict hooks
    may share state in.
    """

    model: Any
    optimizer: Any
    max_iters: int
    work_dir: str
    rank: int = 0
    world_size: int = 1
    iter: int = 0
    config: Dict[str, Any] = field(default_factory=dict)
    meta: Dict[str, Any] = field(default_factory=dict)
    epoch: int = 0  # rayseg trains by iteration; kept for hooks that read it
    outputs: Optional[Dict[str, float]] = None  # the last step's losses
    metrics: Optional[Dict[str, Any]] = None  # the last validation's results

    @property
    def inner_iter(self) -> int:
        """MMCV's iteration within the epoch: the iteration itself (there are no epochs)."""
        return self.iter


def resolve_priority(value: Any, where: str) -> int:
    """A priority name (``NORMAL``) or an int in [0, 100] as an int; anything else is a ConfigError."""
    if isinstance(value, str) and value.upper() in PRIORITIES:
        return PRIORITIES[value.upper()]
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100:
        return value
    raise ConfigError(f"{where}: priority must be an int from 0 to 100 or one of {', '.join(PRIORITIES)}, "
                      f"got {value!r}")


def resolve_custom_hooks(value: Any, where: str = "custom_hooks") -> Tuple[Dict[str, Any], ...]:
    """``custom_hooks`` → one dict per hook with ``priority`` as an int, sorted to run order.

    Checks (without building anything) that each type is registered in ``HOOKS``, derives from ``Hook`` and
    accepts the other keys; errors name ``custom_hooks.<i>``. Call after ``custom_imports`` are imported.
    """
    from rayseg.registry import HOOKS, check_kwargs

    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list of hooks ({{type: MyHook, priority: NORMAL}}), got {value!r}")
    resolved: List[Tuple[int, int, Dict[str, Any]]] = []
    for i, hook in enumerate(value):
        here = f"{where}.{i}"
        if not isinstance(hook, dict) or not isinstance(hook.get("type"), str):
            raise ConfigError(f"{here}: expected a mapping with a type (a hook registered in HOOKS), got {hook!r}")
        try:
            cls = HOOKS.get(hook["type"])
        except ConfigError as exc:
            raise ConfigError(f"{here}.type: {exc} (a hook's module must be listed in custom_imports)") from None
        if not (isinstance(cls, type) and issubclass(cls, Hook)):
            raise ConfigError(f"{here}.type: {hook['type']!r} must derive from rayseg.engine.hooks.Hook")
        priority = resolve_priority(hook.get("priority", getattr(cls, "priority", "NORMAL")), f"{here}.priority")
        kwargs = {k: v for k, v in hook.items() if k not in ("type", "priority")}
        try:
            check_kwargs(cls, kwargs, f"hook {hook['type']!r}")
        except ConfigError as exc:
            raise ConfigError(f"{here}: {exc}") from None
        resolved.append((priority, i, {**hook, "priority": priority}))
    return tuple(cfg for _, _, cfg in sorted(resolved, key=lambda item: item[:2]))


def _call(method: Any, runner: HookRunner, extras: Dict[str, Any]) -> None:
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):
        params = {}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        method(runner, **extras)
    else:
        method(runner, **{k: v for k, v in extras.items() if k in params})


class HookList:
    """The run's hooks, built in run order, and ``call(point, iteration, **extras)`` for the loop."""

    def __init__(self, hooks: Sequence[Hook], runner: HookRunner):
        self.hooks = list(hooks)
        self.runner = runner

    @classmethod
    def build(cls, configs: Sequence[Dict[str, Any]], runner: HookRunner) -> "HookList":
        """Build each resolved hook config (``resolve_custom_hooks``) with ``HOOKS``; errors name the index."""
        from rayseg.registry import HOOKS, build

        hooks = []
        for i, cfg in enumerate(configs):
            kwargs = {k: v for k, v in cfg.items() if k != "priority"}
            try:
                hook = build(kwargs, HOOKS)
            except ConfigError as exc:
                raise ConfigError(f"custom_hooks ({cfg.get('type')!r}): {exc}") from None
            hook.priority = cfg.get("priority", PRIORITIES["NORMAL"])
            hooks.append(hook)
        return cls(hooks, runner)

    def __len__(self) -> int:
        return len(self.hooks)

    def call(self, point: str, iteration: int, **extras: Any) -> None:
        """Run ``point``'s methods of every hook, in priority order, with ``runner.iter = iteration``."""
        if not self.hooks:
            return
        runner = self.runner
        runner.iter = int(iteration)
        if "outputs" in extras:
            runner.outputs = extras["outputs"]
        if "metrics" in extras:
            runner.metrics = extras["metrics"]
        if point in ("before_train_iter", "after_train_iter"):
            extras.setdefault("batch_idx", int(iteration))
        for hook in self.hooks:
            for name in POINTS[point]:
                _call(getattr(hook, name), runner, extras)
