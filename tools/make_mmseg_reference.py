#!/usr/bin/env python
"""Make the MMSegmentation 1.x reference fixtures for ``tests/test_mmseg_equivalence.py``.

Run it in a throwaway venv that has MMSegmentation 1.x (NOT the project venv, and never from CI)::

    python3 -m venv /tmp/mmseg-venv
    /tmp/mmseg-venv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/mmseg-venv/bin/pip install mmengine "mmcv-lite>=2.0.0rc4" mmsegmentation ftfy regex
    /tmp/mmseg-venv/bin/python tools/make_mmseg_reference.py            # writes tests/fixtures/mmseg/
    /tmp/mmseg-venv/bin/python tools/make_mmseg_reference.py --only ocrnet   # one architecture

For each architecture (FCN, PSPNet, DeepLabV3, DeepLabV3+, UPerNet, SegFormer; then HRNet+FCN, OCRNet,
Semantic FPN) it builds MMSeg's own ``EncoderDecoder`` / ``CascadeEncoderDecoder`` from a tiny config,
randomises every weight and BatchNorm running statistic (so the comparison is not between near-zero logits),
runs ``encode_decode`` on a seeded 1x3x64x64 input in eval mode and writes:

- ``<arch>.pth``: ``{"state_dict": model.state_dict(), "meta": {"mmseg_version", "mmcv_version",
  "mmengine_version", "torch_version", "mmseg_config"}}`` -- the layout MMSeg/mmengine checkpoints have;
- ``<arch>_io.pt``: ``{"input": x, "logits": reference logits (1, 3, 64, 64)}``;
- ``<arch>.yaml``: the equivalent rayseg model config (MMSeg 0.x vocabulary).

Each architecture's seeds depend only on its place in ``tiny_configs()`` (new ones are appended), so
``--only`` writes some without touching the others. The BatchNorm statistics are measured with float
arithmetic, so another CPU can give last-bit differences (~1e-7): regenerate only what changed.
``--full-size`` instead writes ``full_size_models.json``: the checkpoint layout (keys, shapes, value counts)
of MMSeg's own full-size models for the zoo configs listed in ``FULL_SIZE``.

mmcv-lite has no compiled ``mmcv.ops``; MMSeg imports a few ops at module level for heads these
models never use, so this script (only) installs stub modules for them before importing MMSeg, and it
relaxes MMSeg's mmcv version assertion if the installed mmcv-lite is newer than MMSeg's upper bound.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import importlib.machinery
import math
import os
import sys
import types

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "mmseg")
NUM_CLASSES = 3
SEED = 0


# ----------------------------------------------------------------------------- mmcv-lite workarounds
class _StubOp:
    """Stands in for a compiled mmcv op; calling it is an error (the models here never do)."""

    def __init__(self, *args, **kwargs):
        raise RuntimeError("mmcv.ops stub called: this op needs full mmcv (not mmcv-lite)")

    def __call__(self, *args, **kwargs):
        raise RuntimeError("mmcv.ops stub called: this op needs full mmcv (not mmcv-lite)")


class _StubModule(types.ModuleType):
    """A module whose every missing attribute is a stub op class."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        stub = type(name, (_StubOp,), {})
        setattr(self, name, stub)
        return stub


def install_mmcv_ops_stub() -> bool:
    """Put a stub ``mmcv.ops`` into ``sys.modules`` if the real one cannot be imported."""
    try:
        importlib.import_module("mmcv.ops")
        return False
    except Exception:  # ModuleNotFoundError / ImportError of the missing ``mmcv._ext``
        pass
    for name in ("mmcv.ops", "mmcv.ops.multi_scale_deform_attn", "mmcv.ops.point_sample",
                 "mmcv.ops.deform_conv", "mmcv.ops.modulated_deform_conv", "mmcv.ops.carafe",
                 "mmcv.ops.cc_attention", "mmcv.ops.roi_align", "mmcv.ops.nms", "mmcv.ops.merge_cells"):
        mod = _StubModule(name)
        mod.__spec__ = importlib.machinery.ModuleSpec(name, loader=None, is_package=name == "mmcv.ops")
        mod.__path__ = []  # type: ignore[attr-defined]
        sys.modules[name] = mod
    import mmcv
    mmcv.ops = sys.modules["mmcv.ops"]
    return True


