"""Inputs shared by the loss tests: a class-weight file writer and the MMSegmentation reference case.

``MMSEG_*`` repeat the literals of ``tools/mmseg_semantics_reference.py``; the tests' expected numbers
came from running that script against MMSegmentation 1.2.2 (mmcv-lite 2.2.0, mmengine 0.10.7, torch
2.14.1) in the throwaway venv of tools/README.md. MMSeg itself is never needed to run the tests.
"""
import json

import numpy as np

MMSEG_LOGITS = [[[[1.2, -0.3, 0.8], [0.1, 2.0, -1.1]],
                 [[-0.5, 0.9, 0.3], [1.4, -0.2, 0.6]],
                 [[0.7, 0.2, -1.3], [-0.4, 0.5, 1.9]]]]  # (1, 3, 2, 3)
MMSEG_LABELS = [[[0, 1, 2], [2, 1, 0]]]
MMSEG_LABELS_IGNORED = [[[0, 255, 2], [2, 1, 255]]]
MMSEG_CLASS_WEIGHT = [0.5, 1.0, 2.0]
MMSEG_FOCAL_ALPHA = [0.25, 0.5, 0.75]


def write_weights(tmp_path, values, suffix):
    """Write class weights as .npy, .txt or .json (the formats ``class_weight: PATH`` accepts)."""
    path = tmp_path / f"w{suffix}"
    if suffix == ".npy":
        np.save(path, np.array(values))
    elif suffix == ".txt":
        np.savetxt(path, np.array(values))
    else:
        path.write_text(json.dumps(values))
    return str(path)
