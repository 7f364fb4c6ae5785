"""Decode heads (registered in ``rayseg.registry.HEADS``)."""
from rayseg.models.heads.decode_head import BaseDecodeHead, accuracy
from rayseg.models.heads.fcn_head import FCNHead
from rayseg.models.heads.psp_head import PSPHead

__all__ = ["BaseDecodeHead", "FCNHead", "PSPHead", "accuracy"]
