"""DDP through the same `train.py fit` flags: 2 CPU processes (gloo) against 1 process on the same global batch.

`--trainer.devices 2 --trainer.strategy ddp --data.batch_size B` must train on exactly the windows of
`--trainer.devices 1 --data.batch_size 2B` (the ranks split one global batch), keep both replicas
identical (gradients are averaged), and end close to the 1-process parameters. Not bit-equal: the
ensemble draws a bootstrap resample per member on each rank's half of the batch, where the single
process draws it on the whole batch, so the runs differ by bootstrap noise only.

Tolerance: ||θ_ddp − θ_1|| < 0.25 ||θ_1 − θ_init||. Measured here (20 steps, tiny ensemble): 0.084,
and 0.085 between two 1-process runs that differ only in `--model.seed` (their bootstrap draws), so
the tolerance is about 3× the noise floor; a run on other windows or without gradient averaging moves
the replicas apart, which the exact checks catch first.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from conftest import REPO, subprocess_env

PROBE = '''
import pathlib
import torch
from lightning.pytorch.callbacks import Callback


class Probe(Callback):
    """Test helper: saves, per rank, the initial and final parameters and every training batch's obs."""

    def __init__(self, folder: str) -> None:
        self.folder = pathlib.Path(folder)
        self.batches, self.initial = [], {}

    def on_train_start(self, trainer, module) -> None:
        self.initial = {k: v.detach().clone() for k, v in module.state_dict().items()}

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.batches.append(batch.obs.detach().clone())

    def on_train_end(self, trainer, module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        final = {k: v.detach().clone() for k, v in module.state_dict().items()}
        torch.save({"initial": self.initial, "final": final, "batches": self.batches},
                   self.folder / f"rank{trainer.global_rank}.pt")
'''
TOLERANCE = 0.25


def _args(store: str, out: Path, name: str, probe: Path, batch_size: int) -> list[str]:
    """20 steps of the tiny ensemble (2 epochs of 10 batches per process) and a cheap evaluation."""
    return ["fit", "--config", str(REPO / "configs/pendulum/ensemble.yaml"), "--data.store", store,
            "--model.config.preset", "tiny", "--data.batch_size", str(batch_size), "--data.batches_per_epoch", "10",
            "--data.val_batches", "2", "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false", "--model.eval_horizons", "[1, 5]", "--model.eval_samples", "4",
            "--model.eval_windows", "8", "--out_dir", str(out), "--mlflow.run_name", name,
            "--mlflow.registered_model_name", "", "--trainer.callbacks+=ddp_probe.Probe",
            "--trainer.callbacks.folder", str(probe)]


def _flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.flatten().double() for _, v in sorted(state.items()) if v.is_floating_point()])


@pytest.fixture(scope="module")
def pendulum_store(tmp_path_factory) -> str:
    from data_pipeline.record import record

    path = str(tmp_path_factory.mktemp("ddp") / "p.zarr")
    record("Pendulum-v1", 4, path, seed=0, progress=False).close()
    return path


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_on_the_same_global_batch(tmp_path, pendulum_store, monkeypatch) -> None:
    import train

    (tmp_path / "ddp_probe.py").write_text(PROBE)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = subprocess_env()
    env.update(PYTHONPATH=os.pathsep.join([str(tmp_path), env["PYTHONPATH"]]), MLFLOW_TRACKING_URI=uri)
    env.pop("LOCAL_RANK", None)
    ddp = subprocess.run(
        [sys.executable, str(REPO / "train.py"),
         *_args(pendulum_store, tmp_path / "runs", "ddp", tmp_path / "ddp", batch_size=16),
         "--trainer.devices", "2", "--trainer.strategy", "ddp"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stdout[-2000:] + ddp.stderr[-4000:]
    assert "model_uri:" in ddp.stdout and ddp.stdout.count("model_uri:") == 1, "rank 0 alone publishes"

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.syspath_prepend(str(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train.main([*_args(pendulum_store, tmp_path / "runs", "single", tmp_path / "single", batch_size=32),
                    "--trainer.devices", "1"])

    rank0, rank1 = (torch.load(tmp_path / "ddp" / f"rank{r}.pt") for r in (0, 1))
    single = torch.load(tmp_path / "single" / "rank0.pt")
    assert len(rank0["batches"]) == len(single["batches"]) == 20
    for step, (a, b, whole) in enumerate(zip(rank0["batches"], rank1["batches"], single["batches"], strict=True)):
        assert a.shape[0] == 16 and torch.equal(torch.cat([a, b]), whole), f"step {step}: not the same global batch"
    for key, value in single["initial"].items():
        assert torch.equal(rank0["initial"][key], value), f"{key}: the runs started from different parameters"
    for key, value in rank0["final"].items():
        assert torch.equal(value, rank1["final"][key]), f"{key}: the DDP replicas diverged"

    start, ddp_end, single_end = _flat(single["initial"]), _flat(rank0["final"]), _flat(single["final"])
    moved = (single_end - start).norm()
    assert moved > 0.1, "training did not move the parameters"
    gap = float((ddp_end - single_end).norm() / moved)
    assert gap < TOLERANCE, f"DDP ended {gap:.3f} (relative) from the 1-process run; tolerance {TOLERANCE}"
