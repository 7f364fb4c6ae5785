"""High-level entry points used by the ``jobs/`` scripts and by users (MMSeg-style inference API)."""
from rayseg.apis.evaluate import evaluate_checkpoint, load_model
from rayseg.apis.inference import inference_model, init_model, show_result

__all__ = ["evaluate_checkpoint", "inference_model", "init_model", "load_model", "show_result"]
