"""Which top-level names of an MMSeg ``.py`` config are config keys, and which are helper variables.

- **Version.** A config is 1.x when it has a key only MMEngine reads (``train_dataloader``, ``optim_wrapper``,
  ``param_scheduler``, ``default_hooks``, ``val_evaluator``, ``env_cfg``, ... or a ``train_cfg`` loop); else 0.x.
- **Config keys.** 0.x: every key of rayseg's schema (``rayseg.config.SCHEMA``: ``model``, ``data``,
  ``optimizer``, ..., plus rayseg's own ``scaling``, ``mlflow``, ...) is kept as it is; a few 0.x runtime keys
  rayseg has no use for are reported (``gpu_ids``, ...). 1.x: the keys ``translate_1x`` reads, plus the schema
  keys both versions share (``model``, ``load_from``, ``work_dir``, ``log_level``, rayseg's own).
- **Helper variables.** Every other name (``crop_size``, ``norm_cfg``, ``img_norm_cfg``, ``train_pipeline``,
  ``dataset_type``, 1.x's top-level ``optimizer``, ...) is a helper: it lives on in the sections that read it and
  is dropped from the result, as MMSeg's runner never reads it either. A helper that no file of the chain reads is
  reported: as untranslatable when its name is close to a config key (``optimzer``: a misspelt section is an
  error, not a silently unused variable), as ignored otherwise. In a 1.x config, a 0.x section name that nothing
  reads (``lr_config``) is untranslatable: MMSeg 1.x would ignore it, so it is almost certainly a mistake.
"""
from __future__ import annotations

import difflib
from typing import Any, Dict, List, Set, Tuple

from rayseg.mmseg_config.inherit import Tree
from rayseg.mmseg_config.report import Report
from rayseg.mmseg_config.translate_1x import KEYS_1X

ZERO_X_ONLY = {
    "data": "train_dataloader / val_dataloader / test_dataloader", "optimizer": "optim_wrapper.optimizer",
    "optimizer_config": "optim_wrapper.clip_grad", "lr_config": "param_scheduler", "momentum_config": "param_scheduler",
    "runner": "train_cfg", "checkpoint_config": "default_hooks.checkpoint",
    "evaluation": "val_evaluator and train_cfg.val_interval", "log_config": "default_hooks.logger",
    "workflow": "train_cfg", "dist_params": "env_cfg.dist_cfg", "resume_from": "load_from with resume=True",
}
# Keys that make a config 1.x (test_cfg/launcher/custom_imports exist in both worlds; train_cfg is checked apart).
_MARKERS_1X = KEYS_1X - {"train_cfg", "test_cfg", "launcher", "custom_imports", "custom_hooks", "resume"}
# 0.x runtime keys rayseg does not use: reason, and whether a true value is a request rayseg cannot honour.
IGNORED_0X = {
    "gpu_ids": ("Ray Train places the workers (scaling.num_workers, scaling.use_gpu)", False),
    "device": ("scaling.use_gpu decides the device", False),
    "opencv_num_threads": ("the decode actors use OpenCV's defaults", False),
    "mp_start_method": ("Ray starts the processes", False),
    "find_unused_parameters": ("rayseg runs DDP with find_unused_parameters=False", True),
    "auto_resume": ("use jobs/train.py --resume", True),
}
# Helper names MMSeg's own configs use; never taken for a misspelt key.
COMMON_HELPERS = {"crop_size", "norm_cfg", "backbone_norm_cfg", "img_norm_cfg", "train_pipeline", "test_pipeline",
                  "dataset_type", "data_root", "img_scale", "img_ratios", "checkpoint", "checkpoint_file",
                  "pretrained", "num_classes", "data_preprocessor", "dataset_train", "dataset_aug", "optimizer",
                  "stage_cfg", "ham_norm_cfg", "model_cfg"}


def detect_version(cfg: Dict[str, Any]) -> str:
    """``"1.x"`` when the config uses MMEngine's vocabulary, else ``"0.x"``."""
    train_cfg = cfg.get("train_cfg")
    loop = isinstance(train_cfg, dict) and ("max_iters" in train_cfg or str(train_cfg.get("type", "")).endswith("Loop"))
    return "1.x" if loop or _MARKERS_1X & set(cfg) else "0.x"


def take_0x(cfg: Dict[str, Any], schema: Dict[str, Any], report: Report) -> Tuple[Dict[str, Any], Set[str]]:
    """A 0.x config's keys that rayseg reads, unchanged; its unused runtime keys reported."""
    out = {k: v for k, v in cfg.items() if k in schema}
    for name, (reason, refuse_true) in IGNORED_0X.items():
        if name in cfg:
            if refuse_true and cfg[name]:
                report.refuse(name, f"{cfg[name]!r}: {reason}")
            else:
                report.ignore(name, reason)
    # Early 0.x configs put train_cfg/test_cfg at the top; MMSeg 0.x moved them into the model (with a warning).
    for name in ("train_cfg", "test_cfg"):
        if name in cfg and isinstance(out.get("model"), dict):
            out["model"].setdefault(name, cfg[name])
            report.note(name, f"moved into model.{name}, as MMSeg 0.x does with a top-level {name}")
    # Dataset wrappers (RepeatDataset, ConcatDataset, MultiImageMixDataset) are kept: rayseg has them too.
    return out, set(schema) | set(IGNORED_0X) | {"train_cfg", "test_cfg"}


def drop_helpers(cfg: Dict[str, Any], consumed: Set[str], tree: Tree, version: str, schema: Dict[str, Any],
                 report: Report) -> None:
    """Classify every top-level name that is not a config key (see the module docstring); record in ``report``."""
    referenced = tree.referenced
    known = sorted(set(schema) | (KEYS_1X if version == "1.x" else set(IGNORED_0X)))
    for name in cfg:
        if name in consumed:
            continue
        where = tree.origins.get(name)
        if version == "1.x" and name in ZERO_X_ONLY and name not in referenced:
            report.refuse(name, f"an MMSeg 0.x key in a 1.x config, which MMSeg 1.x does not read; write "
                                f"{ZERO_X_ONLY[name]}", where)
        elif name in referenced:
            report.helpers.append(name)
            _stale_redefinition(name, tree, report)
        else:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.8) if name not in COMMON_HELPERS else []
            if close:
                report.refuse(name, f"unknown key; did you mean {close[0]!r}? (nothing reads it, so it is not a "
                                    "helper variable either)", where)
            else:
                report.ignore(name, "a top-level variable that no section uses", where)


def _stale_redefinition(name: str, tree: Tree, report: Report) -> None:
    """Note a helper redefined in a later file that only earlier files read: their sections keep the old value."""
    files: List[Any] = tree.files
    defs = [i for i, f in enumerate(files) if name in f.values]
    if len(defs) < 2:
        return
    last = defs[-1]
    readers = [i for i, f in enumerate(files) if name in f.referenced]
    if readers and all(i < last for i in readers):
        report.note(name, f"redefined in {files[last].path} but read only in {files[readers[-1]].path}: the sections "
                          "built from it keep the earlier value (MMSeg binds names as each file is read); "
                          "set those sections again in the later file", tree.origins.get(name))
