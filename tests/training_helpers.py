"""Tiny Lightning set-ups shared by the training fault and tracking tests: a window DataModule and a quiet
one-epoch Trainer, each with overridable defaults."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from data_pipeline.windows.datamodule import WindowDataModule


def tiny_datamodule(path: str, **kwargs: object) -> WindowDataModule:
    args = {"window": 8, "batch_size": 4, "batches_per_epoch": 10, "val_batches": 1}
    return WindowDataModule(path, **{**args, **kwargs})


def quiet_trainer(root: Path, callbacks: list[Callback], **kwargs: object) -> L.Trainer:
    args = {"max_epochs": 1, "logger": False, "enable_progress_bar": False, "enable_model_summary": False,
            "num_sanity_val_steps": 0, "default_root_dir": str(root)}
    return L.Trainer(callbacks=callbacks, **{**args, **kwargs})
