"""Dataset converters: official downloads → the layouts rayseg's dataset classes read
(``jobs/convert_dataset.py NAME SRC DST``, docs/dataset_conversion.md). Importing this package registers every
converter module in it with ``CONVERTERS``."""
from rayseg.datasets.converters.base import (CONVERTERS, ConversionReport, Converter, Unit, build_converter,
                                             read_image, run_conversion, write_image, write_text)

from rayseg.utils.imports import import_submodules

import_submodules(__name__, __path__)

__all__ = ["CONVERTERS", "ConversionReport", "Converter", "Unit", "build_converter", "read_image",
           "run_conversion", "write_image", "write_text"]
