"""Pixel samplers (registered in ``rayseg.registry.PIXEL_SAMPLERS``)."""
from rayseg.models.samplers import ohem_pixel_sampler  # noqa: F401  (registration)
