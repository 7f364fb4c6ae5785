"""``optimizer.constructor``: how a model's parameters become param groups (MMCV/MMSeg optimizer constructors).

A constructor is registered in ``OPTIMIZER_CONSTRUCTORS`` and built from ``optimizer.paramwise_cfg``: its keys
are the constructor's keyword arguments. ``constructor(model, optimizer_cls, optimizer_kwargs)`` returns the
optimizer. Every group carries ``lr_mult`` (its lr relative to ``optimizer.lr``), which the lr schedule scales.

- ``DefaultOptimizerConstructor`` (the default): MMCV's paramwise rules, one group per parameter.
- ``LearningRateDecayOptimizerConstructor`` / ``LayerDecayOptimizerConstructor``: MMSeg's layer-wise lr decay for
  ViT/ConvNeXt-style backbones, with a mapping for rayseg's ``MixVisionTransformer`` (see
  :func:`mit_layer_id`).
"""
from __future__ import annotations

import inspect
import warnings
from typing import Any, Callable, Dict, List, Optional

import torch
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from rayseg.errors import ConfigError
from rayseg.registry import OPTIMIZER_CONSTRUCTORS, check_kwargs

NORM_TYPES = (_BatchNorm, _InstanceNorm, torch.nn.GroupNorm, torch.nn.LayerNorm)


class OptimizerConstructor:
    """Base of the constructors: ``param_groups(model, base_lr, base_wd)`` → groups; calling the constructor
    builds ``optimizer_cls(groups, **optimizer_kwargs)``. ``base_wd`` is ``optimizer.weight_decay`` or None when
    the config does not set it (groups then keep the optimizer's own default, as in MMCV)."""

    def param_groups(self, model: torch.nn.Module, base_lr: float, base_wd: Optional[float]) -> List[Dict[str, Any]]:
        raise NotImplementedError

    def __call__(self, model: torch.nn.Module, optimizer_cls: type,
                 optimizer_kwargs: Dict[str, Any]) -> torch.optim.Optimizer:
        wd = optimizer_kwargs.get("weight_decay")
        groups = self.param_groups(model, float(optimizer_kwargs["lr"]), None if wd is None else float(wd))
        try:
            return optimizer_cls(groups, **optimizer_kwargs)
        except ValueError as exc:
            if "more than one parameter group" in str(exc):
                raise ConfigError("optimizer.paramwise_cfg: a parameter is shared by several modules and would "
                                  "sit in two param groups; set paramwise_cfg.bypass_duplicate: true") from exc
            raise ConfigError(f"optimizer: {exc}") from exc


