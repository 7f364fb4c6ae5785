"""Pretrained weights: where a checkpoint name points, fetching it, and loading it into a module.

MMSeg configs name weights in several ways, all accepted here as mmcv/mmengine's ``CheckpointLoader``
does: a local path, an ``http(s)://`` URL, ``torchvision://resnet50`` and ``open-mmlab://resnet50_v1c``;
storage URIs (``s3://``, ``gs://``, ``file://``) are read through pyarrow. Downloads land once in the
torch hub cache (``$TORCH_HOME/hub/checkpoints``) and later runs reuse them. Every file is opened by
``rayseg.engine.checkpoint.read_checkpoint`` (the one safe reader). Nothing is fetched at import time:
names are only resolved when a model is built.
"""
from __future__ import annotations

import logging
import os
import re
import urllib.parse
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from rayseg.engine.checkpoint import is_storage_uri, read_checkpoint
from rayseg.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

# mmcv's model-zoo table (mmcv/model_zoo/open_mmlab.json, mmengine/hub/openmmlab.json), limited to the
# weights MMSeg's configs name (``pretrained='open-mmlab://resnet50_v1c'``, ``'open-mmlab://msra/hrnetv2_w18'``).
OPEN_MMLAB_URLS: Dict[str, str] = {
    "resnet18_v1c": "https://download.openmmlab.com/pretrain/third_party/resnet18_v1c-b5776b93.pth",
    "resnet50_v1c": "https://download.openmmlab.com/pretrain/third_party/resnet50_v1c-2cccc1ad.pth",
    "resnet101_v1c": "https://download.openmmlab.com/pretrain/third_party/resnet101_v1c-e67eebb6.pth",
    # ResNeXt ImageNet weights (``{type: ResNeXt, depth: 101, groups: 32, base_width: 4}``)
    "resnext50_32x4d": "https://download.openmmlab.com/pretrain/third_party/resnext50-32x4d-0ab1a123.pth",
    "resnext101_32x4d": "https://download.openmmlab.com/pretrain/third_party/resnext101_32x4d-a5af3160.pth",
    "resnext101_64x4d": "https://download.openmmlab.com/pretrain/third_party/resnext101_64x4d-ee2c6f71.pth",
    # HRNetV2 ImageNet weights (MSRA), as MMSeg's fcn_hr* and ocrnet_hr* configs name them.
    "msra/hrnetv2_w18_small": "https://download.openmmlab.com/pretrain/third_party/hrnetv2_w18_small-b5a04e21.pth",
    "msra/hrnetv2_w18": "https://download.openmmlab.com/pretrain/third_party/hrnetv2_w18-00eb2006.pth",
    "msra/hrnetv2_w32": "https://download.openmmlab.com/pretrain/third_party/hrnetv2_w32-dc9eeb4f.pth",
    "msra/hrnetv2_w40": "https://download.openmmlab.com/pretrain/third_party/hrnetv2_w40-ed0b031c.pth",
    "msra/hrnetv2_w48": "https://download.openmmlab.com/pretrain/third_party/hrnetv2_w48-d2186c55.pth",
    # MobileNetV3 ImageNet weights, as MMSeg's mobilenet_v3 (LR-ASPP) configs name them.
    "contrib/mobilenet_v3_large": "https://download.openmmlab.com/pretrain/third_party/mobilenet_v3_large-bc2c3fd3.pth",
    "contrib/mobilenet_v3_small": "https://download.openmmlab.com/pretrain/third_party/mobilenet_v3_small-47085aa1.pth",
}

_URL_SCHEMES = ("http://", "https://")
_OPEN_MMLAB_SCHEMES = ("open-mmlab://", "openmmlab://")  # mmcv accepts both spellings
_TORCHVISION_SCHEMES = ("torchvision://", "modelzoo://")  # modelzoo:// is mmcv's deprecated alias


class CheckpointDownloadError(CheckpointError, ConfigError):
    """A remote checkpoint could not be fetched.

    Also a ``ConfigError`` because the fix is in the config: another name, or a local path.
    """


def _not_local(name: str, why: str) -> ConfigError:
    return ConfigError(f"pretrained checkpoint {name!r} is not a local file and {why}")


