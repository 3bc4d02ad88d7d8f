"""Thin Lightning wrapper: trains any world model on the window DataModule.

The model itself is a plain `nn.Module` (worldmodel/ensemble.py, rssm.py, diffusion.py); this module
only builds it from the store's schema and normalization (dimensions are inferred from the data),
runs its `loss`, and stores the self-describing model file inside every Lightning checkpoint.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch

from data_pipeline.batch import Batch, Normalization
from data_pipeline.schema import StoreSchema
from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel
from worldmodel.interface import WorldModel

ModelKind = Literal["ensemble", "rssm", "diffusion"]
LAST_GOOD = "last-good.ckpt"  # written beside last.ckpt when a loss turns NaN/Inf, then training stops


def build_model(kind: ModelKind, config: Any, schema: StoreSchema, normalization: Normalization) -> WorldModel:
    """The world model of `kind` for a store's schema and normalization."""
    if kind == "ensemble":
        return EnsembleWorldModel(config, schema, normalization)
    if kind == "rssm":
        from worldmodel.rssm import RSSMWorldModel

        return RSSMWorldModel(config, schema, normalization)
    if kind == "diffusion":
        from worldmodel.diffusion import DiffusionWorldModel

        return DiffusionWorldModel(config, schema, normalization)
    raise ValueError(f"model kind {kind!r}; expected 'ensemble', 'rssm' or 'diffusion'")


def _config_for(kind: ModelKind, given: dict[str, Any] | None) -> Any:
    if kind == "ensemble":
        cls = EnsembleConfig
    elif kind == "rssm":
        from worldmodel.rssm import RSSMConfig

        cls = RSSMConfig
    else:
        from worldmodel.diffusion import DiffusionConfig

        cls = DiffusionConfig
    given = dict(given or {})
    preset = given.pop("preset", None)
    base = cls.preset(preset) if preset is not None else cls()
    unknown = set(given) - set(base.__dataclass_fields__)
    if unknown:
        raise ValueError(f"model.config: unknown keys {sorted(unknown)} for {kind}; "
                         f"expected some of {sorted(base.__dataclass_fields__)}")
    for key, value in given.items():
        setattr(base, key, value)
    return base