@OPTIMIZER_CONSTRUCTORS.register()
class DefaultOptimizerConstructor(OptimizerConstructor):
    """MMCV's ``DefaultOptimizerConstructor``: one param group per trainable parameter.

    ``custom_keys``: ``{key: {lr_mult, decay_mult}}``; a key matches when it is a substring of the parameter's
    name, the longest matching key wins (ties alphabetically), and a matched parameter ignores the rules below.
    Otherwise, as MMCV: ``bias_lr_mult`` scales the lr of biases except those of norm layers;
    ``norm_decay_mult`` the weight decay of norm layers (BatchNorm, SyncBN, InstanceNorm, GroupNorm, LayerNorm),
    else ``dwconv_decay_mult`` that of depth-wise convolutions (``in_channels == groups``), else
    ``bias_decay_mult`` that of biases. ``bypass_duplicate`` skips a parameter shared by several modules after
    its first occurrence (instead of the optimizer refusing it).
    """

    def __init__(self, custom_keys: Optional[Dict[str, Dict[str, float]]] = None, bias_lr_mult: float = 1.0,
                 bias_decay_mult: float = 1.0, norm_decay_mult: float = 1.0, dwconv_decay_mult: float = 1.0,
                 bypass_duplicate: bool = False):
        custom_keys = custom_keys or {}
        if not isinstance(custom_keys, dict):
            raise ConfigError(f"optimizer.paramwise_cfg.custom_keys: expected a mapping, got {custom_keys!r}")
        for key, mults in custom_keys.items():
            if not isinstance(mults, dict):
                raise ConfigError(f"optimizer.paramwise_cfg.custom_keys.{key}: expected a mapping of lr_mult/"
                                  f"decay_mult, got {mults!r}")
            bad = sorted(set(mults) - {"lr_mult", "decay_mult"})
            if bad:
                raise ConfigError(f"optimizer.paramwise_cfg.custom_keys.{key}: unknown keys {bad}; "
                                  "allowed: lr_mult, decay_mult")
        self.custom_keys = custom_keys
        self.sorted_keys = sorted(custom_keys, key=lambda k: (-len(k), k))
        self.bias_lr_mult, self.bias_decay_mult = float(bias_lr_mult), float(bias_decay_mult)
        self.norm_decay_mult, self.dwconv_decay_mult = float(norm_decay_mult), float(dwconv_decay_mult)
        self.bypass_duplicate = bool(bypass_duplicate)
        self._uses_decay_mult = any("decay_mult" in m for m in custom_keys.values()) or any(
            v != 1.0 for v in (self.bias_decay_mult, self.norm_decay_mult, self.dwconv_decay_mult))

    def param_groups(self, model: torch.nn.Module, base_lr: float, base_wd: Optional[float]) -> List[Dict[str, Any]]:
        if base_wd is None and self._uses_decay_mult:
            raise ConfigError("optimizer.paramwise_cfg: a decay multiplier needs optimizer.weight_decay to be set "
                              "(MMCV: base_wd should not be None)")
        groups: List[Dict[str, Any]] = []
        seen: set = set()
        for prefix, module in model.named_modules():
            is_norm = isinstance(module, NORM_TYPES)
            is_dwconv = isinstance(module, torch.nn.Conv2d) and module.in_channels == module.groups
            for pname, param in module.named_parameters(recurse=False):
                if not param.requires_grad:
                    continue
                name = f"{prefix}.{pname}" if prefix else pname
                if id(param) in seen and self.bypass_duplicate:
                    warnings.warn(f"{name} is a duplicate; skipped since bypass_duplicate=True")
                    continue
                seen.add(id(param))
                lr_mult, decay_mult = self._multipliers(name, pname, is_norm, is_dwconv)
                group: Dict[str, Any] = {"params": [param], "lr": base_lr * lr_mult, "lr_mult": lr_mult,
                                         "name": name}
                if base_wd is not None:
                    group["weight_decay"] = base_wd * decay_mult
                groups.append(group)
        return groups

    def _multipliers(self, name: str, pname: str, is_norm: bool, is_dwconv: bool) -> tuple:
        for key in self.sorted_keys:
            if key in name:
                mults = self.custom_keys[key]
                return float(mults.get("lr_mult", 1.0)), float(mults.get("decay_mult", 1.0))
        is_bias = pname == "bias"
        lr_mult = self.bias_lr_mult if is_bias and not is_norm else 1.0
        if is_norm:
            decay_mult = self.norm_decay_mult
        elif is_dwconv:
            decay_mult = self.dwconv_decay_mult
        elif is_bias:
            decay_mult = self.bias_decay_mult
        else:
            decay_mult = 1.0
        return lr_mult, decay_mult


# ----------------------------------------------------------------------------------------------------------------
# Layer-wise lr decay (MMSeg's mmseg/core/optimizers/layer_decay_optimizer_constructor.py). A layer id is taken
# from the parameter's name; with N = paramwise_cfg.num_layers, a parameter of layer id i gets
# lr_mult = decay_rate^(N + 1 − i): the head (id N + 1) keeps the full lr, the stem (id 0) is decayed most.


