"""Runs exported models in a Python that cannot import rayseg: a script, never imported.

``export_check.run_exported`` starts it as ``python -I -S run_exported.py MANIFEST``: ``-I`` leaves the
working folder and PYTHONPATH out of ``sys.path`` and ``-S`` skips ``site``, so the ``.pth`` files of an
editable rayseg install never run. Only the caller's site-packages folders (MANIFEST's
``site_packages``) are added back, by path and without their ``.pth`` files, which gives numpy,
onnxruntime and torch. A regular (non-editable) install would still be found there, so an import hook
refuses ``rayseg`` whatever the path holds; the script checks that before loading anything. MANIFEST's
``items`` are ``{"model", "format", "input", "output"}``: a model file, ``onnx`` or ``torchscript``, and
``.npy`` paths to read the input from and write the output to. It prints a JSON line: the rayseg
modules loaded (none) and the versions used.
"""
import importlib.util
import json
import sys

with open(sys.argv[1]) as _f:
    MANIFEST = json.load(_f)
# A virtual environment's site-packages is normally added by ``site``, which -S skipped.
sys.path.extend(p for p in MANIFEST["site_packages"] if p not in sys.path)


class _NoRayseg:
    """Import hook (first in ``sys.meta_path``): ``rayseg`` and its submodules cannot be imported."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if name == "rayseg" or name.startswith("rayseg."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by run_exported.py)", name=name)
        return None


sys.meta_path.insert(0, _NoRayseg())
try:
    importlib.import_module("rayseg")
    sys.exit("error: rayseg is importable here; the check needs a Python without it")
except ModuleNotFoundError as _exc:
    RAYSEG_IMPORT_ERROR = str(_exc)

import numpy as np  # noqa: E402


def run(item):
    x = np.load(item["input"])
    if item["format"] == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(item["model"], providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: x})[0]
    import torch

    model = torch.jit.load(item["model"], map_location="cpu")
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def main():
    versions = {}
    for item in MANIFEST["items"]:
        np.save(item["output"], run(item))
    for name in ("onnxruntime", "torch"):
        if name in sys.modules:
            versions[name] = sys.modules[name].__version__
    print(json.dumps({"rayseg_modules": sorted(m for m in sys.modules if m.split(".")[0] == "rayseg"),
                      "rayseg_import_error": RAYSEG_IMPORT_ERROR,
                      "versions": versions, "sys_path": sys.path}))


if __name__ == "__main__":
    main()