def import_mmseg():
    stubbed = install_mmcv_ops_stub()
    import mmcv
    try:
        import mmseg  # noqa: F401
    except AssertionError as exc:
        # mmseg/__init__.py asserts mmcv_min_version <= mmcv.__version__ < mmcv_max_version. Pretend to be
        # the newest allowed version for the import only (the python-only parts we use did not change).
        print(f"note: {exc}; relaxing MMSeg's mmcv version check for this script", file=sys.stderr)
        real = mmcv.__version__
        for key in [k for k in sys.modules if k == "mmseg" or k.startswith("mmseg.")]:
            del sys.modules[key]
        mmcv.__version__ = "2.1.0"
        import mmseg  # noqa: F401
        mmcv.__version__ = real
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    return stubbed


# ----------------------------------------------------------------------------- tiny configs
BN = dict(type="BN", requires_grad=True)


def resnet(depth, base, d8):
    cfg = dict(type="ResNetV1c", depth=depth, stem_channels=8, base_channels=base, num_stages=4,
               out_indices=(0, 1, 2, 3), dilations=(1, 1, 2, 4) if d8 else (1, 1, 1, 1),
               strides=(1, 2, 1, 1) if d8 else (1, 2, 2, 2), norm_cfg=BN, norm_eval=False, style="pytorch",
               contract_dilation=True)
    expansion = 4 if depth >= 50 else 1
    return cfg, [base * 2 ** i * expansion for i in range(4)]


def aux_head(chans):
    return dict(type="FCNHead", in_channels=chans[2], in_index=2, channels=4, num_convs=1, concat_input=False,
                dropout_ratio=0.1, num_classes=NUM_CLASSES, norm_cfg=BN, align_corners=False,
                loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=0.4))


def head_common(in_channels, in_index, channels):
    return dict(in_channels=in_channels, in_index=in_index, channels=channels, dropout_ratio=0.1,
                num_classes=NUM_CLASSES, norm_cfg=BN, align_corners=False,
                loss_decode=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0))


def hrnet():
    """A tiny HRNetV2 (the stem is 64 channels in MMSeg whatever the widths): 4 branches of 4/8/16/32 channels,
    a two-module stage 3 and a two-block branch, so transitions, fusions and module chaining are all exercised."""
    return dict(type="HRNet", norm_cfg=BN, norm_eval=False, extra=dict(
        stage1=dict(num_modules=1, num_branches=1, block="BOTTLENECK", num_blocks=(1,), num_channels=(8,)),
        stage2=dict(num_modules=1, num_branches=2, block="BASIC", num_blocks=(2, 1), num_channels=(4, 8)),
        stage3=dict(num_modules=2, num_branches=3, block="BASIC", num_blocks=(1, 1, 1), num_channels=(4, 8, 16)),
        stage4=dict(num_modules=1, num_branches=4, block="BASIC", num_blocks=(1, 1, 1, 1),
                    num_channels=(4, 8, 16, 32))))


