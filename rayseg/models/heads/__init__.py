"""Decode heads (registered in ``rayseg.registry.HEADS``)."""
from rayseg.models.heads.decode_head import BaseDecodeHead, accuracy
from rayseg.models.heads.fcn_head import FCNHead
from rayseg.models.heads.psp_head import PSPHead

__all__ = ["BaseDecodeHead", "FCNHead", "PSPHead", "accuracy"]

# Model-zoo heads: each module registers its classes on import.
from rayseg.models.heads import aspp_head, sep_aspp_head, uper_head, segformer_head, sep_fcn_head  # noqa: E402,F401
