"""Datasets and data pipelines (MMSegmentation-style). Importing this package registers every step
and dataset in the TRANSFORMS / DATASETS registries."""
from rayseg.datasets import albu, loading, photometric, transforms  # noqa: F401  (registration)
from rayseg.datasets.compose import Compose, MultiScaleFlipAug, build_pipeline, split_device_steps
from rayseg.datasets.custom import CustomDataset, build_dataset
from rayseg.datasets.camvid import CamVidDataset
from rayseg.datasets.demo import DemoShapesDataset, make_demo_dataset

__all__ = [
    "Compose",
    "MultiScaleFlipAug",
    "build_pipeline",
    "split_device_steps",
    "CustomDataset",
    "CamVidDataset",
    "DemoShapesDataset",
    "build_dataset",
    "make_demo_dataset",
]