def tiny_configs():
    """The six tiny models, as MMSeg ``model`` dicts (MMSeg 1.x spelling, no data_preprocessor)."""
    cfgs = {}
    bb, ch = resnet(50, 2, d8=True)  # Bottleneck ResNet-50 at base 2: channels 8/16/32/64
    cfgs["fcn"] = dict(backbone=bb, decode_head=dict(type="FCNHead", num_convs=2, concat_input=True,
                                                     **head_common(ch[3], 3, 8)), auxiliary_head=aux_head(ch))
    bb, ch = resnet(18, 3, d8=True)  # BasicBlock ResNet-18 at base 3: channels 3/6/12/24
    cfgs["pspnet"] = dict(backbone=bb, decode_head=dict(type="PSPHead", pool_scales=(1, 2, 3, 6),
                                                        **head_common(ch[3], 3, 8)), auxiliary_head=aux_head(ch))
    bb, ch = resnet(18, 3, d8=True)
    cfgs["deeplabv3"] = dict(backbone=bb, decode_head=dict(type="ASPPHead", dilations=(1, 2, 3, 4),
                                                           **head_common(ch[3], 3, 8)),
                             auxiliary_head=aux_head(ch))
    bb, ch = resnet(18, 3, d8=True)
    cfgs["deeplabv3plus"] = dict(backbone=bb, decode_head=dict(type="DepthwiseSeparableASPPHead",
                                                               dilations=(1, 2, 3, 4), c1_in_channels=ch[0],
                                                               c1_channels=8, **head_common(ch[3], 3, 8)),
                                 auxiliary_head=aux_head(ch))
    bb, ch = resnet(18, 3, d8=False)
    cfgs["upernet"] = dict(backbone=bb, decode_head=dict(type="UPerHead", pool_scales=(1, 2, 3, 6),
                                                         **head_common(ch, [0, 1, 2, 3], 8)),
                           auxiliary_head=aux_head(ch))
    mit = dict(type="MixVisionTransformer", in_channels=3, embed_dims=8, num_stages=4, num_layers=[1, 1, 1, 1],
               num_heads=[1, 2, 3, 4], patch_sizes=[7, 3, 3, 3], sr_ratios=[8, 4, 2, 1],
               out_indices=(0, 1, 2, 3), mlp_ratio=4, qkv_bias=True, drop_rate=0.0, attn_drop_rate=0.0,
               drop_path_rate=0.1)
    cfgs["segformer"] = dict(backbone=mit, decode_head=dict(type="SegformerHead",
                                                            **head_common([8, 16, 24, 32], [0, 1, 2, 3], 8)))
    # Second zoo (appended, so the first six keep their seeds and stay byte-identical).
    hr = hrnet()
    hr_ch = [4, 8, 16, 32]
    fcn_hr = dict(type="FCNHead", input_transform="resize_concat", kernel_size=1, num_convs=1, concat_input=False,
                  **dict(head_common(hr_ch, [0, 1, 2, 3], sum(hr_ch)), dropout_ratio=-1))
    cfgs["hrnet_fcn"] = dict(backbone=hr, decode_head=fcn_hr)
    ocr_first = copy.deepcopy(fcn_hr)
    ocr_first["loss_decode"]["loss_weight"] = 0.4
    ocr = dict(type="OCRHead", input_transform="resize_concat", ocr_channels=8,
               **dict(head_common(hr_ch, [0, 1, 2, 3], 16), dropout_ratio=-1))
    cfgs["ocrnet"] = dict(type="CascadeEncoderDecoder", num_stages=2, backbone=hrnet(),
                          decode_head=[ocr_first, ocr])
    bb, ch = resnet(18, 4, d8=False)  # BasicBlock ResNet-18 at base 4: channels 4/8/16/32
    cfgs["fpn"] = dict(backbone=bb, neck=dict(type="FPN", in_channels=ch, out_channels=8, num_outs=4),
                       decode_head=dict(type="FPNHead", feature_strides=[4, 8, 16, 32],
                                        **head_common([8, 8, 8, 8], [0, 1, 2, 3], 8)))
    out = {}
    for name, parts in cfgs.items():
        parts = dict(parts)
        seg_type = parts.pop("type", "EncoderDecoder")
        head = parts.pop("num_stages", None)
        model = dict(type=seg_type, **({"num_stages": head} if head is not None else {}), pretrained=None, **parts,
                     train_cfg=dict(), test_cfg=dict(mode="whole"))
        out[name] = model
    return out


