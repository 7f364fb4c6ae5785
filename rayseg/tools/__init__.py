"""MMSeg's analysis and deployment tools (``tools/analysis_tools``, ``tools/deployment``) as a library.

- :mod:`rayseg.tools.model`: the model the tools measure or export (a checkpoint's weights, or random init).
- :mod:`rayseg.tools.flops`: parameters and FLOPs, total and per module (``jobs/get_flops.py``).
- :mod:`rayseg.tools.benchmark`: inference img/s and latency with warm-up (``jobs/benchmark.py``).
- :mod:`rayseg.tools.export`: ONNX / TorchScript files that run without rayseg (``jobs/export.py``), with
  :mod:`rayseg.tools.export_ops` (the rewrites that make a segmentor traceable) and
  :mod:`rayseg.tools.export_check` (running the exported file in a Python that cannot import rayseg).

docs/tools.md describes the commands.
"""
