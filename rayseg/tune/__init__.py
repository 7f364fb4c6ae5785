"""Hyper-parameter sweeps on Ray Tune: a sweep config → trials that each fit a ``TorchTrainer`` → MLflow."""
from rayseg.tune.runner import run_sweep
from rayseg.tune.sweep import SweepSpec, load_sweep

__all__ = ["SweepSpec", "load_sweep", "run_sweep"]