def plain(value):
    """Tuples → lists (YAML and the checkpoint meta carry plain builtins only)."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def rayseg_config(model_cfg):
    """The rayseg config: same vocabulary, as a ``model:`` YAML mapping."""
    return {"model": plain(model_cfg)}


# ----------------------------------------------------------------------------- randomisation
@torch.no_grad()
def randomise(model, gen, calib):
    """Give every parameter and BN buffer a random value that keeps activations and logits O(1).

    Conv/linear weights ~ N(0, 1/fan_in), biases and norm affines random; BN running statistics are first
    measured on ``calib`` (train-mode forward passes, cumulative average) then perturbed, so BN layers
    roughly normalise but no statistic equals its default (0 mean, unit variance).
    """
    norms = [m for m in model.modules()
             if isinstance(m, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm))]
    norm_params = {id(p) for m in norms for p in m.parameters(recurse=False)}
    for p in model.parameters():
        if id(p) in norm_params:
            continue
        if p.dim() > 1:
            p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(p[0].numel()))
        else:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    for m in norms:
        if m.weight is not None:
            m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
            m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
    bns = [m for m in norms if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration passes
    model.train()
    for x in calib:
        feats = model.extract_feat(x)
        if isinstance(model.decode_head, torch.nn.ModuleList):  # CascadeEncoderDecoder: each head reads the last
            out = model.decode_head[0].forward(feats)
            for head in model.decode_head[1:]:
                out = head.forward(feats, out)
        else:
            model.decode_head.forward(feats)
        if getattr(model, "auxiliary_head", None) is not None:
            model.auxiliary_head.forward(feats)
    model.eval()
    for m in bns:
        m.momentum = 0.1
        n = m.num_features
        m.running_mean.add_(torch.randn(n, generator=gen) * 0.05)
        m.running_var.mul_(torch.rand(n, generator=gen) * 0.4 + 0.8)
        m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=gen)))


# ----------------------------------------------------------------------------- full-size architectures
# rayseg zoo config -> the MMSeg 1.x config it mirrors (in mmseg's installed .mim/configs).
FULL_SIZE = {
    "hrnet/fcn_hr18_512x1024_40k_cityscapes.yaml": "hrnet/fcn_hr18_4xb2-40k_cityscapes-512x1024.py",
    "hrnet/fcn_hr18_512x512_80k_ade20k.yaml": "hrnet/fcn_hr18_4xb4-80k_ade20k-512x512.py",
    "hrnet/fcn_hr48_512x1024_40k_cityscapes.yaml": "hrnet/fcn_hr48_4xb2-40k_cityscapes-512x1024.py",
    "ocrnet/ocrnet_hr18_512x1024_40k_cityscapes.yaml": "ocrnet/ocrnet_hr18_4xb2-40k_cityscapes-512x1024.py",
    "ocrnet/ocrnet_hr18_512x512_80k_ade20k.yaml": "ocrnet/ocrnet_hr18_4xb4-80k_ade20k-512x512.py",
    "sem_fpn/fpn_r50_512x1024_80k_cityscapes.yaml": "sem_fpn/fpn_r50_4xb2-80k_cityscapes-512x1024.py",
    "sem_fpn/fpn_r50_512x512_160k_ade20k.yaml": "sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py",
}


def architecture_signature(state_dict):
    """What identifies an architecture's checkpoint layout: tensor count, parameter values per top-level part
    (``backbone``, ``neck``, ``decode_head.0``…) and a sha256 of every ``key:shape`` line, sorted.

    ``tests/models/test_mmseg_equivalence.py`` computes the same from the rayseg zoo config's model."""
    import hashlib

    parts = {}
    for key, value in state_dict.items():
        fields = key.split(".")
        part = ".".join(fields[:2]) if len(fields) > 2 and fields[1].isdigit() else fields[0]
        parts[part] = parts.get(part, 0) + value.numel()
    lines = "".join(f"{k}:{list(v.shape)}\n" for k, v in sorted(state_dict.items()))
    return {"tensors": len(state_dict), "values": dict(sorted(parts.items())),
            "sha256": hashlib.sha256(lines.encode()).hexdigest()}


def write_full_size(path):
    """Build MMSeg's own full-size models for ``FULL_SIZE`` and write their signatures as JSON to ``path``."""
    import json

    import mmseg
    from mmengine.config import Config
    from mmseg.registry import MODELS

    root = os.path.join(os.path.dirname(mmseg.__file__), ".mim", "configs")
    out = {}
    for ours, theirs in FULL_SIZE.items():
        cfg = Config.fromfile(os.path.join(root, theirs))
        model = MODELS.build(cfg.model)  # weights are not initialised (no init_weights): no download
        out[ours] = dict(mmseg_config=theirs, **architecture_signature(model.state_dict()))
        print(ours, out[ours]["tensors"], sum(out[ours]["values"].values()))
    with open(path, "w") as fh:
        json.dump(out, fh, indent=1)
        fh.write("\n")


def mmseg_versions(stubbed: bool) -> dict:
    import mmcv
    import mmengine
    import mmseg

    return dict(mmseg_version=str(mmseg.__version__), mmcv_version=str(mmcv.__version__),
                mmengine_version=str(mmengine.__version__), torch_version=str(torch.__version__),
                mmcv_ops_stubbed=stubbed)


