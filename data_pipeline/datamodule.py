"""Compatibility alias: the DataModule lives in `data_pipeline.windows.datamodule` and its dataset and loader
in `data_pipeline.windows.dataset` (all re-exported by `data_pipeline.windows`). Delete this module once no
importer uses the old path."""

from data_pipeline.windows.datamodule import WindowDataModule
from data_pipeline.windows.dataset import EpochDataLoader, TrainPosition, WindowDataset

__all__ = ["EpochDataLoader", "TrainPosition", "WindowDataModule", "WindowDataset"]
