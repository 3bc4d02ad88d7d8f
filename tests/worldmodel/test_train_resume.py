"""Resume (issue 3): a run killed mid-epoch and resumed with `--ckpt_path last` repeats an uninterrupted one.

Two levels: the window stream resumes at the checkpointed batch (in-process Trainer runs, every sampler
mode), and `train.py fit` killed with SIGKILL mid-epoch, then resumed, ends with the parameters of an
uninterrupted run (CPU, `torch.allclose`). The policy trainer's SIGKILL resume is tested with it, not here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import REPO, subprocess_env
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from data_pipeline.windows.batch import Batch
from data_pipeline.windows.datamodule import WindowDataModule
from worldmodel.io import read_checkpoint


class _Recorder(L.LightningModule):
    """Records which windows each training step saw (a digest of the batch)."""

    def __init__(self, obs_dim: int) -> None:
        super().__init__()
        self.net = torch.nn.Linear(obs_dim, obs_dim)
        self.seen: list[tuple[int, bytes]] = []

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        self.seen.append((self.global_step, batch.obs.numpy().tobytes()))
        return (self.net(batch.obs[:, :-1]) - batch.obs[:, 1:]).pow(2).mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class _Crash(Exception):
    pass


class _CrashAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise _Crash(f"crash at step {self.step}")


def _fit(dm: WindowDataModule, root: Path, crash_at: int | None = None, ckpt: str | None = None,
         limit: int | None = None) -> list:
    model = _Recorder(dm.schema.obs_dim)
    callbacks: list[Callback] = [ModelCheckpoint(dirpath=root, save_last=True, every_n_train_steps=3, save_top_k=-1)]
    if crash_at is not None:
        callbacks.append(_CrashAt(crash_at))
    trainer = L.Trainer(max_epochs=3, logger=False, callbacks=callbacks, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, default_root_dir=str(root),
                        limit_train_batches=limit)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            trainer.fit(model, datamodule=dm, ckpt_path=ckpt)
        except _Crash:
            pass
    return model.seen


@pytest.mark.parametrize(("cache_mb", "num_workers", "limit"), [(8.0, 0, None), (0.004, 0, None), (8.0, 2, None),
                                                             (0.004, 0, 4)],
                         ids=["resident", "rotating", "resident-2-workers", "rotating-limit_train_batches"])
def test_window_stream_resumes_at_the_checkpointed_batch(tmp_path, tiny_store, cache_mb, num_workers, limit) -> None:
    tiny = tiny_store(episodes=[60] * 8, chunk_steps=16)

    def dm() -> WindowDataModule:
        return WindowDataModule(tiny.path, window=8, batch_size=4, batches_per_epoch=5, val_batches=1,
                                cache_mb=cache_mb, num_workers=num_workers, val_fraction=0.0, test_fraction=0.0)

    total = 3 * (limit or 5)
    full = _fit(dm(), tmp_path / "full", limit=limit)
    assert len(full) == total and len({b for _, b in full}) == total
    # The last checkpoint before the crash is step 6: batch 1 (or 2, with epochs of 4) of epoch 1.
    crashed = _fit(dm(), tmp_path / "crash", crash_at=8, limit=limit)
    assert [s for s, _ in crashed] == list(range(8))
    resumed = _fit(dm(), tmp_path / "crash", ckpt=str(tmp_path / "crash" / "last.ckpt"), limit=limit)
    assert [s for s, _ in resumed] == list(range(6, total))
    assert [b for _, b in crashed[:6] + resumed] == [b for _, b in full], "the resumed run saw other windows"


def test_split_global_batch_equals_one_big_batch(tiny_store) -> None:
    """With everything resident, S parts of B windows are exactly one draw of S*B (the DDP global batch)."""
    from data_pipeline.store import TrajectoryStore
    from data_pipeline.windows import WindowSampler, usable_episodes

    tiny = tiny_store(episodes=[60] * 8, chunk_steps=16)
    store = TrajectoryStore.open(tiny.path)
    starts, lengths = usable_episodes(store, range(8), 8)
    small = WindowSampler(store, starts, lengths, window=8, batch_size=4, seed=3)
    big = WindowSampler(store, starts, lengths, window=8, batch_size=8, seed=3)
    for position in (0, 1, 17):
        parts = [small.arrays_at(position, part, 2)["obs"] for part in (0, 1)]
        np.testing.assert_array_equal(np.concatenate(parts), big.arrays_at(position)["obs"])


# ------------------------------------------------------------------------------ train.py + SIGKILL
PAUSE = '''
import pathlib, time
from lightning.pytorch.callbacks import Callback

class PauseAt(Callback):
    """Test helper: at `step`, write `marker` and sleep, so the test can SIGKILL the run right there."""
    def __init__(self, step: int, marker: str) -> None:
        self.step, self.marker = step, marker
    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            pathlib.Path(self.marker).write_text(str(self.step))
            time.sleep(600)

class RecordStart(Callback):
    """Test helper: write the global step training starts from (0, or the resumed checkpoint's)."""
    def __init__(self, path: str) -> None:
        self.path = path
    def on_train_start(self, trainer, *args) -> None:
        pathlib.Path(self.path).write_text(str(trainer.global_step))
'''


def _fit_args(store: str, out: Path, name: str) -> list[str]:
    """A tiny ensemble fit: 3 epochs of 12 batches, a checkpoint every 5 steps, a cheap evaluation."""
    return ["fit", "--config", str(REPO / "configs/pendulum/ensemble.yaml"), "--data.store", store,
            "--model.config.preset", "tiny", "--data.batches_per_epoch", "12", "--data.val_batches", "2",
            "--trainer.max_epochs", "3", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            "--checkpoint.every_n_train_steps", "5", "--model.eval_horizons", "[1, 5]", "--model.eval_samples", "4",
            "--model.eval_windows", "8", "--out_dir", str(out), "--mlflow.run_name", name,
            "--mlflow.registered_model_name", ""]


def _params(ckpt: Path) -> tuple[int, dict[str, torch.Tensor]]:
    state = torch.load(ckpt, map_location="cpu", weights_only=True)  # what train.py writes loads safely
    return state["global_step"], state["state_dict"]


@pytest.fixture(scope="module")
def pendulum_store(tmp_path_factory) -> str:
    from data_pipeline.record import record

    path = str(tmp_path_factory.mktemp("resume") / "p.zarr")
    record("Pendulum-v1", 4, path, seed=0, progress=False).close()
    return path


@pytest.mark.slow
def test_train_py_killed_mid_epoch_resumes_to_the_same_parameters(tmp_path, pendulum_store, monkeypatch) -> None:
    import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "pause_cb.py").write_text(PAUSE)
    marker = tmp_path / "paused"
    env = subprocess_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # Step 17 is batch 5 of epoch 1; the newest checkpoint then is step 15 (batch 3 of epoch 1).
    killed = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *_fit_args(pendulum_store, tmp_path / "runs", "resume"),
         "--trainer.callbacks+=pause_cb.PauseAt", "--trainer.callbacks.step", "17",
         "--trainer.callbacks.marker", str(marker)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not marker.exists() and killed.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), f"the run never reached step 17:\n{killed.communicate()[0][-3000:]}"
        killed.send_signal(signal.SIGKILL)
        killed.wait(30)
    finally:
        if killed.poll() is None:
            killed.kill()
    run_dir = tmp_path / "runs" / "resume"
    step, _ = _params(run_dir / "last.ckpt")
    assert step == 15 and step % 12 != 0, f"expected a mid-epoch checkpoint at step 15, got {step}"

    monkeypatch.syspath_prepend(str(tmp_path))
    started = tmp_path / "started"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train.main([*_fit_args(pendulum_store, tmp_path / "runs", "resume"), "--ckpt_path", "last",
                    "--trainer.callbacks+=pause_cb.RecordStart", "--trainer.callbacks.path", str(started)])
        assert started.read_text() == "15", "the resumed run did not start from the step-15 checkpoint"
        train.main(_fit_args(pendulum_store, tmp_path / "runs", "straight"))
    # Both runs saved their last checkpoint at step 35 and their final model (step 36) as model.pt.
    assert _params(run_dir / "last.ckpt")[0] == _params(tmp_path / "runs" / "straight" / "last.ckpt")[0] == 35
    resumed = read_checkpoint(str(run_dir / "model.pt"))["state_dict"]
    straight = read_checkpoint(str(tmp_path / "runs" / "straight" / "model.pt"))["state_dict"]
    assert resumed.keys() == straight.keys()
    for key in straight:
        assert torch.allclose(resumed[key], straight[key]), f"{key} differs after resume"


def _loops(epochs_completed: int, batches: int, last: bool) -> dict:
    progress = {"ready": batches, "completed": batches, "started": batches, "processed": batches}
    return {"loops": {"fit_loop": {
        "epoch_progress": {"current": {"ready": 1, "started": 1, "processed": 1, "completed": epochs_completed}},
        "epoch_loop.batch_progress": {"total": dict(progress), "current": dict(progress), "is_last_batch": last}}}}


def test_a_checkpoint_written_after_its_epoch_ended_resumes_at_the_next_epochs_first_batch() -> None:
    """Lightning 2.6 restored the ended epoch's batch count into the next epoch, which then counted as done: a
    fit's end-of-run last.ckpt resumed with `--trainer.max_epochs 2` trained 0 batches (the slow
    tests/security/test_checkpoints_safe.py::test_a_train_py_checkpoint_resumes_from_a_url runs it for real)."""
    from worldmodel.lightning import WorldModelModule

    module = WorldModelModule()
    ended = _loops(epochs_completed=1, batches=4, last=True)
    module.on_load_checkpoint(ended)
    batches = ended["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    assert batches["current"] == {"ready": 0, "completed": 0, "started": 0, "processed": 0}
    assert batches["total"]["processed"] == 4 and not batches["is_last_batch"]  # the run's totals are kept
    for mid_epoch in (_loops(epochs_completed=0, batches=4, last=True), _loops(epochs_completed=0, batches=2,
                                                                                last=False)):
        before = repr(mid_epoch)
        module.on_load_checkpoint(mid_epoch)  # a preemption's checkpoint: Lightning resumes it mid-epoch itself
        assert repr(mid_epoch) == before