def write_reference(name: str, cfg: dict, index: int, out: str, versions: dict, tool: str = "make_mmseg_reference.py",
                    size: int = 64, logits_stride: int = 1) -> None:
    """Build MMSeg's model ``cfg`` (MMSeg 1.x spelling), randomise it with seeds from ``index``, and write
    ``<name>.pth``, ``<name>_io.pt`` and ``<name>.yaml`` into ``out``. Other fixture scripts
    (``tools/mmseg_reference_*.py``) call this with their own configs and index range.

    ``logits_stride > 1`` keeps a big reference small: the input is not stored but drawn from its own seeded
    generator (``input_seed``, ``input_shape``: torch.randn gives the same values with the pinned torch), and
    only every ``logits_stride``-th logit row and column is stored."""
    import mmseg
    import yaml
    from mmengine.runner.checkpoint import weights_to_cpu
    from mmseg.registry import MODELS

    mm_cfg = copy.deepcopy(cfg)
    mm_cfg.pop("pretrained", None)
    # As an MMSeg 1.x config: a SegDataPreProcessor (its mean/std buffers are not persistent, so they
    # are not in the state_dict); we feed encode_decode an already-normalised tensor.
    mm_cfg["data_preprocessor"] = dict(type="SegDataPreProcessor", mean=[123.675, 116.28, 103.53],
                                       std=[58.395, 57.12, 57.375], bgr_to_rgb=True, pad_val=0,
                                       seg_pad_val=255, size=(size, size))
    torch.manual_seed(SEED + index)
    model = MODELS.build(copy.deepcopy(mm_cfg))
    gen = torch.Generator().manual_seed(1000 + index)
    calib = [torch.randn(4, 3, size, size, generator=gen) for _ in range(2)]
    randomise(model, gen, calib)
    input_seed = 5000 + index
    x = (torch.randn(1, 3, size, size, generator=gen) if logits_stride == 1
         else torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(input_seed)))
    model.eval()
    metas = [dict(img_shape=(size, size), pad_shape=(size, size), ori_shape=(size, size))]
    with torch.no_grad():
        logits = model.encode_decode(x, metas)
    assert logits.shape == (1, NUM_CLASSES, size, size), logits.shape
    # Exactly what mmengine's Runner.save_checkpoint stores (an OrderedDict with _metadata).
    state_dict = weights_to_cpu(model.state_dict())
    ckpt = {"state_dict": state_dict,
            "meta": dict(versions, mmseg_config=plain(mm_cfg), arch=name)}
    torch.save(ckpt, os.path.join(out, f"{name}.pth"))
    if logits_stride == 1:
        io = {"input": x, "logits": logits.detach().clone()}
    else:
        io = {"input_seed": input_seed, "input_shape": list(x.shape), "logits_stride": logits_stride,
              "logits": logits[..., ::logits_stride, ::logits_stride].detach().clone()}
    torch.save(io, os.path.join(out, f"{name}_io.pt"))
    with open(os.path.join(out, f"{name}.yaml"), "w") as fh:
        fh.write(f"# rayseg equivalent of the tiny MMSeg {mmseg.__version__} model in {name}.pth "
                 f"(written by tools/{tool})\n")
        yaml.safe_dump(rayseg_config(cfg), fh, sort_keys=False, default_flow_style=None)
    sizes = [os.path.getsize(os.path.join(out, f)) for f in (f"{name}.pth", f"{name}_io.pt")]
    print(f"{name}: {len(state_dict)} tensors, {sum(v.numel() for v in state_dict.values())} values, "
          f"logits std {logits.std():.3f} |max| {logits.abs().max():.3f}, files {sizes} bytes")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=OUT)
    parser.add_argument("--only", nargs="+", metavar="ARCH",
                        help="write only these architectures (seeds do not depend on which are written)")
    parser.add_argument("--full-size", action="store_true",
                        help="only write full_size_models.json: the checkpoint layout of MMSeg's own full-size "
                             "models for the zoo configs in FULL_SIZE")
    args = parser.parse_args()
    if args.full_size:
        import_mmseg()
        write_full_size(os.path.join(args.out, "full_size_models.json"))
        return
    configs = tiny_configs()
    unknown = sorted(set(args.only or []) - set(configs))
    if unknown:
        parser.error(f"unknown architecture(s) {unknown}; choose from {list(configs)}")
    torch.set_num_threads(1)
    versions = mmseg_versions(import_mmseg())
    os.makedirs(args.out, exist_ok=True)
    print(versions)
    for index, (name, cfg) in enumerate(configs.items()):
        if args.only and name not in args.only:
            continue
        write_reference(name, cfg, index, args.out, versions)


if __name__ == "__main__":
    main()
