"""The typed run spec: a loaded config resolved once on the driver (``resolve_run``), checked by building
everything it names (``check_run``), and shipped to the Ray Train workers as one picklable object.

``rayseg.spec.resolve`` and ``rayseg.spec.check`` import the engine lazily, so the engine modules may import
the section classes from here without a cycle.
"""
from rayseg.spec.sections import (CheckpointSpec, DataSpec, EvalSpec, LogSpec, ModelSpec, OptimSpec, PrecisionSpec,
                                  RunSpec, ScalingSpec, TrackingSpec)

__all__ = ["CheckpointSpec", "DataSpec", "EvalSpec", "LogSpec", "ModelSpec", "OptimSpec", "PrecisionSpec", "RunSpec",
           "ScalingSpec", "TrackingSpec"]
