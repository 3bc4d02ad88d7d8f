"""`train.py test --data.test_store`: one held-out yardstick on the user's own store (issue 14), with evaluation
starts every `--data.test_stride` rows from each episode's first row; an incompatible store is refused in one
line."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, subprocess_env

from data_pipeline.windows import eval_starts


def test_eval_starts_every_k_rows_from_each_episodes_first_row() -> None:
    starts = eval_starts(np.array([0, 100]), np.array([30, 12]), window=10, max_windows=99, stride=4)
    assert starts.tolist() == [0, 4, 8, 12, 16, 20, 100]  # an episode of 30 rows: 0..20; of 12 rows: only 0
    assert eval_starts(np.array([0]), np.array([30]), window=10, max_windows=99).tolist() == [0, 10, 20]


def _fit(tmp_path: Path, store: str) -> Path:
    import train

    args = ["fit", "--config", str(REPO / "configs/pendulum/ensemble.yaml"), "--data.store", store,
            "--model.config.preset", "tiny", "--data.window", "8", "--data.batches_per_epoch", "3",
            "--data.val_batches", "1", "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
            "--model.eval_horizons", "[1, 5]", "--model.eval_samples", "2", "--model.eval_windows", "64",
            "--model.eval_context", "4", "--out_dir", str(tmp_path / "runs"), "--mlflow.run_name", "fit",
            "--mlflow.registered_model_name", ""]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert train.main(args) == 0
    return tmp_path / "runs" / "fit" / "last.ckpt"


def _test(tmp_path: Path, store: str, test_store: str, ckpt: Path) -> subprocess.CompletedProcess[str]:
    env = subprocess_env()
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, str(REPO / "train.py"), "test", "--config", str(REPO / "configs/pendulum/ensemble.yaml"),
           "--data.store", store, "--data.test_store", test_store, "--data.test_stride", "3", "--data.window", "8",
           "--ckpt_path", str(ckpt), "--model.config.preset", "tiny", "--model.eval_horizons", "[1, 5]",
           "--model.eval_context", "4", "--model.eval_samples", "2", "--model.eval_windows", "64",
           "--trainer.enable_progress_bar", "false", "--out_dir", str(tmp_path / "runs"), "--mlflow.run_name", "test"]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_train_py_test_scores_a_separate_store(tmp_path, tiny_store, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    store = tiny_store(episodes=6, min_transitions=30, max_transitions=30, name="train.zarr").path
    held_out = tiny_store(episodes=[20, 14, 5], seed=7, name="held_out.zarr").path  # 21, 15 and 6 rows
    ckpt = _fit(tmp_path, store)

    done = _test(tmp_path, store, held_out, ckpt)
    assert done.returncode == 0, done.stderr[-3000:]
    # windows of 4 + 5 rows every 3 rows: episode of 21 rows starts 0..12 (5), of 15 rows 0..6 (3), of 6: none
    assert f"test_store: {held_out}: 8 windows of 9 rows starting every 3 rows from each episode's first row" \
           in done.stdout, done.stdout[-3000:]
    assert "nrmse" in done.stdout and "coverage90" in done.stdout

    other = tiny_store(episodes=3, obs_dim=4, name="other.zarr").path  # a fourth observation channel
    refused = _test(tmp_path, store, other, ckpt)
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1].startswith(f"train.py: error: --data.test_store {other}: ")
    assert "Traceback" not in refused.stderr
