"""Preemption: SIGTERM (what cluster schedulers send before they preempt a job) or SIGUSR1 during
`train.py fit` saves a resumable `last.ckpt` and exits with 128 + the signal; `--ckpt_path last` resumes
from that very step (issue 14, docs/cluster.md)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import REPO, subprocess_env

from worldmodel.lightning import Preempted

PAUSE = '''
import pathlib, time
from lightning.pytorch.callbacks import Callback

class WaitForSignal(Callback):
    """Test helper: at `step`, write `marker` and wait (≤ 60 s) until a signal has been noted."""
    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, marker
    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step != self.step:
            return
        pathlib.Path(self.marker).write_text(str(self.step))
        for _ in range(1200):
            if trainer.received_sigterm or any(getattr(cb, "signum", None) for cb in trainer.callbacks):
                return
            time.sleep(0.05)

class RecordStart(Callback):
    """Test helper: write the global step training starts from (0, or the resumed checkpoint's)."""
    def __init__(self, path: str) -> None:
        self.path = path
    def on_train_start(self, trainer, *args) -> None:
        pathlib.Path(self.path).write_text(str(trainer.global_step))
'''


def _fit_args(store: str, out: Path) -> list[str]:
    """A tiny ensemble fit of 2 epochs × 10 batches; periodic checkpoints too rare to matter."""
    return ["fit", "--config", str(REPO / "configs/pendulum/ensemble.yaml"), "--data.store", store,
            "--model.config.preset", "tiny", "--data.batches_per_epoch", "10", "--data.val_batches", "1",
            "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--checkpoint.every_n_train_steps", "50", "--model.eval_horizons", "[1, 5]", "--model.eval_samples", "2",
            "--model.eval_windows", "4", "--out_dir", str(out), "--mlflow.run_name", "preempt",
            "--mlflow.registered_model_name", ""]


def test_preempted_exit_code_is_128_plus_the_signal() -> None:
    assert Preempted(signal.SIGTERM).code == 143 and Preempted(signal.SIGUSR1).code == 128 + signal.SIGUSR1


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_mid_fit_saves_a_checkpoint_that_resumes(tmp_path, tiny_store, monkeypatch, signum) -> None:
    import train

    store = tiny_store(episodes=4, min_transitions=60, max_transitions=60, name="long.zarr").path
    (tmp_path / "pause_cb.py").write_text(PAUSE)
    marker = tmp_path / "paused"
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *_fit_args(store, tmp_path / "runs"),
         "--trainer.callbacks+=pause_cb.WaitForSignal", "--trainer.callbacks.step", "7",
         "--trainer.callbacks.marker", str(marker)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert marker.exists(), f"the run never reached step 7:\n{proc.communicate()[0][-3000:]}"
        proc.send_signal(signum)
        output = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, output[-3000:]
    assert f"preempted: {signal.Signals(signum).name} at global step 7" in output, output[-3000:]
    assert "Traceback" not in output and "model_uri" not in output  # a clean stop, nothing published
    last = tmp_path / "runs" / "preempt" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 7

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.syspath_prepend(str(tmp_path))
    started = tmp_path / "started"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = train.main([*_fit_args(store, tmp_path / "runs"), "--ckpt_path", "last",
                           "--trainer.callbacks+=pause_cb.RecordStart", "--trainer.callbacks.path", str(started)])
    assert code == 0 and started.read_text() == "7", "the resumed run did not start from the preemption checkpoint"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 20  # finished: 2 epochs × 10 steps
