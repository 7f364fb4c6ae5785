"""``EncoderDecoder`` segmentor: backbone (+ neck) → decode head (+ auxiliary heads), MMSeg semantics.

The training engine relies on this API:
- ``forward(img, gt_semantic_seg)`` → loss dict (``decode.loss_ce``, ``decode.acc_seg``, ``aux.*``);
  ``forward(img)`` → ``{"out": logits}`` at the input size. Training goes through ``forward`` so
  DistributedDataParallel sees the call.
- ``inference(img, ori_shape)`` → logits (``test_cfg.mode`` whole or slide); ``predict`` → labels.
- ``aug_test(imgs, flips, ori_shape)`` → class probabilities averaged over test-time augmentation
  variants (MultiScaleFlipAug); ``aug_predict`` → labels.
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from rayseg.errors import ConfigError
from rayseg.models.utils import add_prefix, resize
from rayseg.registry import BACKBONES, HEADS, MODELS, NECKS, build

_TEST_KEYS = {"mode", "crop_size", "stride"}
# Tensor dims to flip back for each RandomFlip direction, on (N, C, H, W).
_UNFLIP_DIMS = {"horizontal": (3,), "vertical": (2,), "diagonal": (2, 3)}


def _pair(value: Any, name: str) -> Tuple[int, int]:
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
        return int(value[0]), int(value[1])
    raise ConfigError(f"test_cfg.{name} must be an int or [h, w] of positive ints, got {value!r}")


@MODELS.register()
class EncoderDecoder(nn.Module):
    """Backbone + optional neck + decode head + optional auxiliary head(s).

    Args:
        backbone, decode_head, neck, auxiliary_head: configs (``auxiliary_head`` may be a list).
        train_cfg: reserved, must be empty (MMSeg's EncoderDecoder reads nothing from it).
        test_cfg: ``{mode: whole}`` or ``{mode: slide, crop_size: [h, w], stride: [h, w]}``.
        pretrained: local checkpoint for the backbone (as MMSeg 0.x, passed to ``backbone.pretrained``).
        init_cfg: reserved; only None is accepted.
    """

    def __init__(self, backbone: Dict[str, Any], decode_head: Dict[str, Any], neck: Optional[Dict[str, Any]] = None,
                 auxiliary_head: Union[None, Dict[str, Any], Sequence[Dict[str, Any]]] = None,
                 train_cfg: Optional[Dict[str, Any]] = None, test_cfg: Optional[Dict[str, Any]] = None,
                 pretrained: Optional[str] = None, init_cfg: Optional[Dict[str, Any]] = None):
        super().__init__()
        if train_cfg:
            raise ConfigError(f"EncoderDecoder: train_cfg takes no keys, got {sorted(train_cfg)}")
        if init_cfg is not None:
            raise ConfigError("EncoderDecoder: init_cfg is not supported; use pretrained or the parts' init_cfg")
        self.train_cfg = dict(train_cfg or {})
        self.test_cfg = self._check_test_cfg(test_cfg)
        if pretrained is not None:
            backbone = dict(backbone, pretrained=pretrained)
        self.backbone = build(backbone, BACKBONES)
        self.neck = build(neck, NECKS) if neck is not None else None
        self.decode_head = build(decode_head, HEADS)
        self.align_corners = self.decode_head.align_corners
        self.num_classes = self.decode_head.num_classes
        if auxiliary_head is None:
            self.auxiliary_head = None
        elif isinstance(auxiliary_head, (list, tuple)):
            self.auxiliary_head = nn.ModuleList([build(cfg, HEADS) for cfg in auxiliary_head])
        else:
            self.auxiliary_head = build(auxiliary_head, HEADS)

    @staticmethod
    def _check_test_cfg(test_cfg: Optional[Dict[str, Any]]) -> Dict[str, Any]:
        cfg = dict(test_cfg or {})
        unknown = sorted(set(cfg) - _TEST_KEYS)
        if unknown:
            raise ConfigError(f"test_cfg: unknown key(s) {unknown}; accepted: {sorted(_TEST_KEYS)}")
        cfg.setdefault("mode", "whole")
        if cfg["mode"] not in ("whole", "slide"):
            raise ConfigError(f"test_cfg.mode must be 'whole' or 'slide', got {cfg['mode']!r}")
        if cfg["mode"] == "slide":
            for key in ("crop_size", "stride"):
                if key not in cfg:
                    raise ConfigError(f"test_cfg.mode 'slide' needs {key}")
                cfg[key] = _pair(cfg[key], key)
        return cfg

    @property
    def with_auxiliary_head(self) -> bool:
        return self.auxiliary_head is not None

    def extract_feat(self, img: torch.Tensor) -> Sequence[torch.Tensor]:
        """Backbone (and neck) features."""
        x = self.backbone(img)
        return self.neck(x) if self.neck is not None else x

    def encode_decode(self, img: torch.Tensor) -> torch.Tensor:
        """Decode-head logits resized (bilinear) to the input size."""
        out = self.decode_head.forward_test(self.extract_feat(img))
        return resize(out, size=img.shape[2:], mode="bilinear", align_corners=self.align_corners)

    def forward_train(self, img: torch.Tensor, gt_semantic_seg: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Loss dict with MMSeg prefixes: ``decode.``, ``aux.`` or ``aux_0.``, ``aux_1.``…"""
        if gt_semantic_seg.dim() == 3:
            gt_semantic_seg = gt_semantic_seg.unsqueeze(1)
        x = self.extract_feat(img)
        losses = add_prefix(self.decode_head.forward_train(x, gt_semantic_seg), "decode")
        if isinstance(self.auxiliary_head, nn.ModuleList):
            for idx, head in enumerate(self.auxiliary_head):
                losses.update(add_prefix(head.forward_train(x, gt_semantic_seg), f"aux_{idx}"))
        elif self.auxiliary_head is not None:
            losses.update(add_prefix(self.auxiliary_head.forward_train(x, gt_semantic_seg), "aux"))
        return losses

    def forward(self, img: torch.Tensor, gt_semantic_seg: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Losses when labels are given, else ``{"out": logits}`` at the input size."""
        if gt_semantic_seg is not None:
            return self.forward_train(img, gt_semantic_seg)
        return {"out": self.encode_decode(img)}

    def slide_inference(self, img: torch.Tensor) -> torch.Tensor:
        """Logits from overlapping ``crop_size`` windows at ``stride``, averaged where they overlap.

        As in MMSeg, an image smaller than a window is run whole (one window clipped to the image), so
        MMSeg checkpoints give MMSeg's logits here too.
        """
        h_stride, w_stride = self.test_cfg["stride"]
        h_crop, w_crop = self.test_cfg["crop_size"]
        n, _, h_img, w_img = img.shape
        h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
        w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
        preds = img.new_zeros((n, self.num_classes, h_img, w_img))
        count = img.new_zeros((n, 1, h_img, w_img))
        for h_idx in range(h_grids):
            for w_idx in range(w_grids):
                # Windows are clamped to the image, so the last row/column aligns with the far edge.
                y2 = min(h_idx * h_stride + h_crop, h_img)
                x2 = min(w_idx * w_stride + w_crop, w_img)
                y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
                preds[:, :, y1:y2, x1:x2] += self.encode_decode(img[:, :, y1:y2, x1:x2])
                count[:, :, y1:y2, x1:x2] += 1
        return preds / count

    def inference(self, img: torch.Tensor, ori_shape: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Logits (N, num_classes, H, W) per ``test_cfg.mode``, resized to ``ori_shape`` (H, W) if given."""
        if self.test_cfg["mode"] == "slide":
            logits = self.slide_inference(img)
        else:
            logits = self.encode_decode(img)
        if ori_shape is not None and tuple(ori_shape[:2]) != tuple(logits.shape[2:]):
            logits = resize(logits, size=ori_shape[:2], mode="bilinear", align_corners=self.align_corners)
        return logits

    def predict(self, img: torch.Tensor, ori_shape: Optional[Sequence[int]] = None) -> torch.Tensor:
        """Label map (N, H, W) long."""
        return self.inference(img, ori_shape).argmax(dim=1)

    def aug_test(self, imgs: Sequence[torch.Tensor], flips: Sequence[Tuple[bool, str]],
                 ori_shape: Sequence[int]) -> torch.Tensor:
        """Class probabilities (N, C, H0, W0) averaged over test-time augmentation variants (MMSeg 0.x).

        ``imgs[i]`` is variant i's normalised (N, C, H, W) batch (any scale) and ``flips[i]`` its
        ``(flip, direction)``. Each variant's logits are resized to ``ori_shape``, turned into
        probabilities (softmax over classes), flipped back when the input was flipped, and the
        probabilities are averaged.
        """
        if len(imgs) == 0 or len(imgs) != len(flips):
            raise ValueError(f"aug_test needs one (flip, direction) per image: got {len(imgs)} image batch(es) "
                             f"and {len(flips)} flip entries")
        total: Optional[torch.Tensor] = None
        for img, (flip, direction) in zip(imgs, flips):
            probs = self.inference(img, ori_shape).softmax(dim=1)
            if flip:
                if direction not in _UNFLIP_DIMS:
                    raise ValueError(f"unknown flip direction {direction!r}; expected one of {list(_UNFLIP_DIMS)}")
                probs = probs.flip(dims=_UNFLIP_DIMS[direction])
            # A running sum keeps one probability map in memory, however many variants there are
            # (out of place, so the function stays differentiable).
            total = probs if total is None else total + probs
        return total / len(imgs)

    def aug_predict(self, imgs: Sequence[torch.Tensor], flips: Sequence[Tuple[bool, str]],
                    ori_shape: Sequence[int]) -> torch.Tensor:
        """Label map (N, H0, W0) long: argmax of ``aug_test``."""
        return self.aug_test(imgs, flips, ori_shape).argmax(dim=1)


def uses_sync_bn(model_cfg: Any) -> bool:
    """True if any nested ``norm_cfg`` in the config has ``type: SyncBN``."""
    if isinstance(model_cfg, dict):
        norm = model_cfg.get("norm_cfg")
        if isinstance(norm, dict) and norm.get("type") == "SyncBN":
            return True
        return any(uses_sync_bn(v) for v in model_cfg.values())
    if isinstance(model_cfg, (list, tuple)):
        return any(uses_sync_bn(v) for v in model_cfg)
    return False
