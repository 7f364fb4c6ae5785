"""Segmentors (registered in ``rayseg.registry.MODELS``)."""
from rayseg.models.segmentors.encoder_decoder import EncoderDecoder, uses_sync_bn

__all__ = ["EncoderDecoder", "uses_sync_bn"]
