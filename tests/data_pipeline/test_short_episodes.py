"""Stores of short episodes (a balancing task under a random policy: 4–25 steps) train with the shipped
config: the window fits the episodes, the fit says how much data it used, and evaluation reports the
horizons the episodes hold or says why it was skipped (issue 14)."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from conftest import REPO

from data_pipeline.windows import DataUsage, WindowDataModule, fitting_window


def test_window_fits_short_episodes_and_keeps_long_ones() -> None:
    pendulum = np.full(50, 201)
    assert fitting_window(pendulum, 16, coverage=0.9) == 16  # long episodes: the window as asked
    short = np.arange(5, 27)  # 5–26 rows
    w = fitting_window(short, 16, coverage=0.9)
    assert (short >= w).mean() >= 0.9 and (short >= w + 1).mean() < 0.9
    assert fitting_window(short, 16, coverage=0.0) == 16  # adaptation off
    assert fitting_window(np.array([1, 1, 1]), 16, coverage=0.9) == 2  # floor: one transition
    usage = DataUsage.of(short, w, 16)
    assert usage.episodes_used >= 0.9 * len(short) and f"window {w} rows, shortened from 16" in str(usage)


def test_datamodule_trains_on_most_short_episodes(tiny_store) -> None:
    store = tiny_store(episodes=60, obs_dim=4, action="discrete", n_actions=2, min_transitions=4,
                       max_transitions=25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm = WindowDataModule(store.path, window=16, batch_size=8, batches_per_epoch=2)
        batch = next(iter(dm.train_dataloader()))
    assert dm.window < 16 and batch.obs.shape[1] == dm.window
    assert dm.usage.fraction > 0.85, dm.usage
    # Before: a 16-row window kept only the episodes of ≥ 16 rows.
    assert WindowDataModule(store.path, window=16, window_coverage=0).usage.fraction < dm.usage.fraction


def _fit(tmp_path, monkeypatch, capsys, store: str, *extra: str) -> str:
    import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The shipped CartPole config; only the budget is cut.
        code = train.main(["fit", "--config", str(REPO / "configs/cartpole/ensemble.yaml"), "--data.store", store,
                           "--model.config.preset", "tiny", "--trainer.max_epochs", "1", "--data.batches_per_epoch",
                           "5", "--data.val_batches", "1", "--model.eval_samples", "4", "--trainer.accelerator", "cpu",
                           "--trainer.enable_progress_bar", "false", "--mlflow.registered_model_name", "",
                           "--out_dir", str(tmp_path / "runs"), *extra])
    assert code == 0
    return capsys.readouterr().out


@pytest.fixture
def cartpole_like(tiny_store) -> str:
    return tiny_store(episodes=60, obs_dim=4, action="discrete", n_actions=2, min_transitions=4,
                      max_transitions=25, name="cartpole_like.zarr").path


@pytest.mark.slow
def test_fit_on_short_episodes_reports_usage_and_evaluation(tmp_path, monkeypatch, capsys, cartpole_like) -> None:
    import mlflow

    out = _fit(tmp_path, monkeypatch, capsys, cartpole_like, "--model.eval_horizons", "[1, 5, 10, 50]")
    used = re.search(r"^data_used: (\d+)% of transitions \((\d+)/(\d+) episodes\)", out, re.M)
    assert used, out
    assert int(used[1]) >= 85
    # The table holds the horizons the test episodes allow; h50 is dropped and the output says so.
    assert re.search(r"^\s+1 ", out, re.M) and not re.search(r"^\s+50 ", out, re.M), out
    assert "evaluation: horizons 50 dropped (the longest test episode has" in out
    run_id = re.search(r"^run_id: (\S+)", out, re.M)
    assert run_id, out
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    params = mlflow.get_run(run_id[1]).data.params
    assert float(params["data_used"]) >= 0.85 and int(params["data.window_used"]) < 16


@pytest.mark.slow
def test_fit_explains_a_skipped_evaluation(tmp_path, monkeypatch, capsys, cartpole_like) -> None:
    out = _fit(tmp_path, monkeypatch, capsys, cartpole_like, "--model.eval_context", "40")
    assert re.search(r"^evaluation: skipped \(the longest test episode has \d+ rows; the shortest horizon needs 41",
                     out, re.M), out
