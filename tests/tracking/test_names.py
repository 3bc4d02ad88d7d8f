"""MLflow names come from the data: a model of CartPole registers as `cartpole-<kind>`, whatever config it used."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import REPO as ROOT
from conftest import TinyStore
from mlflow.tracking import MlflowClient

from data_pipeline.store import TrajectoryStore
from tracking.runs import ModelNames, default_names, system_name


def recorded(env_id: str, path: Path, episodes: int = 4, steps: int = 20) -> str:
    from data_pipeline.record import record

    record(env_id, episodes, str(path), seed=0, max_episode_steps=steps, progress=False).close()
    return str(path)


def test_system_from_attr_then_recorded_env_then_folder(tiny_store: Callable[..., TinyStore], tmp_path: Path) -> None:
    plain = tiny_store(name="Line 3 Pump.zarr").path
    assert system_name(plain) == "line-3-pump"  # ingested data: the folder, without .zarr
    with TrajectoryStore.open(plain, mode="a") as store:
        store.set_attr("system", "Boiler_7")
    assert system_name(plain) == "boiler_7"
    assert system_name(recorded("CartPole-v1", tmp_path / "data.zarr", episodes=1, steps=5)) == "cartpole"
    assert system_name(str(tmp_path / "missing" / "kiln.zarr/")) == "kiln"  # unreadable: named by its folder
    assert default_names("ensemble", plain) == ModelNames(experiment="boiler_7", registered_model="boiler_7-ensemble")


def test_shipped_configs_carry_no_system_name() -> None:
    for path in sorted((ROOT / "configs").glob("*/*.yaml")):
        config = yaml.safe_load(path.read_text()) or {}
        assert "registered_model_name" not in (config.get("mlflow") or {}), path
        assert "experiment" not in (config.get("mlflow") or {}), path
        assert "registered_policy_name" not in config, path


@pytest.mark.slow
def test_pendulum_config_on_cartpole_registers_cartpole(tmp_path: Path) -> None:
    store = recorded("CartPole-v1", tmp_path / "c.zarr")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs/pendulum/ensemble.yaml"),
            "--data.store", store, "--out_dir", str(tmp_path / "runs"), "--model.config.preset", "tiny",
            "--trainer.max_steps", "2", "--data.batches_per_epoch", "2", "--data.val_batches", "1",
            "--model.eval_horizons", "[1]", "--model.eval_samples", "2", "--model.eval_context", "2",
            "--model.eval_windows", "4", "--trainer.enable_progress_bar", "false"]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines() if line.startswith(("model_uri", "run_id")))
    assert lines["model_uri"].startswith("models:/cartpole-ensemble/")
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment(client.get_run(lines["run_id"]).info.experiment_id)
    assert experiment.name == "cartpole"
