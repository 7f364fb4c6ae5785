"""``mlflow.register_model: NAME``: a run's weights as a version of a registered model in MLflow's registry.

The logged model is :class:`rayseg.tools.export.ExportModel` around the config's segmentor with the best (else
the final) weights: its input is a batch of images as OpenCV decodes them (BGR, 0-255, float32, NCHW), the
test pipeline's Normalize happens inside, and its output is the label map (int64, N×1×H×W) at the input size,
by the config's own inference (whole or slide). ``mlflow.pytorch.load_model("models:/NAME/VERSION")`` gives it
back: the model is pickled with rayseg's own code logged beside it (``code_paths``), so an environment with the
pinned torch, torchvision, numpy and PyYAML loads it without installing rayseg. Class names are a tag of the
model version and, with the palette, in the logged model's metadata.
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional

from rayseg.errors import ConfigError

ARTIFACT_NAME = "model"


def _signature():
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 3, -1, -1), "image")]),
                          outputs=Schema([TensorSpec(np.dtype(np.int64), (-1, 1, -1, -1), "label_map")]))


def deployable_model(config: Dict[str, Any], weights: str):
    """The ``ExportModel`` (image in, label map out) of ``config`` with ``weights``, in eval mode on the CPU."""
    from rayseg.inference import load_inference_model
    from rayseg.tools.export import ExportModel, pipeline_normalize

    model = load_inference_model(config, weights, "cpu")
    export = ExportModel(model, output="seg", normalize=pipeline_normalize(config)).eval()
    export.CLASSES = getattr(model, "CLASSES", None)
    export.PALETTE = getattr(model, "PALETTE", None)
    return export


def register_weights(config: Dict[str, Any], weights: str, name: str, tracking_uri: str, run_id: str,
                     tags: Optional[Dict[str, str]] = None) -> Dict[str, Any]:
    """Log ``weights`` as the run's ``model`` artifact and register it as a new version of ``name``.

    Returns ``{"name", "version", "uri", "weights"}`` (``uri`` is ``models:/NAME/VERSION``).
    """
    import mlflow
    import mlflow.pytorch

    if not os.path.exists(weights):  # a .pth file or a Ray checkpoint folder
        raise ConfigError(f"mlflow.register_model: the weights {weights} do not exist")
    export = deployable_model(config, weights)
    classes = list(export.CLASSES or [])
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        # Logged into the run that trained it; leaving the block marks it FINISHED, which its owner does next anyway.
        with mlflow.start_run(run_id=run_id, log_system_metrics=False):
            info = mlflow.pytorch.log_model(
                export, name=ARTIFACT_NAME, signature=_signature(), registered_model_name=name,
                metadata={"classes": classes, "palette": list(export.PALETTE or []), "weights": os.path.basename(weights),
                          "input": "BGR image, NCHW float32 0-255", "output": "label map, NCHW int64"},
                # Pickled (rayseg's classes by reference) with rayseg's own code alongside, so a serving
                # environment needs only the pinned packages, not a rayseg install.
                serialization_format="pickle", code_paths=[_package_dir()],
                pip_requirements=_requirements(), await_registration_for=60)
        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        version = str(info.registered_model_version)
        version_tags = {"rayseg.classes": json.dumps(classes), "rayseg.weights": os.path.basename(weights),
                        **(tags or {})}
        for key, value in version_tags.items():
            client.set_model_version_tag(name, version, key, value)
    finally:
        mlflow.set_tracking_uri(previous)
    return {"name": name, "version": version, "uri": f"models:/{name}/{version}", "weights": weights}


def _package_dir() -> str:
    import rayseg

    return os.path.dirname(os.path.abspath(rayseg.__file__))


def _requirements():
    """The pins a serving environment needs to unpickle and run the model (rayseg's code comes with it)."""
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in ("torch", "torchvision", "numpy", "pyyaml")]
