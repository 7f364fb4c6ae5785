"""Datasets and data pipelines (MMSegmentation-style). Importing this package registers every step
and dataset in the TRANSFORMS / DATASETS registries."""
from rayseg.datasets import albu, loading, photometric, transforms  # noqa: F401  (registration)
from rayseg.datasets.compose import Compose, MultiScaleFlipAug, build_pipeline, split_device_steps
from rayseg.datasets.custom import CustomDataset, build_dataset
from rayseg.datasets.camvid import CamVidDataset
from rayseg.datasets.cityscapes import CityscapesDataset
from rayseg.datasets.ade import ADE20KDataset
from rayseg.datasets.pascal_voc import PascalVOCDataset
from rayseg.datasets.pascal_context import PascalContextDataset, PascalContextDataset59
from rayseg.datasets.vessel import ChaseDB1Dataset, DRIVEDataset, HRFDataset, STAREDataset
from rayseg.datasets.night import DarkZurichDataset, NightDrivingDataset
from rayseg.datasets.remote_sensing import ISPRSDataset, LoveDADataset, PotsdamDataset, iSAIDDataset
from rayseg.datasets.coco_stuff import COCOStuffDataset
from rayseg.datasets.demo import DemoShapesDataset, make_demo_dataset
from rayseg.datasets import dataset_wrappers, mosaic, transforms_extra  # noqa: F401  (wrappers, more steps)

__all__ = [
    "Compose",
    "MultiScaleFlipAug",
    "build_pipeline",
    "split_device_steps",
    "CustomDataset",
    "CamVidDataset",
    "CityscapesDataset",
    "ADE20KDataset",
    "PascalVOCDataset",
    "PascalContextDataset",
    "PascalContextDataset59",
    "ChaseDB1Dataset",
    "DRIVEDataset",
    "HRFDataset",
    "STAREDataset",
    "DarkZurichDataset",
    "NightDrivingDataset",
    "LoveDADataset",
    "PotsdamDataset",
    "ISPRSDataset",
    "iSAIDDataset",
    "COCOStuffDataset",
    "DemoShapesDataset",
    "build_dataset",
    "make_demo_dataset",
]
