"""Key renaming for official backbone releases, as MMSeg's ``tools/model_converters/`` (``jobs/convert_weights.py``).

Each converter takes the release's state dict (tensors under the original authors' key names) and returns the
state dict under MMSeg's key names, which are rayseg's: the result loads as ``pretrained`` /
``init_cfg: {type: Pretrained}`` of the backbone. Renaming follows MMSeg 1.x's scripts exactly, including the
tensors they reshape or reorder; classifier heads (``head.*``) are dropped.

================  =============================  ======================  ===============================
kind              release                        MMSeg script            rayseg backbone
================  =============================  ======================  ===============================
``mit``           SegFormer (NVlabs) MiT-B0…B5   ``mit2mmseg.py``        ``MixVisionTransformer``
``swin``          Swin Transformer (Microsoft)   ``swin2mmseg.py``       ``SwinTransformer``
``vit``           timm / DeiT ViT                ``vit2mmseg.py``        ``VisionTransformer``
``beit``          BEiT (Microsoft, unilm)        ``beit2mmseg.py``       not yet (MMSeg's ``BEiT``)
``stdc1``/``2``   STDC (MichaelFan01)            ``stdc2mmseg.py``       ``STDCNet``
================  =============================  ======================  ===============================

Keys are converted to MMSeg's names, which rayseg's backbones keep (``tests/models/test_mmseg_equivalence.py``
compares with MMSeg); BEiT, which rayseg does not have yet, gets MMSeg's ``BEiT`` names.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Dict

import torch

from rayseg.errors import ConfigError

StateDict = Dict[str, torch.Tensor]


def convert_mit(ckpt: StateDict) -> StateDict:
    """SegFormer's MiT (``patch_embed1``, ``block1.0.attn.q``/``kv``, ``mlp.fc1``/``dwconv``, ``norm1``) → MMSeg's
    ``MixVisionTransformer`` (``layers.0.0``/``.1``/``.2``; q and kv concatenated into ``attn.attn.in_proj_*``;
    the MLP's linear layers as 1×1 convolutions)."""
    new_ckpt: StateDict = OrderedDict()
    for k, v in ckpt.items():
        if k.startswith("head"):
            continue
        if k.startswith("patch_embed"):
            stage_i = int(k.split(".")[0].replace("patch_embed", ""))
            new_k = k.replace(f"patch_embed{stage_i}", f"layers.{stage_i - 1}.0")
            new_v = v
            if "proj." in new_k:
                new_k = new_k.replace("proj.", "projection.")
        elif k.startswith("block"):
            stage_i = int(k.split(".")[0].replace("block", ""))
            new_k = k.replace(f"block{stage_i}", f"layers.{stage_i - 1}.1")
            new_v = v
            if "attn.q." in new_k:
                sub_item_k = k.replace("q.", "kv.")
                new_k = new_k.replace("q.", "attn.in_proj_")
                new_v = torch.cat([v, ckpt[sub_item_k]], dim=0)
            elif "attn.kv." in new_k:
                continue
            elif "attn.proj." in new_k:
                new_k = new_k.replace("proj.", "attn.out_proj.")
            elif "mlp." in new_k:
                new_k = new_k.replace("mlp.", "ffn.layers.")
                if "fc1.weight" in new_k or "fc2.weight" in new_k:
                    new_v = v.reshape((*v.shape, 1, 1))
                new_k = new_k.replace("fc1.", "0.")
                new_k = new_k.replace("dwconv.dwconv.", "1.")
                new_k = new_k.replace("fc2.", "4.")
        elif k.startswith("norm"):
            stage_i = int(k.split(".")[0].replace("norm", ""))
            new_k = k.replace(f"norm{stage_i}", f"layers.{stage_i - 1}.2")
            new_v = v
        else:
            new_k, new_v = k, v
        new_ckpt[new_k] = new_v
    return new_ckpt


def _swin_reduction_order(x: torch.Tensor) -> torch.Tensor:
    # Swin's PatchMerging concatenates the 2×2 neighbours as (0,0),(1,0),(0,1),(1,1); MMSeg's nn.Unfold
    # gives them channel-major in (0,0),(0,1),(1,0),(1,1) order.
    out_channel, in_channel = x.shape
    x = x.reshape(out_channel, 4, in_channel // 4)
    return x[:, [0, 2, 1, 3], :].transpose(1, 2).reshape(out_channel, in_channel)


def _swin_norm_order(x: torch.Tensor) -> torch.Tensor:
    in_channel = x.shape[0]
    x = x.reshape(4, in_channel // 4)
    return x[[0, 2, 1, 3], :].transpose(0, 1).reshape(in_channel)


def convert_swin(ckpt: StateDict) -> StateDict:
    """Microsoft's Swin (``layers.N.blocks.M.attn``, ``mlp.fc1``, ``downsample.reduction``) → MMSeg's
    ``SwinTransformer`` (``stages.N.blocks.M.attn.w_msa``, ``ffn.layers.0.0``/``ffn.layers.1``; the patch-merging
    weights reordered for ``nn.Unfold``)."""
    new_ckpt: StateDict = OrderedDict()
    for k, v in ckpt.items():
        if k.startswith("head"):
            continue
        new_v = v
        if k.startswith("layers"):
            if "attn." in k:
                new_k = k.replace("attn.", "attn.w_msa.")
            elif "mlp." in k:
                if "mlp.fc1." in k:
                    new_k = k.replace("mlp.fc1.", "ffn.layers.0.0.")
                elif "mlp.fc2." in k:
                    new_k = k.replace("mlp.fc2.", "ffn.layers.1.")
                else:
                    new_k = k.replace("mlp.", "ffn.")
            elif "downsample" in k:
                new_k = k
                if "reduction." in k:
                    new_v = _swin_reduction_order(v)
                elif "norm." in k:
                    new_v = _swin_norm_order(v)
            else:
                new_k = k
            new_k = new_k.replace("layers", "stages", 1)
        elif k.startswith("patch_embed"):
            new_k = k.replace("proj", "projection") if "proj" in k else k
        else:
            new_k = k
        new_ckpt[new_k] = new_v
    return new_ckpt


def convert_vit(ckpt: StateDict) -> StateDict:
    """timm's ViT/DeiT (``blocks.N.attn.qkv``, ``norm1``, ``mlp.fc1``, final ``norm``) → MMSeg's
    ``VisionTransformer`` (``layers.N.attn.attn.in_proj_*``, ``ln1``, ``ffn.layers.0.0``, final ``ln1``)."""
    new_ckpt: StateDict = OrderedDict()
    for k, v in ckpt.items():
        if k.startswith("head"):
            continue
        if k.startswith("norm"):
            new_k = k.replace("norm.", "ln1.")
        elif k.startswith("patch_embed"):
            new_k = k.replace("proj", "projection") if "proj" in k else k
        elif k.startswith("blocks"):
            if "norm" in k:
                new_k = k.replace("norm", "ln")
            elif "mlp.fc1" in k:
                new_k = k.replace("mlp.fc1", "ffn.layers.0.0")
            elif "mlp.fc2" in k:
                new_k = k.replace("mlp.fc2", "ffn.layers.1")
            elif "attn.qkv" in k:
                new_k = k.replace("attn.qkv.", "attn.attn.in_proj_")
            elif "attn.proj" in k:
                new_k = k.replace("attn.proj", "attn.attn.out_proj")
            else:
                new_k = k
            new_k = new_k.replace("blocks.", "layers.")
        else:
            new_k = k
        new_ckpt[new_k] = v
    return new_ckpt


def convert_beit(ckpt: StateDict) -> StateDict:
    """Microsoft's BEiT (``blocks.N.norm1``, ``mlp.fc1``, ``patch_embed.proj``) → MMSeg's ``BEiT`` (``layers.N.ln1``,
    ``ffn.layers.0.0``, ``patch_embed.projection``). MMSeg's script also keeps a copy of ``patch_embed.proj.*``
    under its old name, which MMSeg's loader then ignores; that copy is left out here."""
    new_ckpt: StateDict = OrderedDict()
    for k, v in ckpt.items():
        if k.startswith("patch_embed"):
            new_ckpt[k.replace("patch_embed.proj", "patch_embed.projection")] = v
        elif k.startswith("blocks"):
            new_key = k.replace("blocks", "layers")
            if "norm" in new_key:
                new_key = new_key.replace("norm", "ln")
            elif "mlp.fc1" in new_key:
                new_key = new_key.replace("mlp.fc1", "ffn.layers.0.0")
            elif "mlp.fc2" in new_key:
                new_key = new_key.replace("mlp.fc2", "ffn.layers.1")
            new_ckpt[new_key] = v
        else:
            new_ckpt[k] = v
    return new_ckpt


_STDC_STAGES = {
    "stdc1": ["0", "1", "2.0", "2.1", "3.0", "3.1", "4.0", "4.1"],
    "stdc2": ["0", "1", "2.0", "2.1", "2.2", "2.3", "3.0", "3.1", "3.2", "3.3", "3.4", "4.0", "4.1", "4.2"],
}


def _convert_stdc(ckpt: StateDict, kind: str) -> StateDict:
    """STDC's ImageNet release (``features.N``, ``conv_list``, ``avd_layer``) → MMSeg's ``STDCNet``
    (``stages.<stage>.<block>``, ``layers``, ``downsample.conv``/``.bn``); keys outside the feature
    extractor (the classifier) are dropped, as MMSeg's script does."""
    stage_lst = _STDC_STAGES[kind]
    new_state_dict: StateDict = OrderedDict()
    for ori_k, v in ckpt.items():
        k = ori_k
        flag = False
        if "cp." in k:
            k = k.replace("cp.", "")
        if "features." in k:
            num_layer = int(k.split(".")[1])
            if num_layer >= len(stage_lst):
                raise ConfigError(f"{ori_k}: layer {num_layer} does not exist in {kind.upper()} "
                                  f"({len(stage_lst)} layers); is this the other STDC variant?")
            k = k.replace(f"features.{num_layer}.", f"stages.{stage_lst[num_layer]}.")
            flag = True
        if "conv_list" in k:
            k = k.replace("conv_list", "layers")
            flag = True
        if "avd_layer." in k:
            if "avd_layer.0" in k:
                k = k.replace("avd_layer.0", "downsample.conv")
            elif "avd_layer.1" in k:
                k = k.replace("avd_layer.1", "downsample.bn")
            flag = True
        if flag:
            new_state_dict[k] = v
    return new_state_dict


CONVERTERS: Dict[str, Callable[[StateDict], StateDict]] = {
    "mit": convert_mit,
    "swin": convert_swin,
    "vit": convert_vit,
    "beit": convert_beit,
    "stdc1": lambda ckpt: _convert_stdc(ckpt, "stdc1"),
    "stdc2": lambda ckpt: _convert_stdc(ckpt, "stdc2"),
}


def convert_state_dict(kind: str, state_dict: StateDict) -> StateDict:
    """Rename ``state_dict``'s keys for ``kind`` (a key of ``CONVERTERS``); errors name the kind or key."""
    key = str(kind).lower()
    if key not in CONVERTERS:
        raise ConfigError(f"unknown weights kind {kind!r}; use one of {', '.join(CONVERTERS)}")
    try:
        out = CONVERTERS[key](state_dict)
    except KeyError as exc:
        raise ConfigError(f"{kind}: the checkpoint lacks {exc.args[0]!r}, which the {kind} release always has; "
                          f"is it a {kind} checkpoint?") from None
    except (ValueError, RuntimeError, IndexError) as exc:
        raise ConfigError(f"{kind}: cannot convert this checkpoint ({exc}); is it a {kind} checkpoint?") from None
    if not out:
        raise ConfigError(f"{kind}: no key of this checkpoint is a {kind} backbone key (first keys: "
                          f"{list(state_dict)[:5]}); is it a {kind} checkpoint?")
    return out
