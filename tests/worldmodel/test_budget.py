"""The training budget follows the data (issue 14): an epoch is one pass over the train split (bounded), the fit
stops early when the validation loss stops improving, ends on the best epoch's weights (not the last), is
bounded by max_steps, and says why it stopped."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from training_helpers import quiet_trainer

from data_pipeline.errors import InputError
from data_pipeline.windows.datamodule import EPOCH_BATCHES, WindowDataModule, epoch_batches
from worldmodel.lightning import BestWeights, WorldModelModule, plateau_schedule


def test_an_epoch_is_one_pass_over_the_train_split_within_bounds() -> None:
    low, high = EPOCH_BATCHES
    assert epoch_batches(2_000, window=16, batch_size=32) == low  # a tiny store: many passes per epoch
    assert epoch_batches(2_000_000, window=16, batch_size=32) == high  # a huge store: validation stays frequent
    assert epoch_batches(100_000, window=16, batch_size=32) == -(-100_000 // (32 * 15))  # one pass: 209
    assert epoch_batches(100_000, window=16, batch_size=32, processes=2) == -(-100_000 // (2 * 32 * 15))


def test_the_datamodule_sizes_its_epoch_from_the_store(tiny_store) -> None:
    store = tiny_store(episodes=6, min_transitions=40, max_transitions=40)
    auto = WindowDataModule(store.path, window=8, batch_size=4)
    assert auto.epoch_batches == epoch_batches(auto.usage.transitions_used, 8, 4) == EPOCH_BATCHES[0]
    assert len(auto.train_dataloader().dataset) == auto.epoch_batches
    assert WindowDataModule(store.path, window=8, batch_size=4, batches_per_epoch=7).epoch_batches == 7


class Scripted(L.LightningModule):
    """A module whose weight is the number of the epoch that trained it last, and whose validation loss follows a
    script: so which weights the fit ends on says which epoch it restored."""

    def __init__(self, val_losses: list[float]) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.val_losses = val_losses

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        with torch.no_grad():
            self.w.fill_(float(self.current_epoch))
        return (self.w * 0.0 + batch.sum() * 0.0).requires_grad_()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val/loss", self.val_losses[min(self.current_epoch, len(self.val_losses) - 1)])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.zeros(3, 1), batch_size=1)

    def val_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(torch.zeros(1, 1), batch_size=1)


def _fit(tmp_path: Path, val_losses: list[float], **trainer_args: object) -> tuple[Scripted, BestWeights]:
    best = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/loss", save_top_k=1,
                           enable_version_counter=False)
    restore = BestWeights(best)
    module = Scripted(val_losses)
    early = EarlyStopping(monitor="val/loss", patience=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet_trainer(tmp_path, [early, best, restore], **{"max_epochs": 20, **trainer_args}).fit(module)
    return module, restore


def test_early_stopping_ends_the_fit_on_the_best_epochs_weights(tmp_path, capsys) -> None:
    module, restore = _fit(tmp_path, [3.0, 2.0, 1.0, 1.5, 1.2, 0.5])  # best at epoch 2, two epochs without gain
    assert float(module.w.detach()) == 2.0 and restore.best_epoch == 2  # the weights of epoch 2, not of the last (4)
    out = capsys.readouterr().out
    assert "stopped: early stopping (val/loss did not improve for 2 epochs, patience 2); restored best epoch 2 " \
           "(val/loss 1)" in out


def test_max_steps_bounds_the_fit_and_is_named(tmp_path, capsys) -> None:
    module, restore = _fit(tmp_path, [5.0, 4.0, 3.0, 2.0, 1.0], max_steps=7)  # 3 steps an epoch: stops in epoch 2
    assert "stopped: max_steps 7 reached" in capsys.readouterr().out
    assert restore.best_epoch == 1 and float(module.w.detach()) == 1.0  # epoch 2 never validated: not kept


@pytest.mark.slow
def test_fit_prints_why_it_stopped_and_saves_the_best_weights(tmp_path, tiny_store, monkeypatch, capsys) -> None:
    """Through `train.py fit`: the model file holds best.ckpt's weights, not last.ckpt's, and MLflow has the tag."""
    import mlflow

    import train
    from worldmodel.io import load_checkpoint_file

    store = tiny_store(episodes=8, min_transitions=30, max_transitions=30).path
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    args = ["fit", "--config", str(Path(train.__file__).parent / "configs/pendulum/ensemble.yaml"), "--data.store",
            store, "--model.config.preset", "tiny", "--model.lr", "0.05", "--data.window", "8",
            "--data.batches_per_epoch", "4", "--data.val_batches", "2", "--early_stopping.patience", "1",
            "--trainer.max_epochs", "40", "--trainer.enable_progress_bar", "false", "--model.eval_horizons", "[1, 5]",
            "--model.eval_samples", "2", "--model.eval_windows", "4", "--out_dir", str(tmp_path / "runs"),
            "--mlflow.run_name", "budget", "--mlflow.registered_model_name", ""]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train.main(args) == 0
    out = capsys.readouterr().out
    assert "stopped: early stopping (val/loss did not improve for 1 epochs, patience 1); restored best epoch" in out
    run = tmp_path / "runs" / "budget"
    best = load_checkpoint_file(run / "best.ckpt", "cpu")["state_dict"]
    last = load_checkpoint_file(run / "last.ckpt", "cpu")["state_dict"]
    saved = load_checkpoint_file(run / "model.pt", "cpu")["state_dict"]
    assert any(not torch.equal(best[k], last[k]) for k in best)  # the best epoch was not the last one
    # The model file holds best.ckpt's weights (and the calibration fitted after the fit, which best.ckpt,
    # written during it, cannot hold).
    assert all(torch.equal(saved[k.removeprefix("model.")], v) for k, v in best.items()
               if not k.endswith("calibration"))
    run_id = (run / "mlflow_run_id").read_text()
    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    assert tags["twinworld.stopped"].startswith("early stopping (val/loss did not improve")


class Decaying(Scripted):
    """Scripted, with `plateau_schedule` on an AdamW whose rate is recorded at the start of every epoch."""

    def __init__(self, val_losses: list[float], patience: int) -> None:
        super().__init__(val_losses)
        self.patience = patience
        self.rates: list[float] = []

    def on_train_epoch_start(self) -> None:
        self.rates.append(self.trainer.optimizers[0].param_groups[0]["lr"])

    def configure_optimizers(self) -> dict:  # type: ignore[override]
        return plateau_schedule(torch.optim.AdamW(self.parameters(), lr=1e-3), self.patience, 0.5)


def test_the_learning_rate_halves_after_patience_epochs_without_a_lower_val_loss(tmp_path) -> None:
    """A noisy validation loss settles: 2 epochs without a new low halve the rate, a new low resets the count."""
    module = Decaying([3.0, 2.0, 2.5, 2.4, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6], patience=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet_trainer(tmp_path, [], max_epochs=11).fit(module)
    # epochs 2, 3 bad -> halved from epoch 4; epoch 4 a new low; 5, 6 bad -> halved from 7; 7, 8 bad -> from 9
    assert module.rates == pytest.approx([1e-3] * 4 + [5e-4] * 3 + [2.5e-4] * 2 + [1.25e-4] * 2)


def test_a_learning_rate_decay_that_cannot_work_is_refused_before_the_data_is_read() -> None:
    for patience, factor in ((0, 0.5), (3, 1.0), (3, 0.0), (3, -0.5)):
        with pytest.raises(InputError, match="model.lr_decay_factor .* expected a factor in \\(0, 1\\)"):
            WorldModelModule(lr_decay_patience=patience, lr_decay_factor=factor)
    assert WorldModelModule(lr_decay_patience=None).hparams["lr_decay_patience"] is None  # a constant rate
