"""Segmentors (registered in ``rayseg.registry.MODELS``)."""
from rayseg.models.segmentors.encoder_decoder import EncoderDecoder, uses_sync_bn

__all__ = ["EncoderDecoder", "uses_sync_bn"]

# Further segmentors (one file each) register on import.
from rayseg.utils.imports import import_submodules  # noqa: E402

import_submodules(__name__, __path__)
