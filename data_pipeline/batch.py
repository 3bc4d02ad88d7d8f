"""Compatibility alias: `Batch` and `Normalization` live in `data_pipeline.windows.batch` (re-exported by
`data_pipeline.windows`). Delete this module once no importer uses the old path."""

from data_pipeline.windows.batch import Batch, Normalization

__all__ = ["Batch", "Normalization"]