class WorldModelModule(L.LightningModule):
    """Lightning wrapper around a world model; the model is built in `configure_model` from the data."""

    def __init__(
        self,
        kind: ModelKind = "ensemble",
        config: dict[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        seed: int = 0,
        eval_context: int = 8,
        eval_horizons: tuple[int, ...] = (1, 5, 10, 25, 50),
        eval_samples: int = 20,
        eval_windows: int = 256,
    ) -> None:
        """
        Args:
            kind: which world model: ensemble (PETS/MBPO), rssm (Dreamer) or diffusion (DIAMOND-style).
            config: the model's config fields (see EnsembleConfig / RSSMConfig / DiffusionConfig);
                `preset: tiny|small|medium` picks a size preset first, where the model has presets.
            lr: AdamW learning rate.
            weight_decay: AdamW weight decay.
            seed: seeds the model's per-step randomness (bootstraps, latent samples), so a resumed run
                repeats an uninterrupted one.
            eval_context: real rows assimilated before open-loop evaluation.
            eval_horizons: horizons (steps) at which evaluation metrics are reported.
            eval_samples: imagined samples per evaluation window (coverage, CRPS).
            eval_windows: evaluation windows at most, from the split being evaluated.
        """
        super().__init__()
        self.save_hyperparameters()
        self.kind = kind
        self.model_config = _config_for(kind, config)
        self.model: WorldModel | None = None
        self._val_metrics: list[dict[str, torch.Tensor]] = []

    def configure_model(self) -> None:
        if self.model is not None:
            return
        dm = self.trainer.datamodule
        self.model = build_model(self.kind, self.model_config, dm.schema, dm.normalization)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.model.loss(batch)

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        # Per-step seed: a run resumed from a mid-epoch checkpoint draws the same noise.
        digest = hashlib.blake2b(f"{self.hparams.seed}:{self.global_step}:{self.global_rank}".encode(), digest_size=8)
        torch.manual_seed(int.from_bytes(digest.digest(), "little") & 0x7FFF_FFFF_FFFF_FFFF)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss, metrics = self(batch)
        # Every DDP rank takes the same branch: saving the checkpoint below is a collective call.
        if self.trainer.strategy.reduce_boolean_decision(not bool(torch.isfinite(loss)), all=False):
            self._stop_on_non_finite(loss, batch, batch_idx)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.batch_size)
        for k, v in metrics.items():
            if v.numel() == 1:
                self.log(f"train/{k}", v, batch_size=batch.batch_size)
        return loss

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        loss, metrics = self(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=batch.batch_size, sync_dist=True)
        for k, v in metrics.items():
            if v.numel() == 1:
                self.log(f"val/{k}", v, batch_size=batch.batch_size, sync_dist=True)
        self._val_metrics.append({k: v.detach() for k, v in metrics.items()})

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        loss, metrics = self(batch)
        self.log("test/loss", loss, batch_size=batch.batch_size, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        if self._val_metrics and not self.trainer.sanity_checking:
            avg = {k: torch.stack([m[k] for m in self._val_metrics]).mean(0) for k in self._val_metrics[0]}
            self.model.end_validation(avg)
        self._val_metrics.clear()
        if self.trainer.state.fn == "validate":
            self._log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def _log_evaluation(self, split: str) -> None:
        from data_pipeline.eval_windows import split_eval_windows
        from worldmodel.evaluation import evaluate

        dm = self.trainer.datamodule
        length = self.hparams.eval_context + max(self.hparams.eval_horizons)
        windows = split_eval_windows(dm, split, length, self.hparams.eval_windows)
        if windows is None:
            return
        train = split_eval_windows(dm, "train", dm.hparams.window, self.hparams.eval_windows)
        metrics = evaluate(self.model, windows, context=self.hparams.eval_context,
                           horizons=self.hparams.eval_horizons, samples=self.hparams.eval_samples,
                           train=train)
        self.evaluation = metrics
        for k, v in metrics.items():
            self.log(f"{split}_eval/{k}", v, batch_size=windows.batch_size)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def _stop_on_non_finite(self, loss: torch.Tensor, batch: Batch, batch_idx: int) -> None:
        """Write `last-good.ckpt` (the state before this step: the update has not happened) and raise.

        The checkpoint resumes at this very batch (`--ckpt_path …/last-good.ckpt`), e.g. after lowering
        `model.lr` or fixing the data; the message names the step, the batch and any non-finite input.
        """
        trainer = self.trainer
        callback = trainer.checkpoint_callback
        folder = Path(callback.dirpath if callback is not None and callback.dirpath else trainer.default_root_dir)
        path = folder / LAST_GOOD
        trainer.save_checkpoint(path)
        inputs = [name for name in ("obs", "action", "reward", "image")
                  if (t := getattr(batch, name, None)) is not None and t.is_floating_point()
                  and not bool(torch.isfinite(t).all())]
        cause = (f"the batch holds non-finite {', '.join(inputs)} (check the store)" if inputs else
                 "the batch is finite, so training diverged (lower model.lr or set trainer.gradient_clip_val)")
        raise FloatingPointError(
            f"non-finite training loss ({loss.item()} on rank {self.global_rank}) at global step {self.global_step}, "
            f"epoch {self.current_epoch}, batch {batch_idx}: {cause}. Stopped before the update; the last good "
            f"state is saved in {path} (resume with --ckpt_path {path})."
        )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # The self-describing model file inside the Lightning checkpoint: `worldmodel.load(ckpt)` works.
        checkpoint["twinworld_model"] = self.model.checkpoint_dict()