def _torchvision_url(name: str, spec: str) -> str:
    """URL of ``torchvision://<model>[.<weights>]``, e.g. ``resnet50`` or ``resnet50.imagenet1k_v2``.

    A bare model name means torchvision's first ImageNet weights (``IMAGENET1K_V1``): that is what
    ``torchvision://resnet50`` meant before torchvision 0.13 and what MMSeg's configs were tuned with.
    """
    import torchvision.models  # imported here: only a torchvision:// name needs it

    # mmengine also accepts the enum spelling ``ResNet50_Weights.IMAGENET1K_V2``.
    spec = spec.lower().replace("_weights", "")
    model, _, tag = spec.partition(".")
    try:
        weights = torchvision.models.get_model_weights(model)
    except Exception:  # torchvision raises ValueError or KeyError depending on the version
        raise _not_local(name, f"torchvision has no model {model!r} with weights") from None
    if not tag:
        tag = "imagenet1k_v1" if "IMAGENET1K_V1" in weights.__members__ else "default"
    if tag == "default":
        return weights.DEFAULT.url
    by_tag = {w.name.lower(): w for w in weights}
    if tag not in by_tag:
        raise _not_local(name, f"{weights.__name__} has no {tag.upper()}; choose one of "
                               f"{sorted(by_tag)} or 'default'")
    return by_tag[tag].url


def resolve_checkpoint_url(name: str) -> Optional[str]:
    """The download URL a checkpoint name stands for, or None for a local path or a storage URI
    (``s3://``, ``gs://``, ``file://``: read in place, not downloaded).

    Raises ``ConfigError`` for an unknown ``open-mmlab://`` / ``torchvision://`` name or an
    unsupported ``scheme://``, listing what is accepted.
    """
    if not isinstance(name, str):
        raise ConfigError(f"checkpoint must be a path or URL string, got {name!r}")
    if is_storage_uri(name):
        return None
    if name.startswith(_URL_SCHEMES):
        return name
    for scheme in _OPEN_MMLAB_SCHEMES:
        if name.startswith(scheme):
            key = name[len(scheme):]
            if key not in OPEN_MMLAB_URLS:
                raise _not_local(name, f"not a known {scheme} name (known: {', '.join(sorted(OPEN_MMLAB_URLS))}); "
                                       "give a URL or a local path")
            return OPEN_MMLAB_URLS[key]
    for scheme in _TORCHVISION_SCHEMES:
        if name.startswith(scheme):
            return _torchvision_url(name, name[len(scheme):])
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", name):
        raise _not_local(name, "its scheme is not supported (use a local path, http(s)://, s3://, gs://, "
                               "file://, torchvision:// or open-mmlab://)")
    return None


def fetch_checkpoint(url: str, name: Optional[str] = None) -> str:
    """Download ``url`` into the torch hub cache (reused when already there); returns the local file.

    Named by the URL's file name, as ``torch.hub.load_state_dict_from_url`` does; no hash check, as in
    mmcv's ``load_from_http`` (a file name from an arbitrary URL need not carry torch hub's sha256-prefix
    suffix). The file is written under a temporary name and renamed, so an interrupted download never
    leaves a truncated file to be reused. Raises ``CheckpointDownloadError`` naming the URL.
    """
    label = url if name is None or name == url else f"{name} ({url})"
    folder = os.path.join(torch.hub.get_dir(), "checkpoints")
    cached = os.path.join(folder, os.path.basename(urllib.parse.urlparse(url).path) or "checkpoint.pth")
    if os.path.isfile(cached):
        return cached
    logger.info("downloading checkpoint %s into the torch hub cache %s", label, folder)
    try:
        os.makedirs(folder, exist_ok=True)
        # progress=False: a progress bar from every Ray worker would flood the driver's log.
        torch.hub.download_url_to_file(url, cached, progress=False)
    except Exception as exc:  # urllib and OS errors all mean "could not get the weights"
        raise CheckpointDownloadError(
            f"cannot download checkpoint {label}: {exc}. Without network access, either copy the file to "
            f"{cached} (the torch hub cache, where it is found without downloading; TORCH_HOME moves it) or give "
            f"the checkpoint as a local path (e.g. --cfg-options model.pretrained=/path/to/file.pth)") from exc
    return cached


def extract_state_dict(payload: Any, source: str) -> Dict[str, torch.Tensor]:
    """The tensors of a checkpoint: under ``state_dict``/``model`` or bare; DDP's ``module.`` removed."""
    state = payload
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise CheckpointError(f"{source} holds no state_dict")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}


