"""Thin Lightning wrapper: trains any world model on the window DataModule.

The model itself is a plain `nn.Module` (worldmodel/ensemble.py, rssm.py, diffusion.py); this module
only builds it from the store's schema and normalization (dimensions are inferred from the data, the
class from `worldmodel.kinds.MODEL_KINDS`), runs its `loss`, and stores the self-describing model file
inside every Lightning checkpoint.
"""

from __future__ import annotations

import hashlib
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, Timer
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason
from lightning.pytorch.utilities.exceptions import SIGTERMException

from data_pipeline.errors import InputError
from data_pipeline.windows.batch import Batch
from worldmodel.base import ModelBase
from worldmodel.evaluation import evaluate, explain_evaluation, format_table
from worldmodel.io import load_checkpoint_file
from worldmodel.kinds import ModelKind, build_model, resolve_config

LAST_GOOD = "last-good.ckpt"  # written beside last.ckpt when a loss turns NaN/Inf, then training stops


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO, reading every checkpoint (local or URL) with `torch.load(weights_only=True)`.

    Lightning 2.6 loads a `ckpt_path` with `weights_only=False` for http(s) URLs and leaves local files
    to torch's default (which `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD` turns off): either runs the code a pickle
    names. This plugin ignores the caller's `weights_only` and refuses such files with a CheckpointError
    (worldmodel/io.py). A URL is fetched into a temporary file, not torch.hub's cache, which is keyed by
    the file name alone. Saving is Lightning's.
    """

    def load_checkpoint(self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
                        ) -> dict[str, Any]:
        data = load_checkpoint_file(path, "cpu" if map_location is None else map_location)
        if not isinstance(data, dict):
            from worldmodel.io import CheckpointError

            raise CheckpointError(f"{path}: not a Lightning checkpoint (holds a {type(data).__name__}, not a dict)")
        return data


class Preempted(SIGTERMException):
    """Training stopped by SIGTERM or SIGUSR1 after saving a resumable checkpoint; exits with 128 + the signal,
    as a shell reports a process that signal ended (143 for SIGTERM), so `&&` chains and schedulers see an
    unfinished run."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class Preemption(Callback):
    """Saves `last.ckpt` at the end of the training batch during which SIGTERM or SIGUSR1 arrived, then
    stops the fit with `Preempted` (docs/cluster.md). Cluster schedulers send SIGTERM before preemption.

    Lightning's own handlers stay: its SIGTERM handler only sets `trainer.received_sigterm` (read here); under
    SLURM with auto-requeue its SIGUSR1 handler saves an hpc checkpoint and requeues the job, and this
    callback leaves SIGUSR1 to it. Otherwise SIGUSR1 (which would kill the process) is handled here.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: Any = None

    def _note(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        usr1 = signal.SIGUSR1
        if threading.current_thread() is threading.main_thread() and signal.getsignal(usr1) in (signal.SIG_DFL, None):
            self._previous = signal.signal(usr1, self._note)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        signum = signal.SIGTERM if trainer.received_sigterm else self.signum
        if signum is None:
            return
        callback = trainer.checkpoint_callback
        dirpath = callback.dirpath if isinstance(callback, ModelCheckpoint) else None
        path = Path(dirpath or trainer.default_root_dir) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}.ckpt"
        if isinstance(callback, ModelCheckpoint):  # so the resumed run's ModelCheckpoint overwrites it (no last-v1)
            callback.last_model_path = str(path)
        trainer.save_checkpoint(path)  # the state ModelCheckpoint saves here too: resumes at the next batch
        if trainer.is_global_zero:
            print(f"preempted: {signal.Signals(signum).name} at global step {trainer.global_step}; checkpoint "
                  f"saved: {path} (run the same command with --ckpt_path last to resume)", file=sys.stderr,
                  flush=True)
        raise Preempted(int(signum))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGUSR1, self._previous)
            self._previous = None


def stop_reason(trainer: L.Trainer) -> str:
    """Why a finished fit stopped, one phrase: early stopping (with its patience), max_steps, max_time or
    max_epochs, in the order Lightning checks them."""
    for callback in trainer.callbacks:  # type: ignore[attr-defined]  # set by the callback connector
        if isinstance(callback, EarlyStopping) and callback.stopping_reason != EarlyStoppingReason.NOT_STOPPED:
            if callback.stopping_reason == EarlyStoppingReason.PATIENCE_EXHAUSTED:
                return (f"early stopping ({callback.monitor} did not improve for {callback.wait_count} epochs, "
                        f"patience {callback.patience})")
            return f"early stopping ({callback.stopping_reason_message or callback.stopping_reason.value})"
    if trainer.max_steps != -1 and trainer.global_step >= trainer.max_steps:
        return f"max_steps {trainer.max_steps} reached"
    for callback in trainer.callbacks:  # type: ignore[attr-defined]
        remaining = callback.time_remaining() if isinstance(callback, Timer) else None
        if remaining is not None and remaining <= 0:
            return "max_time reached"
    if trainer.max_epochs is not None and trainer.max_epochs != -1 and trainer.current_epoch >= trainer.max_epochs:
        return f"max_epochs {trainer.max_epochs} reached"
    return f"the trainer stopped at epoch {trainer.current_epoch}, step {trainer.global_step}"


class BestWeights(Callback):
    """Ends a fit on the weights of its best validation, and says why it stopped (`stopped: …`).

    `best` is a ModelCheckpoint that keeps the checkpoint of the lowest validation loss, saved right after
    that validation, so it holds the weights validated there and the model state that validation set (the
    ensemble's elites, `end_validation`): restoring it keeps weights and elites consistent. The restore
    happens at `on_fit_end`, before the CLI evaluates, calibrates, saves and registers the model. A stop by
    preemption or an error never reaches `on_fit_end`, so nothing is swapped there.
    """

    def __init__(self, best: ModelCheckpoint) -> None:
        self.best = best
        self.summary = ""
        """`stopped: <reason>; restored best epoch E (val/loss 0.123)`, after the fit."""
        self.best_epoch: int | None = None
        """The epoch whose weights the fit ended on (None: no validation score, the last weights)."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        text = f"stopped: {stop_reason(trainer)}"
        path = self.best.best_model_path
        if path and Path(path).is_file():
            checkpoint = load_checkpoint_file(path, pl_module.device)
            pl_module.load_state_dict(checkpoint["state_dict"])
            self.best_epoch = int(checkpoint["epoch"])
            score = self.best.best_model_score
            value = f" ({self.best.monitor} {float(score):.4g})" if score is not None else ""
            text += f"; restored best epoch {checkpoint['epoch']}{value}"
        else:
            text += "; no validation score, so the last weights are kept"
        self.summary = text
        if trainer.is_global_zero:
            print(text, flush=True)


def plateau_schedule(optimizer: torch.optim.Optimizer, patience: int, factor: float) -> dict[str, Any]:
    """Lightning's optimizer config with torch's ReduceLROnPlateau on `val/loss`: after `patience` epochs without
    a lower validation loss the rate is multiplied by `factor`, down to 1/100 of where it started."""
    # torch decays once its count of bad epochs exceeds its own patience: `patience - 1` decays after N of them.
    lowest = min(float(group["lr"]) for group in optimizer.param_groups) / 100
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=factor,
                                                           patience=patience - 1, min_lr=lowest)
    # strict=False: a split without validation windows (already warned about) keeps the rate constant.
    return {"optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": "val/loss", "interval": "epoch", "strict": False}}


