"""High-level entry points used by the ``jobs/`` scripts."""
from rayseg.apis.evaluate import evaluate_checkpoint, load_model

__all__ = ["evaluate_checkpoint", "load_model"]
