"""High-level entry points used by the ``jobs/`` scripts and by users (MMSeg-style inference API)."""
from rayseg.apis.distributed_eval import evaluate_checkpoint
from rayseg.apis.inference import inference_model, init_model, show_result

__all__ = ["evaluate_checkpoint", "inference_model", "init_model", "show_result"]
