"""``mlflow.register_model``: a training run registers its weights in a real MLflow server's model registry, and
``mlflow.pytorch.load_model`` gives back a model that predicts what rayseg's ``inference_model`` predicts."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, MlflowServer, data_options

from rayseg.config import load_config
from rayseg.errors import ConfigError

TINY_CONFIG = REPO_ROOT / "tests" / "configs" / "tiny_shapes.yaml"


@pytest.mark.parametrize("name", ["", "team/model", "a:b"])
def test_bad_registered_model_names_are_refused_before_training(name, tmp_path):
    from rayseg.spec.resolve import resolve_run

    cfg = load_config(str(TINY_CONFIG), [f"mlflow.register_model='{name}'"])
    with pytest.raises(ConfigError, match="mlflow.register_model: .* is not a registered model name"):
        resolve_run(cfg, work_dir=str(tmp_path / "w"))


@pytest.mark.slow
def test_training_registers_a_model_that_predicts_like_rayseg(ray_head, demo_data, tmp_path):
    import cv2
    import mlflow
    import mlflow.pytorch
    import torch

    from rayseg.apis import inference_model, init_model

    (tmp_path / "mlflow").mkdir()
    server = MlflowServer(tmp_path / "mlflow")
    try:
        work = tmp_path / "run"
        env = dict(os.environ, RAY_ADDRESS=ray_head.address)
        proc = subprocess.run([sys.executable, "jobs/train.py", str(TINY_CONFIG), "--work-dir", str(work),
                               "--cfg-options", *data_options(demo_data), "runner.max_iters=4",
                               "evaluation.interval=2", "checkpoint_config.interval=2",
                               f"mlflow.tracking_uri={server.url}", "mlflow.register_model=shapes-fcn"],
                              capture_output=True, text=True, cwd=REPO_ROOT, timeout=900, env=env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "registered model shapes-fcn version 1 (models:/shapes-fcn/1) from " in proc.stdout

        client = mlflow.MlflowClient(tracking_uri=server.url)
        version = client.get_model_version("shapes-fcn", "1")
        run = client.get_run(version.run_id)
        assert run.data.params["runner.max_iters"] == "4" and run.info.status == "FINISHED"
        weights = version.tags["rayseg.weights"]
        assert weights.endswith(".pth") and (work / weights).is_file()
        assert len(eval(version.tags["rayseg.classes"])) == 4  # background + 3 shapes  # noqa: S307

        mlflow.set_tracking_uri(server.url)
        served = mlflow.pytorch.load_model("models:/shapes-fcn/1")
        signature = mlflow.models.get_model_info("models:/shapes-fcn/1").signature
        assert list(signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == [-1, 3, -1, -1]

        cfg = load_config(str(work / "config.yaml"))
        reference = init_model(cfg, str(work / weights))
        images = sorted((demo_data / "img_dir" / "val").glob("*.png"))[:3]
        for path in images:
            bgr = cv2.imread(str(path))
            x = torch.from_numpy(bgr).permute(2, 0, 1)[None].float()
            with torch.no_grad():
                got = served(x)[0, 0].numpy()
            expected = inference_model(reference, str(path))
            assert got.shape == expected.shape == bgr.shape[:2]
            assert np.mean(got == expected) > 0.999, np.mean(got == expected)
    finally:
        server.stop()
