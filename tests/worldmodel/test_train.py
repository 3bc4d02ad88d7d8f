"""train.py fit / validate / test as a user runs them: subprocesses on tiny stores, tracked in MLflow."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO as ROOT


def run_cli(args: list[str], cwd: Path, timeout: int = 300) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    out = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition(": ")
        if sep and " " not in key:
            out[key] = value.strip()
    out["_stdout"], out["_stderr"] = proc.stdout, proc.stderr
    return out


def record(env_id: str, path: Path, episodes: int, steps: int) -> str:
    from data_pipeline.record import record as rec

    rec(env_id, episodes, str(path), seed=0, max_episode_steps=steps, progress=False).close()
    return str(path)


FAST = ["--model.config.preset", "tiny", "--trainer.max_epochs", "1", "--data.batches_per_epoch", "12",
        "--data.val_batches", "2", "--model.eval_horizons", "[1, 5]", "--model.eval_samples", "4",
        "--model.eval_context", "4", "--model.eval_windows", "16", "--trainer.enable_progress_bar", "false"]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("train")


@pytest.fixture(scope="module")
def pendulum_store(work: Path) -> str:
    return record("Pendulum-v1", work / "p.zarr", episodes=8, steps=40)


@pytest.fixture(scope="module")
def ensemble_run(work: Path, pendulum_store: str) -> dict[str, str]:
    return run_cli([str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs/pendulum/ensemble.yaml"),
                    "--data.store", pendulum_store, "--out_dir", str(work / "runs"), *FAST], cwd=work)


def test_fit_prints_outputs_and_model_reloads(ensemble_run: dict[str, str], work: Path) -> None:
    import worldmodel

    assert ensemble_run["model_uri"].startswith("models:/pendulum-ensemble/")
    ckpt = Path(ensemble_run["checkpoint"])
    assert ckpt.exists()
    model = worldmodel.load(str(ckpt))
    assert model.model_type == "ensemble" and model.obs_dim == 3
    # Calibrated on the val split before it was saved, and said so.
    assert ensemble_run["calibration"].startswith("coverage90 before → after (val split") and model.calibrated
    # The Lightning checkpoint carries the same trained weights (it is written when training ends, before
    # the calibration, so it loads uncalibrated).
    from_lightning = worldmodel.load(ensemble_run["lightning_checkpoint"])
    for k, v in model.state_dict().items():
        if k != "calibration":
            assert torch.equal(v, from_lightning.state_dict()[k])
    # The evaluation table was printed, and MLflow's pyfunc type-hint warnings were not (they named our
    # `predict`'s annotation on every fit and meant nothing to a user).
    assert "persistence_nrmse" in ensemble_run["_stdout"]
    assert "type hint" not in ensemble_run["_stderr"].lower(), ensemble_run["_stderr"][-2000:]


def test_mlflow_received_params_metrics_model_and_registry(ensemble_run: dict[str, str], work: Path) -> None:
    import mlflow

    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    run = client.get_run(ensemble_run["run_id"])
    assert run.data.params["model.kind"] == "ensemble"
    assert run.data.params["data.fingerprint"]
    assert "train/loss" in run.data.metrics
    assert "test_eval/nrmse/h1" in run.data.metrics
    assert {"calibration/coverage90_before/h1", "calibration/coverage90_after/h5"} <= set(run.data.metrics)
    name, version = ensemble_run["model_uri"].removeprefix("models:/").split("/")
    mv = client.get_model_version(name, version)
    assert mv.run_id == ensemble_run["run_id"]
    # pyfunc: a history and an action sequence in, predicted trajectories out.
    pyfunc = mlflow.pyfunc.load_model(ensemble_run["model_uri"])
    obs = np.tile(np.array([[1.0, 0.0, 0.0]], np.float32), (2, 4, 1))
    action = np.zeros((2, 3 + 5, 1), np.float32)
    pred = pyfunc.predict({"obs": obs, "action": action, "samples": np.array(3)})
    assert pred["obs"].shape == (2, 3, 5, 3)
    assert np.isfinite(pred["obs"]).all()


def test_mlflow_uri_loads_same_model_as_checkpoint(ensemble_run: dict[str, str], work: Path) -> None:
    import mlflow

    import worldmodel

    mlflow.set_tracking_uri(f"sqlite:///{work / 'mlflow.db'}")
    a = worldmodel.load(ensemble_run["checkpoint"])
    b = worldmodel.load(ensemble_run["model_uri"])
    state = a.observe(a.initial_state(4), torch.ones(4, 2, 3) * 0.5, torch.zeros(4, 2, 1),
                      torch.tensor([[True, False]] * 4))
    actions = torch.linspace(-2, 2, 4 * 6).reshape(4, 6, 1)
    _, pa = a.imagine(state, actions, torch.Generator().manual_seed(3))
    _, pb = b.imagine(state, actions, torch.Generator().manual_seed(3))
    assert torch.equal(pa.obs, pb.obs)


@pytest.mark.slow
def test_rssm_fit_and_validate(work: Path, pendulum_store: str) -> None:
    out = run_cli([str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs/pendulum/rssm.yaml"),
                   "--data.store", pendulum_store, "--out_dir", str(work / "runs"), "--data.window", "12",
                   *FAST], cwd=work)
    assert out["model_uri"].startswith("models:/pendulum-rssm/")
    import worldmodel

    model = worldmodel.load(out["checkpoint"])
    assert model.model_type == "rssm"
    val = run_cli([str(ROOT / "train.py"), "validate", "--config", str(ROOT / "configs/pendulum/rssm.yaml"),
                   "--data.store", pendulum_store, "--out_dir", str(work / "runs"), "--data.window", "12",
                   "--ckpt_path", out["lightning_checkpoint"], *FAST], cwd=work)
    assert "val_eval/nrmse/h1" in val["_stdout"]


@pytest.mark.slow
def test_pendulum_config_trains_on_cartpole_store(work: Path) -> None:
    store = record("CartPole-v1", work / "c.zarr", episodes=12, steps=40)
    out = run_cli([str(ROOT / "train.py"), "fit", "--config", str(ROOT / "configs/pendulum/ensemble.yaml"),
                   "--data.store", store, "--out_dir", str(work / "runs"), *FAST,
                   "--mlflow.registered_model_name", ""], cwd=work)
    import worldmodel

    model = worldmodel.load(out["checkpoint"])
    assert model.obs_dim == 4 and model.discrete and model.action_dim == 2


def test_help_documents_every_key_and_every_model_field(work: Path) -> None:
    from dataclasses import fields

    from worldmodel.kinds import MODEL_KINDS

    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "fit", "--help"], capture_output=True, text=True,
                          cwd=work, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "120"})
    assert proc.returncode == 0
    for key in ("--data.store", "--data.window", "--model.kind", "--model.lr", "--trainer.precision",
                "--mlflow.registered_model_name"):
        assert key in proc.stdout
    lines = proc.stdout.splitlines()
    for kind, (_, config_cls) in MODEL_KINDS.items():
        assert f"model.kind {kind} ({config_cls.__name__})" in proc.stdout
        start = next(i for i, line in enumerate(lines) if f"model.kind {kind} (" in line)
        for field in fields(config_cls):
            # Each field: its flag, then its docstring, type and default (wrapped onto following lines).
            flag = f"--model.config.{field.name} "
            at = next((i for i in range(start, len(lines)) if flag in lines[i]), None)
            assert at is not None, f"{kind}: {field.name} missing from --help"
            text = " ".join(lines[at : at + 4]).split(flag, 1)[1].split("--model.config.", 1)[0]
            assert len(text.split()) > 3 and "default:" in text, f"{kind}: {field.name} has no docstring or default"


def test_a_misspelt_model_config_key_is_a_usage_error_naming_it(work: Path, pendulum_store: str) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "fit", "--config",
                           str(ROOT / "configs/pendulum/ensemble.yaml"), "--data.store", pendulum_store,
                           "--model.config.membrs", "3"], capture_output=True, text=True, cwd=work, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 2
    assert "model.config.membrs" in proc.stderr and "'members'" in proc.stderr
    assert "Traceback" not in proc.stderr
