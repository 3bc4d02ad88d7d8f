"""`train.py fit --config configs/<system>/hybrid.yaml` as a user runs it: the fit's final table names the
identified parameters and the residual fraction, MLflow holds them, and the model file reloads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO as ROOT

FAST = ["--model.config.preset", "tiny", "--trainer.max_epochs", "1", "--data.batches_per_epoch", "60",
        "--data.val_batches", "2", "--model.eval_horizons", "[1, 5]", "--model.eval_samples", "4",
        "--model.eval_context", "4", "--model.eval_windows", "16", "--trainer.enable_progress_bar", "false"]


def fit(config: str, store: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / config),
                           "--data.store", store, "--out_dir", str(cwd / "runs"), *FAST],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize(("env_id", "config", "parameter"), [
    ("Pendulum-v1", "configs/pendulum/hybrid.yaml", "gravity"),
    ("CartPole-v1", "configs/cartpole/hybrid.yaml", "force"),
])
def test_fit_reports_identified_parameters_in_its_table_and_mlflow(env_id: str, config: str, parameter: str,
                                                                   tmp_path: Path) -> None:
    import mlflow

    import worldmodel
    from data_pipeline.record import record

    store = str(tmp_path / "s.zarr")
    # CartPole's random-policy episodes are ~20 steps: 40 of them, so that the split (random episode ids) all
    # but surely leaves validation episodes, where the residual fraction is measured.
    record(env_id, 40 if env_id.startswith("CartPole") else 6, store, seed=0, max_episode_steps=60,
           progress=False).close()
    proc = fit(config, store, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "residual fraction:" in proc.stdout and f"\n{parameter} " in proc.stdout
    lines = proc.stdout.splitlines()
    out = dict(line.split(": ", 1) for line in lines if line.startswith(("checkpoint: ", "run_id: ")))
    model = worldmodel.load(out["checkpoint"])
    assert model.model_type == "hybrid"
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.get_run(out["run_id"])
    assert f"hybrid/{parameter}" in run.data.metrics and "hybrid/residual_fraction" in run.data.metrics
    assert f"hybrid.{parameter}.unit" in run.data.params


@pytest.mark.slow
def test_demo_hybrid_prints_the_identified_parameters(tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "demo.py", "--hybrid", "--quick", "--out", str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = proc.stdout.split("identified physical parameters", 1)[1]
    gravity = next(line for line in summary.splitlines() if line.startswith("gravity "))
    assert float(gravity.split()[1]) == pytest.approx(10.0, rel=0.05), summary
    assert "m/s^2" in gravity and "residual fraction" in summary
    assert "policy" not in summary and not (tmp_path / "out" / "scenarios.zarr").exists()  # nothing else ran
