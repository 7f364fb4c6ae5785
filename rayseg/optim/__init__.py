"""Optimizers, optimizer constructors, lr schedules and momentum schedules (MMCV 1.x / MMSeg 0.x semantics).

- ``optimizers``: the optimizer registry (every ``torch.optim`` class, plus user optimizers registered with
  ``@OPTIMIZERS.register()``) and ``build_optimizer``.
- ``constructors``: ``optimizer.constructor`` (``DefaultOptimizerConstructor``, MMSeg's layer-wise lr decay).
- ``lr_schedules``: every ``lr_config`` policy, a pure function of the iteration.
- ``momentum``: the ``momentum_config`` policies.
"""
from rayseg.optim.constructors import (DefaultOptimizerConstructor, LayerDecayOptimizerConstructor,
                                       LearningRateDecayOptimizerConstructor, OptimizerConstructor)
from rayseg.optim.lr_schedules import (DEFAULT_LR_CONFIG, CosineAnnealingLrSchedule, CosineRestartLrSchedule,
                                       CyclicLrSchedule, ExpLrSchedule, FixedLrSchedule, FlatCosineAnnealingLrSchedule,
                                       InvLrSchedule, LinearAnnealingLrSchedule, LrSchedule, OneCycleLrSchedule,
                                       PolyLrSchedule, StepLrSchedule, build_lr_schedule)
from rayseg.optim.momentum import (CosineAnnealingMomentumSchedule, CyclicMomentumSchedule, MomentumSchedule,
                                   OneCycleMomentumSchedule, StepMomentumSchedule, build_momentum_schedule)
from rayseg.optim.optimizers import build_optimizer, check_grad_clip
from rayseg.registry import LR_POLICIES, MOMENTUM_POLICIES, OPTIMIZER_CONSTRUCTORS, OPTIMIZERS

__all__ = [
    "OPTIMIZERS", "OPTIMIZER_CONSTRUCTORS", "LR_POLICIES", "MOMENTUM_POLICIES", "build_optimizer", "check_grad_clip",
    "OptimizerConstructor", "DefaultOptimizerConstructor", "LearningRateDecayOptimizerConstructor",
    "LayerDecayOptimizerConstructor", "DEFAULT_LR_CONFIG", "LrSchedule", "FixedLrSchedule", "PolyLrSchedule",
    "StepLrSchedule", "ExpLrSchedule", "InvLrSchedule", "CosineAnnealingLrSchedule", "FlatCosineAnnealingLrSchedule",
    "LinearAnnealingLrSchedule", "CosineRestartLrSchedule", "CyclicLrSchedule", "OneCycleLrSchedule",
    "build_lr_schedule", "MomentumSchedule", "StepMomentumSchedule", "CosineAnnealingMomentumSchedule",
    "CyclicMomentumSchedule", "OneCycleMomentumSchedule", "build_momentum_schedule",
]