def select_prefix(state: Dict[str, torch.Tensor], prefix: str, source: str) -> Dict[str, torch.Tensor]:
    """Keys under ``prefix`` with it removed (``backbone.layer1…`` → ``layer1…``), as mmengine's init_cfg."""
    if not prefix.endswith("."):
        prefix += "."
    selected = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not selected:
        tops = sorted({k.split(".", 1)[0] + "." for k in state})[:8]
        raise CheckpointError(f"{source}: no key starts with prefix {prefix!r} (keys start with {tops})")
    return selected


# Local files MMSeg's configs name (``pretrain/...``): converted from a release by MMSeg's
# tools/model_converters; here by jobs/convert_weights.py, which renames the keys the same way.
LOCAL_PRETRAINED: Dict[str, str] = {
    "beit_base_patch16_224_pt22k_ft22k.pth":
        "Microsoft's BEiT release https://conversationhub.blob.core.windows.net/beit-share-public/beit/"
        "beit_base_patch16_224_pt22k_ft22k.pth converted with "
        "`python jobs/convert_weights.py beit SRC pretrain/beit_base_patch16_224_pt22k_ft22k.pth`",
    "beit_large_patch16_224_pt22k_ft22k.pth":
        "Microsoft's BEiT release https://conversationhub.blob.core.windows.net/beit-share-public/beit/"
        "beit_large_patch16_224_pt22k_ft22k.pth converted with "
        "`python jobs/convert_weights.py beit SRC pretrain/beit_large_patch16_224_pt22k_ft22k.pth`",
    "jx_vit_large_p16_384-b3be5167.pth":
        "timm's ViT-L/16 at 384² https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-vitjx/"
        "jx_vit_large_p16_384-b3be5167.pth converted with "
        "`python jobs/convert_weights.py vit SRC pretrain/jx_vit_large_p16_384-b3be5167.pth`",
    "vit_large_p16.pth":
        "timm's ViT-L/16 at 384² https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-vitjx/"
        "jx_vit_large_p16_384-b3be5167.pth converted with "
        "`python jobs/convert_weights.py vit SRC pretrain/vit_large_p16.pth`",
}
LOCAL_PRETRAINED.update({
    f"mit_b{i}.pth": f"NVIDIA's SegFormer ImageNet mit_b{i}.pth converted with "
                     f"`python jobs/convert_weights.py mit SRC pretrain/mit_b{i}.pth` (or use MMSeg 1.x's "
                     f"release URL, as the zoo configs do)" for i in range(6)})


def local_pretrained_hint(name: str) -> str:
    """How to make the local pretrained file ``name`` (one MMSeg's configs name), or a generic remedy."""
    how = LOCAL_PRETRAINED.get(os.path.basename(str(name)))
    if how:
        return f"it is {how} (relative paths are read from the working directory)"
    return "give an existing path, a URL or a model-zoo name, or null to train from scratch"


def _check_local_file(name: str) -> None:
    """A missing local checkpoint is an error saying how to make it (MMSeg's ``pretrain/...`` files)."""
    if isinstance(name, str) and not is_storage_uri(name) and resolve_checkpoint_url(name) is None:
        local = os.path.expanduser(name)
        if not os.path.exists(local):
            raise CheckpointError(f"checkpoint file not found: {name}; {local_pretrained_hint(name)}")


def _is_norm_counter(key: str) -> bool:
    # BatchNorm's step counter: absent from old checkpoints and unused by training, so never reported; likewise
    # the relative position index buffers a transformer computes from its own grid (BEiT/Swin drop the
    # checkpoint's on load, as MMSeg's).
    return key.endswith("num_batches_tracked") or key.endswith("relative_position_index")


def compare_keys(own: Dict[str, torch.Tensor], state: Dict[str, torch.Tensor]
                 ) -> Tuple[List[str], List[str], List[Tuple[str, tuple, tuple]]]:
    """``(missing, unexpected, shape_mismatches)`` of ``state`` against a module's ``own`` state dict."""
    missing = [k for k in own if k not in state and not _is_norm_counter(k)]
    unexpected = [k for k in state if k not in own]
    mismatched = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items()
                  if k in own and tuple(v.shape) != tuple(own[k].shape)]
    return missing, unexpected, mismatched


def format_mismatches(mismatched: List[Tuple[str, tuple, tuple]], limit: int = 10) -> str:
    """``key: checkpoint (a, b) vs model (c, d)`` for the first ``limit`` entries."""
    text = "; ".join(f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in mismatched[:limit])
    return text + (f"; … {len(mismatched) - limit} more" if len(mismatched) > limit else "")


