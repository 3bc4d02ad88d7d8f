"""The loop's model step: fine-tune the world model on the store after real episodes were appended."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import cast

from policies.config import PolicyConfig


def refit(model_path: str, store_path: str, cfg: PolicyConfig, out: Path, iteration: int) -> str:
    """Fine-tune the model at `model_path` for `cfg.refit_steps` steps on the grown store; return the new
    model file (`out/model-iter{iteration}.pt`), so every iteration's model stays on disk."""
    import lightning as L

    import worldmodel
    from data_pipeline.windows.datamodule import WindowDataModule
    from worldmodel.lightning import ModelKind, WorldModelModule

    model = worldmodel.load(model_path)
    dm = WindowDataModule(store=store_path, window=cfg.refit_window, batch_size=cfg.refit_batch_size,
                          batches_per_epoch=cfg.refit_steps, val_batches=4, sample_seed=cfg.seed + iteration)
    # The module would build a fresh model from the config; it gets the loaded one instead.
    module = WorldModelModule(kind=cast(ModelKind, model.model_type), config=asdict(model.config), lr=cfg.refit_lr,
                              seed=cfg.seed + iteration)
    module.model = model.train()
    trainer = L.Trainer(max_steps=cfg.refit_steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=4, gradient_clip_val=10.0)
    trainer.fit(module, dm)
    path = out / f"model-iter{iteration}.pt"
    module.model.eval().save(str(path))
    return str(path)
