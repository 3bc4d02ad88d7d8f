"""Compatibility alias: evaluation windows live in `data_pipeline.windows.fixed` (`eval_windows`) and
`data_pipeline.windows.datamodule` (`split_eval_windows`), both re-exported by `data_pipeline.windows`.
Delete this module once no importer uses the old path."""

from data_pipeline.windows.datamodule import split_eval_windows
from data_pipeline.windows.fixed import eval_windows

__all__ = ["eval_windows", "split_eval_windows"]
