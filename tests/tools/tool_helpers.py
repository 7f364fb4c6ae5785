"""Shared by the tools tests: run a jobs/ script, and a checkpoint of the tiny demo model."""
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "tests" / "configs" / "tiny_shapes.yaml"  # ResNetV1c-18 D8 + FCN head, 4 classes


def run_job(script, *args, timeout=300):
    """``python jobs/SCRIPT ARGS`` from the repository root; the CompletedProcess (text)."""
    return subprocess.run([sys.executable, str(REPO / "jobs" / script), *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, cwd=REPO)


def tiny_checkpoint(path, seed=0):
    """A checkpoint of the tiny config's model with random weights and BatchNorm statistics (so a wrong
    eval-mode BatchNorm or a dropped layer changes the output), as {"state_dict", "meta"}."""
    from rayseg.config import load_config
    from rayseg.tools.model import build_model

    torch.manual_seed(seed)
    model = build_model(load_config(str(TINY)))
    randomise_batchnorm(model, seed)
    torch.save({"state_dict": model.state_dict(), "meta": {"classes": ["bg", "square", "circle", "triangle"]}},
               path)
    return model


def randomise_batchnorm(model, seed=0):
    """Running statistics and affine parameters away from their initial 0/1."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
            m.running_var.copy_(0.75 + 0.5 * torch.rand(n, generator=gen))
            if m.affine:
                m.weight.data.copy_(0.75 + 0.5 * torch.rand(n, generator=gen))
                m.bias.data.copy_(0.1 * torch.randn(n, generator=gen))


def load_job(script):
    """The jobs/ script as a module (its ``main(argv)`` runs in this process: fast argument/error tests)."""
    import importlib.util

    jobs = str(REPO / "jobs")
    if jobs not in sys.path:
        sys.path.insert(0, jobs)  # for `import _preflight`
    spec = importlib.util.spec_from_file_location(f"job_{Path(script).stem}", REPO / "jobs" / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