def _short(keys: List[str], limit: int = 20) -> str:
    return str(keys[:limit]) + (f" … {len(keys) - limit} more" if len(keys) > limit else "")


def load_pretrained_weights(module: nn.Module, checkpoint: str, prefix: Optional[str] = None) -> None:
    """Load ``checkpoint`` into ``module`` the way MMSeg's ``init_cfg=Pretrained`` does (non-strict).

    ``prefix`` picks one part of a whole-segmentor checkpoint (``backbone.``). Missing and unexpected
    keys are reported with ``warnings.warn``; a shape mismatch is a ``CheckpointError`` naming the
    keys, since silently keeping random weights there would waste a training run.
    """
    _check_local_file(checkpoint)
    state = extract_state_dict(read_checkpoint(checkpoint), checkpoint)
    if prefix:
        state = select_prefix(state, prefix, checkpoint)
    adapt = getattr(module, "adapt_pretrained_state", None)
    if callable(adapt):
        # A backbone that reshapes what it loads as MMSeg's does (ViT's pos_embed, BEiT's relative position
        # bias tables, pretrained at 224² or 384² and loaded into a model of another size).
        state = adapt(dict(state))
    own = module.state_dict()
    if not hasattr(module, "fc"):
        # An ImageNet classifier's head (torchvision ``fc.*``) has no place in a backbone: dropping it
        # is expected, not a mismatch worth a warning.
        dropped = [k for k in state if k.startswith("fc.")]
        if dropped:
            logger.info("%s: ignoring classifier keys %s", checkpoint, dropped)
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    missing, unexpected, mismatched = compare_keys(own, state)
    if mismatched:
        raise CheckpointError(f"{checkpoint}: shape mismatch loading into {type(module).__name__}: "
                              f"{format_mismatches(mismatched)}")
    if not set(state) & {k for k in own if not _is_norm_counter(k)}:
        raise CheckpointError(f"{checkpoint}: no key matches {type(module).__name__}"
                              + (f" (keys start with {prefix!r})" if prefix else " (set init_cfg prefix?)"))
    if missing or unexpected:
        warnings.warn(f"{checkpoint} loaded into {type(module).__name__} with mismatched keys: "
                      f"missing keys {_short(missing)}, unexpected keys {_short(unexpected)}", stacklevel=3)
    module.load_state_dict(state, strict=False)


def _is_pretrained_init(init_cfg: Any) -> bool:
    return isinstance(init_cfg, dict) and init_cfg.get("type") == "Pretrained"


def pretrained_sources(cfg: Any, where: str = "model") -> List[Tuple[str, Any]]:
    """Every ``(key path, checkpoint)`` a model config names, at any depth: each ``pretrained`` that is set
    and each ``init_cfg: {type: Pretrained, checkpoint}`` (also inside an ``init_cfg`` list), e.g.
    ``model.backbone.backbone_cfg.init_cfg.checkpoint`` for STDC's and BiSeNetV1's inner backbones."""
    found: List[Tuple[str, Any]] = []
    if isinstance(cfg, dict):
        for key, value in cfg.items():
            path = f"{where}.{key}"
            if key == "pretrained" and value is not None:
                found.append((path, value))
            elif key == "init_cfg":
                inits = value if isinstance(value, list) else [value]
                for i, init in enumerate(inits):
                    if _is_pretrained_init(init):
                        found.append((f"{path}[{i}].checkpoint" if isinstance(value, list) else f"{path}.checkpoint",
                                      init.get("checkpoint")))
            else:
                found.extend(pretrained_sources(value, path))
    elif isinstance(cfg, list):
        for i, item in enumerate(cfg):
            found.extend(pretrained_sources(item, f"{where}[{i}]"))
    return found


def strip_pretrained(cfg: Any) -> Any:
    """A copy of a model config with every ``pretrained`` set to None and every Pretrained ``init_cfg`` removed,
    at any depth (an inner ``backbone_cfg`` too); other ``init_cfg`` entries are kept."""
    if isinstance(cfg, list):
        return [strip_pretrained(item) for item in cfg]
    if not isinstance(cfg, dict):
        return cfg
    out = {}
    for key, value in cfg.items():
        if key == "pretrained":
            out[key] = None
        elif key == "init_cfg" and _is_pretrained_init(value):
            out[key] = None
        elif key == "init_cfg" and isinstance(value, list):
            kept = [strip_pretrained(v) for v in value if not _is_pretrained_init(v)]
            out[key] = kept or None
        else:
            out[key] = strip_pretrained(value)
    return out