def convnext_layer_id(name: str, max_layer_id: int) -> int:
    """MMSeg's ``get_layer_id_for_convnext`` (``layer_wise``): stem 0, stage 0 → 1, stage 1 → 2, stage 2 block b →
    3 + b // 3, stage 3 → N; anything outside the backbone → N + 1."""
    if name in ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed"):
        return 0
    if name.startswith("backbone.downsample_layers"):
        stage = int(name.split(".")[2])
        return {0: 0, 1: 2, 2: 3}.get(stage, max_layer_id)
    if name.startswith("backbone.stages"):
        stage, block = int(name.split(".")[2]), int(name.split(".")[3])
        return {0: 1, 1: 2, 2: 3 + block // 3}.get(stage, max_layer_id)
    return max_layer_id + 1


def convnext_stage_id(name: str, max_stage_id: int) -> int:
    """MMSeg's ``get_stage_id_for_convnext`` (``stage_wise``; ``max_stage_id`` is N + 2): downsampling layers 0,
    stage s → s + 1, anything outside the backbone → N + 1."""
    if name in ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed"):
        return 0
    if name.startswith("backbone.downsample_layers"):
        return 0
    if name.startswith("backbone.stages"):
        return int(name.split(".")[2]) + 1
    return max_stage_id - 1


def vit_layer_id(name: str, max_layer_id: int) -> int:
    """MMSeg's ``get_layer_id_for_vit`` (``max_layer_id`` is N + 2): tokens and patch embedding 0, block i → i + 1,
    anything else → N + 1."""
    if name in ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed"):
        return 0
    if name.startswith("backbone.patch_embed"):
        return 0
    if name.startswith("backbone.layers"):
        return int(name.split(".")[2]) + 1
    return max_layer_id - 1


def mit_layer_id(name: str, num_layers: int, depths: List[int], decay_type: str) -> int:
    """Layer ids for rayseg's ``MixVisionTransformer`` (SegFormer's MiT), whose parameters are named
    ``backbone.layers.<stage>.<0: patch embedding | 1: blocks | 2: stage norm>...``.

    ``layer_wise`` numbers the transformer blocks 1..sum(depths) across stages (MiT-B0: 8, so ``num_layers: 8``);
    the first patch embedding (the stem) is 0, a later stage's patch embedding shares the id of that stage's
    first block (it feeds it, as ConvNeXt's downsampling layers do), a stage's norm the id of its last block.
    ``stage_wise``: everything in stage s is s + 1 (``num_layers: 4``). Outside the backbone: N + 1.
    """
    if not name.startswith("backbone."):
        return num_layers + 1
    parts = name.split(".")
    if len(parts) < 4 or parts[1] != "layers" or not parts[2].isdigit():
        return 0
    stage, part = int(parts[2]), parts[3]
    if decay_type == "stage_wise":
        return stage + 1
    before = sum(depths[:stage])
    if part == "0":  # patch embedding
        return 0 if stage == 0 else before + 1
    if part == "1":  # block j of this stage
        return before + int(parts[4]) + 1
    return before + depths[stage]  # the stage's norm


@OPTIMIZER_CONSTRUCTORS.register()
class LearningRateDecayOptimizerConstructor(OptimizerConstructor):
    """MMSeg's layer-wise lr decay: ``paramwise_cfg: {num_layers, decay_rate, decay_type}``.

    Groups are ``layer_<id>_decay`` / ``layer_<id>_no_decay``; ``no_decay`` (weight decay 0) holds 1-D parameters
    and biases, as in MMSeg. ``lr_mult = decay_rate^(num_layers + 1 − id)``. ``decay_type``: ``layer_wise`` for
    ConvNeXt (backbone class name containing ConvNeXt), BEiT/MAE-style ViTs and MixVisionTransformer,
    ``stage_wise`` for ConvNeXt and MixVisionTransformer. The layer id comes from the parameter's name:
    :func:`convnext_layer_id`, :func:`convnext_stage_id`, :func:`vit_layer_id`, :func:`mit_layer_id`.
    """

    def __init__(self, num_layers: int, decay_rate: float, decay_type: str = "layer_wise"):
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ConfigError(f"optimizer.paramwise_cfg.num_layers: expected a positive int, got {num_layers!r}")
        if isinstance(decay_rate, bool) or not isinstance(decay_rate, (int, float)) or decay_rate <= 0:
            raise ConfigError(f"optimizer.paramwise_cfg.decay_rate: expected a positive number, got {decay_rate!r}")
        if decay_type not in ("layer_wise", "stage_wise", "layer_wise_vit"):
            raise ConfigError(f"optimizer.paramwise_cfg.decay_type: expected layer_wise or stage_wise, got "
                              f"{decay_type!r}")
        self.num_layers, self.decay_rate, self.decay_type = num_layers, float(decay_rate), decay_type

    def layer_id_function(self, model: torch.nn.Module) -> Callable[[str], int]:
        """``name → layer id`` for this model's backbone (MMSeg dispatches on the backbone's class name)."""
        backbone = getattr(model, "backbone", None)
        kind = type(backbone).__name__ if backbone is not None else type(model).__name__
        n, total = self.num_layers, self.num_layers + 2
        if kind == "MixVisionTransformer":
            depths = [len(stage[1]) for stage in backbone.layers]
            needed = len(depths) if self.decay_type == "stage_wise" else sum(depths)
            if n < needed:
                raise ConfigError(f"optimizer.paramwise_cfg.num_layers: {n} is fewer than the backbone's "
                                  f"{needed} {'stages' if self.decay_type == 'stage_wise' else 'blocks'} "
                                  f"(MixVisionTransformer depths {depths})")
            decay_type = "stage_wise" if self.decay_type == "stage_wise" else "layer_wise"
            return lambda name: mit_layer_id(name, n, depths, decay_type)
        if self.decay_type == "stage_wise":
            if "ConvNeXt" in kind:
                return lambda name: convnext_stage_id(name, total)
        elif "ConvNeXt" in kind:
            return lambda name: convnext_layer_id(name, n)
        elif "BEiT" in kind or "MAE" in kind:
            return lambda name: vit_layer_id(name, total)
        raise ConfigError(f"optimizer.constructor: {type(self).__name__} with decay_type {self.decay_type} has no "
                          f"layer mapping for backbone {kind}; supported: MixVisionTransformer (layer_wise, "
                          "stage_wise), ConvNeXt-named backbones (layer_wise, stage_wise), BEiT/MAE-named ViTs "
                          "(layer_wise)")

    def param_groups(self, model: torch.nn.Module, base_lr: float, base_wd: Optional[float]) -> List[Dict[str, Any]]:
        layer_id = self.layer_id_function(model)
        total = self.num_layers + 2
        groups: Dict[str, Dict[str, Any]] = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            # As MMSeg (the name test compares full names, so only 1-D parameters and biases match in practice).
            no_decay = len(param.shape) == 1 or name.endswith(".bias") or name in ("pos_embed", "cls_token")
            lid = layer_id(name)
            group_name = f"layer_{lid}_{'no_decay' if no_decay else 'decay'}"
            if group_name not in groups:
                scale = self.decay_rate ** (total - lid - 1)
                groups[group_name] = {"params": [], "param_names": [], "lr": scale * base_lr, "lr_mult": scale,
                                      "name": group_name, "layer_id": lid}
                if no_decay:
                    groups[group_name]["weight_decay"] = 0.0
                elif base_wd is not None:
                    groups[group_name]["weight_decay"] = base_wd
            groups[group_name]["params"].append(param)
            groups[group_name]["param_names"].append(name)
        return list(groups.values())


@OPTIMIZER_CONSTRUCTORS.register()
class LayerDecayOptimizerConstructor(LearningRateDecayOptimizerConstructor):
    """MMSeg's older spelling for BEiT-style ViTs: ``paramwise_cfg: {num_layers, layer_decay_rate}``, always
    ``layer_wise`` (MMSeg deprecates it in favour of ``LearningRateDecayOptimizerConstructor``)."""

    def __init__(self, num_layers: int, layer_decay_rate: float):
        super().__init__(num_layers=num_layers, decay_rate=layer_decay_rate, decay_type="layer_wise")


def build_constructor(name: Any, paramwise_cfg: Dict[str, Any]) -> OptimizerConstructor:
    """The constructor ``optimizer.constructor`` names, with ``paramwise_cfg`` as its arguments."""
    if not isinstance(name, str):
        raise ConfigError(f"optimizer.constructor: expected a constructor name, got {name!r}")
    try:
        cls = OPTIMIZER_CONSTRUCTORS.get(name)
    except ConfigError as exc:
        raise ConfigError(f"optimizer.constructor: {exc}") from None
    if not isinstance(paramwise_cfg, dict):
        raise ConfigError(f"optimizer.paramwise_cfg: expected a mapping, got {paramwise_cfg!r}")
    try:
        check_kwargs(cls, paramwise_cfg, f"constructor {name!r}")
    except ConfigError as exc:
        raise ConfigError(f"optimizer.paramwise_cfg: {exc}") from None
    missing = [p.name for p in inspect.signature(cls).parameters.values()
               if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               and p.name not in paramwise_cfg]
    if missing:
        raise ConfigError(f"optimizer.paramwise_cfg.{missing[0]}: required by constructor {name!r}")
    return cls(**paramwise_cfg)
