"""Faults (issue 8) while training a world model: a NaN loss and a corrupted store chunk.

- A non-finite loss stops training with a message naming the step and batch, after writing
  `last-good.ckpt` (the state before that step), which resumes.
- A chunk with flipped bytes makes `train.py fit` fail with StoreCorruptionError naming array and chunk.
(A tracking server that dies mid-run: tests/tracking/test_logger.py.)
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from training_helpers import quiet_trainer, tiny_datamodule

from data_pipeline.store import StoreCorruptionError
from data_pipeline.windows.batch import Batch
from worldmodel.lightning import LAST_GOOD, WorldModelModule


# ------------------------------------------------------------------------------------------ NaN
class _PoisonAt(Callback):
    """Puts a NaN into one observation of the batch of global step `step`."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Batch, idx: int) -> None:
        if trainer.global_step == self.step:
            batch.obs[0, 3, 0] = float("nan")


def test_nan_loss_stops_naming_step_and_batch_after_a_last_good_checkpoint(tmp_path, tiny_store) -> None:
    tiny = tiny_store(episodes=[60] * 6, chunk_steps=16)
    ckpt_dir = tmp_path / "ckpt"
    module = WorldModelModule(kind="ensemble", config={"preset": "tiny"})
    trainer = quiet_trainer(tmp_path, [ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=5),
                                  _PoisonAt(7)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(FloatingPointError, match=r"global step 7, epoch 0, batch 7: the batch holds non-finite "
                                                     r"obs.*last-good\.ckpt") as info:
            trainer.fit(module, datamodule=tiny_datamodule(tiny.path))
    print(info.value)
    good = torch.load(ckpt_dir / LAST_GOOD, map_location="cpu", weights_only=False)
    assert good["global_step"] == 7
    assert torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 5
    # The checkpoint holds the parameters the failing step started from (the update never happened).
    now = module.state_dict()
    for key, value in good["state_dict"].items():
        assert torch.isfinite(value.float()).all() and torch.equal(value, now[key]), key

    # It resumes at the failing batch: with clean data, training completes the epoch.
    resumed = WorldModelModule(kind="ensemble", config={"preset": "tiny"})
    trainer = quiet_trainer(tmp_path, [ModelCheckpoint(dirpath=ckpt_dir, save_last=True, every_n_train_steps=5)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(resumed, datamodule=tiny_datamodule(tiny.path), ckpt_path=str(ckpt_dir / LAST_GOOD))
    assert trainer.global_step == 10


# ------------------------------------------------------------------------------ corrupted chunk
def test_fit_on_a_corrupted_chunk_fails_naming_array_and_chunk(tmp_path, tiny_store, monkeypatch) -> None:
    import train

    tiny = tiny_store(episodes=[60] * 6, chunk_steps=16)
    tiny_datamodule(tiny.path).prepare()  # the normalization is cached: the failure must come from the windows
    chunk = Path(tiny.path) / "obs" / "c" / "3" / "0"
    data = bytearray(chunk.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 4):
        data[i] ^= 0xFF
    chunk.write_bytes(bytes(data))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    args = ["fit", "--model.kind", "ensemble", "--model.config", '{"preset": "tiny"}', "--data.store", tiny.path,
            "--data.window", "8", "--data.batch_size", "4", "--data.batches_per_epoch", "5",
            "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false", "--out_dir", str(tmp_path)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(StoreCorruptionError, match=r"array 'obs' chunk 3 along 'step' \(rows 48\.\.63\)"):
            train.main(args)
