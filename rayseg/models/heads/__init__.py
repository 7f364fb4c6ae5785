"""Decode heads (registered in ``rayseg.registry.HEADS``)."""
from rayseg.models.heads.decode_head import BaseDecodeHead, accuracy
from rayseg.models.heads.fcn_head import FCNHead
from rayseg.models.heads.psp_head import PSPHead

__all__ = ["BaseDecodeHead", "FCNHead", "PSPHead", "accuracy"]

# Model-zoo heads: every module here registers its classes on import (one file per head).
from rayseg.utils.imports import import_submodules  # noqa: E402

import_submodules(__name__, __path__)