class WorldModelModule(L.LightningModule):
    """Lightning wrapper around a world model; the model is built in `configure_model` from the data."""

    def __init__(
        self,
        kind: ModelKind = "ensemble",
        config: dict[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-5,
        lr_decay_patience: int | None = None,
        lr_decay_factor: float = 0.5,
        seed: int = 0,
        eval_context: int = 8,
        eval_horizons: tuple[int, ...] = (1, 5, 10, 25, 50),
        eval_samples: int = 20,
        eval_windows: int = 256,
    ) -> None:
        """
        Args:
            kind: which world model: ensemble (PETS/MBPO), rssm (Dreamer) or diffusion (DIAMOND-style).
            config: fields of the kind's config that differ from its preset (every field is listed
                at the end of --help); `preset: tiny|small|medium` picks the size preset they apply to.
            lr: AdamW learning rate.
            weight_decay: AdamW weight decay.
            lr_decay_patience: epochs without a lower val/loss after which the learning rate is multiplied by
                `lr_decay_factor` (torch's ReduceLROnPlateau, down to lr/100); null (the default) keeps it
                constant. The shipped ensemble configs set 3: a noisy validation loss then settles instead of
                the fit keeping one lucky epoch (issue 14's CartPole; measured in BENCHMARKS.md, bench_zoo).
            lr_decay_factor: the factor, in (0, 1).
            seed: seeds the model's per-step randomness (bootstraps, latent samples), so a resumed run
                repeats an uninterrupted one.
            eval_context: real rows assimilated before open-loop evaluation.
            eval_horizons: horizons (steps) at which evaluation metrics are reported.
            eval_samples: imagined samples per evaluation window (coverage, CRPS).
            eval_windows: evaluation windows at most, from the split being evaluated.
        """
        if not 0.0 < lr_decay_factor < 1.0 or (lr_decay_patience is not None and lr_decay_patience < 1):
            raise InputError(f"model.lr_decay_factor {lr_decay_factor} / model.lr_decay_patience "
                             f"{lr_decay_patience}: expected a factor in (0, 1) and a patience of at least 1 epoch "
                             "(or null: a constant rate)")
        super().__init__()
        self.save_hyperparameters()
        self.kind = kind
        self.model_config = resolve_config(kind, config)
        self.model: ModelBase[Any] | None = None
        self._val_metrics: list[dict[str, torch.Tensor]] = []

    def configure_model(self) -> None:
        if self.model is not None:
            return
        dm = self._datamodule()
        self.model = build_model(self.kind, self.model_config, dm.schema, dm.normalization)

    def _datamodule(self) -> Any:
        # Lightning's data connector sets `trainer.datamodule`; the Trainer class does not declare it.
        return self.trainer.datamodule  # type: ignore[attr-defined]

    @property
    def world_model(self) -> ModelBase[Any]:
        """The model, once built (`configure_model`, or assigned by a caller that loaded one)."""
        if self.model is None:
            raise RuntimeError("the world model is built in configure_model, from the datamodule's store")
        return self.model

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.world_model.loss(batch)

    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        # Per-step seed: a run resumed from a mid-epoch checkpoint draws the same noise.
        key = f"{self.hparams['seed']}:{self.global_step}:{self.global_rank}"
        digest = hashlib.blake2b(key.encode(), digest_size=8)
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
            self.world_model.end_validation(avg)
        self._val_metrics.clear()
        if self.trainer.state.fn == "validate":
            self._log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def _log_evaluation(self, split: str) -> None:
        hp = self.hparams
        if split == "test" and getattr(self._datamodule(), "test_store", None):
            self._log_test_store_evaluation()
            return
        evaluation = explain_evaluation(self.world_model, self._datamodule(), split, context=hp["eval_context"],
                                        horizons=tuple(hp["eval_horizons"]), samples=hp["eval_samples"],
                                        max_windows=hp["eval_windows"])
        if evaluation.note:  # a dropped horizon or a skipped evaluation is never silent
            print(f"evaluation: skipped ({evaluation.note})" if evaluation.metrics is None else
                  f"evaluation: {evaluation.note}")
        metrics = evaluation.metrics
        if metrics is None:
            return
        self.evaluation = metrics
        for k, v in metrics.items():
            self.log(f"{split}_eval/{k}", v, batch_size=1)

    def _log_test_store_evaluation(self) -> None:
        """Score the model on a separate store (`--data.test_store`): windows of context + the longest horizon
        its episodes hold, starting every `--data.test_stride` rows from each episode's first row; the ridge
        baseline is fitted on the training store's train split. Prints the table and what it covers."""
        from data_pipeline.windows.datamodule import split_eval_windows, test_store_windows

        dm, hp = self._datamodule(), self.hparams
        context, horizons = int(hp["eval_context"]), tuple(hp["eval_horizons"])
        _, lengths = dm.test_store_episodes()
        longest = int(lengths.max()) if len(lengths) else 0
        kept = tuple(h for h in horizons if context + h <= longest)
        if not kept:
            print(f"evaluation: skipped (the longest episode of {dm.test_store} has {longest} rows; the shortest "
                  f"horizon needs {context + min(horizons)}: model.eval_context {context} + {min(horizons)})")
            return
        windows, found = test_store_windows(dm, context + max(kept), int(hp["eval_windows"]))
        if windows is None:  # unreachable while `longest` holds the window
            return
        stride = dm.test_stride or context + max(kept)
        used = windows.batch_size
        capped = f", the first {used} of {found} (raise model.eval_windows)" if found > used else ""
        dropped = [h for h in horizons if h not in kept]
        print(f"test_store: {dm.test_store}: {windows.batch_size} windows of {windows.length} rows starting every "
              f"{stride} rows from each episode's first row{capped}"
              + (f"; horizons {', '.join(map(str, dropped))} dropped (longest episode {longest} rows)" if dropped
                 else ""))
        train = split_eval_windows(dm, "train", dm.window, int(hp["eval_windows"]))
        metrics = evaluate(self.world_model, windows, context=context, horizons=kept, samples=int(hp["eval_samples"]),
                           train=train)
        print(format_table(metrics, kept), flush=True)
        self.evaluation = metrics
        for k, v in metrics.items():
            self.log(f"test_eval/{k}", v, batch_size=1)

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        optimizer = torch.optim.AdamW(self.world_model.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
        if hp["lr_decay_patience"] is None:
            return optimizer
        return plateau_schedule(optimizer, hp["lr_decay_patience"], hp["lr_decay_factor"])

    def _stop_on_non_finite(self, loss: torch.Tensor, batch: Batch, batch_idx: int) -> None:
        """Write `last-good.ckpt` (the state before this step: the update has not happened) and raise.

        The checkpoint resumes at this very batch (`--ckpt_path …/last-good.ckpt`), e.g. after lowering
        `model.lr` or fixing the data; the message names the step, the batch and any non-finite input.
        """
        trainer = self.trainer
        callback = trainer.checkpoint_callback
        dirpath = callback.dirpath if isinstance(callback, ModelCheckpoint) else None
        folder = Path(dirpath or trainer.default_root_dir)
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
        checkpoint["twinworld_model"] = self.world_model.checkpoint_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint written after an epoch ended (the fit's last.ckpt at its end) resumes at the next epoch's
        first batch. Lightning 2.6 restores that epoch's batch count as the new epoch's, so the epoch loop
        counted the new epoch as done and a resumed `--trainer.max_epochs 2` trained 0 batches. Runs before
        Lightning restores its loops (same dict)."""
        loops = checkpoint.get("loops")
        fit = loops.get("fit_loop") if isinstance(loops, dict) else None  # a damaged file: Lightning says so
        fit = fit if isinstance(fit, dict) else {}
        progress = fit.get("epoch_progress")
        epochs = progress.get("current") if isinstance(progress, dict) else None
        batches = fit.get("epoch_loop.batch_progress")
        if (isinstance(epochs, dict) and isinstance(batches, dict) and batches.get("is_last_batch")
                and epochs.get("completed") == epochs.get("started")):
            batches["current"] = dict.fromkeys(batches.get("current", {}), 0)
            batches["is_last_batch"] = False
