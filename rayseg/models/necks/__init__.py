"""Necks between backbone and heads (registered in ``rayseg.registry.NECKS``); one file per neck, each
registering its classes on import."""
from rayseg.utils.imports import import_submodules

import_submodules(__name__, __path__)
