"""`train.py policy`: a policy trained in a tiny learned env, the model-based loop, resume, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

from data_pipeline.store import TrajectoryStore

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A tiny ensemble fitted for a few dozen steps on a small random-policy Pendulum store."""
    from data_pipeline.record import record
    from data_pipeline.windows.batch import Batch
    from data_pipeline.windows.datamodule import WindowDataModule
    from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel

    work = tmp_path_factory.mktemp("policy")
    store = str(work / "seed.zarr")
    record("Pendulum-v1", 4, store, seed=0, max_episode_steps=50, progress=False).close()
    dm = WindowDataModule(store=store, window=8, batch_size=16, batches_per_epoch=40)
    torch.manual_seed(0)  # the initial weights too: the same tiny model every run
    model = EnsembleWorldModel(EnsembleConfig.preset("tiny"), dm.schema, dm.normalization)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for batch in dm.train_dataloader():
        assert isinstance(batch, Batch)
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    path = work / "model.pt"
    model.eval().save(str(path))
    return str(path), work


def _copy_store(src: str, dst: Path) -> str:
    import shutil

    shutil.copytree(Path(src).parent / "seed.zarr", dst)
    return str(dst)


@pytest.mark.slow
def test_policy_training_improves_return_in_learned_env(tiny_model: tuple[str, Path], tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The trained policy beats the same agent untrained in the learned env (same starts), acts in the real
    env, is saved with the JSON naming its algorithm, and its curve and registry entry reach MLflow."""
    from envs.sb3 import make_sb3_env
    from policies.config import PolicyConfig
    from policies.evaluation import model_return
    from policies.files import load_sb3, read_policy_info
    from policies.loop import make_agent, train_policy

    model, work = tiny_model
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    store = _copy_store(model, tmp_path / "p.zarr")
    # A myopic task (brake the swing) that SAC improves on in a few thousand learned-env steps (8-18% over
    # untrained with other seeds and models); see brake_reward.py.
    cfg = PolicyConfig(model=model, store=store, algorithm="SAC", timesteps=3000, num_envs=4, rollout_horizon=20,
                       hyperparameters={"learning_starts": 100, "batch_size": 64, "learning_rate": 3e-3, "gamma": 0.5,
                                        "policy_kwargs": {"net_arch": [32]}},
                       reward_fn="brake_reward:brake", termination_fn="envs.rewards:never",
                       real_env="Pendulum-v1", eval_episodes=1, out_dir=str(tmp_path / "out"),
                       registered_policy_name="test-policy")
    out = train_policy(cfg)
    assert out["policy_uri"].startswith("models:/test-policy/")

    def learned_env_return(agent: Any) -> float:  # 16 episodes from the same recorded starts for both agents
        venv = make_sb3_env(model, store, num_envs=4, seed=123, reward_fn=cfg.reward_fn,
                            termination_fn=cfg.termination_fn, max_episode_steps=cfg.rollout_horizon)
        return model_return(agent, venv, 16)

    trained = load_sb3(out["policy"])
    untrained = make_agent(cfg, make_sb3_env(model, store, num_envs=4, seed=cfg.seed, reward_fn=cfg.reward_fn,
                                             max_episode_steps=cfg.rollout_horizon))
    before, after = learned_env_return(untrained), learned_env_return(trained)
    assert after > before + 0.05 * abs(before), f"return {before:.1f} untrained, {after:.1f} trained"

    info = read_policy_info(out["policy"])
    assert info.algorithm == "SAC" and info.action_space["shape"] == [1] and info.observation_space["shape"] == [3]
    env = gym.make("Pendulum-v1")
    obs, _ = env.reset(seed=0)
    for _ in range(5):
        action, _ = trained.predict(obs, deterministic=True)
        assert env.action_space.contains(action.astype(np.float32))
        obs, *_ = env.step(action)
    # The learning curve reached MLflow.
    import mlflow

    run = mlflow.MlflowClient().get_run(out["run_id"])
    assert "real_return" in run.data.metrics and "model_return" in run.data.metrics
    assert run.data.tags["twinworld.stage"] == "policy"
    # The registered pyfunc loads (zip + JSON artifacts) and gives the policy's deterministic actions.
    pyfunc = mlflow.pyfunc.load_model(out["policy_uri"])
    batch = np.stack([obs, obs]).astype(np.float32)
    np.testing.assert_allclose(pyfunc.predict(batch), trained.predict(batch, deterministic=True)[0], rtol=1e-6)


@pytest.mark.slow
def test_loop_iteration_appends_committed_episodes_and_refits(tiny_model: tuple[str, Path], tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from policies.config import PolicyConfig
    from policies.loop import train_policy

    model, _ = tiny_model
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    store = _copy_store(model, tmp_path / "p.zarr")
    with TrajectoryStore.open(store) as s:
        before = s.num_episodes
    cfg = PolicyConfig(model=model, store=store, algorithm="PPO", timesteps=128, num_envs=4, rollout_horizon=16,
                       hyperparameters={"n_steps": 32, "batch_size": 32, "policy_kwargs": {"net_arch": [16]}},
                       reward_fn="envs.rewards:pendulum", real_env="Pendulum-v1", eval_episodes=1, iterations=2,
                       collect_episodes=2, refit_steps=5, refit_window=8, refit_batch_size=8,
                       out_dir=str(tmp_path / "out"), registered_policy_name="")
    out = train_policy(cfg)
    with TrajectoryStore.open(store) as s:
        assert s.num_episodes == before + 2
        new = s.episodes().iloc[before:]
        assert (new["source"] == "Pendulum-v1").all()
    # The refit model is a new file, loadable, and differs from the one it started from.
    import worldmodel

    refit = worldmodel.load(out["model"])
    start = worldmodel.load(model)
    assert out["model"] != model
    assert any(not torch.equal(a, b) for a, b in zip(refit.state_dict().values(), start.state_dict().values(),
                                                     strict=True))


@pytest.mark.slow
def test_policy_cli(tiny_model: tuple[str, Path], tmp_path: Path) -> None:
    model, _ = tiny_model
    store = _copy_store(model, tmp_path / "p.zarr")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
    args = [sys.executable, str(ROOT / "train.py"), "policy", "--config", str(ROOT / "configs/pendulum/policy.yaml"),
            "--model", model, "--store", store, "--timesteps", "200", "--iterations", "1", "--eval_episodes", "1",
            "--num_envs", "4", "--hyperparameters", '{"learning_starts": 50, "batch_size": 32}',
            "--out_dir", str(tmp_path / "out")]
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(": ", 1) for line in proc.stdout.splitlines()
                 if ": " in line and " " not in line.split(": ")[0])
    assert Path(lines["policy"]).exists() and Path(lines["policy"]).with_suffix(".json").exists()
    assert lines["policy_uri"].startswith("models:/pendulum-policy/")
    float(lines["real_return"])
    help_proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "policy", "--help"], capture_output=True,
                               text=True, env=env, timeout=120)
    assert help_proc.returncode == 0
    for key in ("--algorithm", "--rollout_horizon", "--uncertainty_penalty", "--iterations", "--real_env"):
        assert key in help_proc.stdout
    # Every config field is documented in --help by its docstring.
    from policies.config import PolicyConfig

    text = " ".join(help_proc.stdout.split())
    for name, field in PolicyConfig.model_fields.items():
        assert f"--{name}" in text and field.description and " ".join(field.description.split()) in text, name


@pytest.mark.slow
def test_policy_resume_after_sigkill(tiny_model: tuple[str, Path], tmp_path: Path) -> None:
    """A policy run killed with SIGKILL after a checkpoint continues from it with --resume."""
    import signal
    import time

    model, _ = tiny_model
    store = _copy_store(model, tmp_path / "p.zarr")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
    out_dir = tmp_path / "out"
    args = [sys.executable, str(ROOT / "train.py"), "policy", "--config", str(ROOT / "configs/pendulum/policy.yaml"),
            "--model", model, "--store", store, "--timesteps", "4000", "--iterations", "1", "--eval_episodes", "1",
            "--num_envs", "4", "--checkpoint_every", "200",
            "--hyperparameters", '{"learning_starts": 50, "batch_size": 16, "policy_kwargs": {"net_arch": [16]}}',
            "--out_dir", str(out_dir)]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out_dir / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (state.exists() and (out_dir / "agent.zip").exists()):
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    import json

    saved = json.loads(state.read_text())
    assert 0 < saved["iteration_steps"] < 4000
    resumed = subprocess.run([*args, "--resume", "--timesteps", "4000"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "policy: " in resumed.stdout
    final = json.loads(state.read_text())
    assert final["iteration"] == 1


@pytest.mark.slow
def test_policy_sigterm_saves_a_checkpoint_and_resumes_from_it(tiny_model: tuple[str, Path], tmp_path: Path) -> None:
    """SIGTERM mid-learning (a scheduler's preemption) saves the agent and the step, exits 143 with how to resume,
    and `--resume` continues from that very step."""
    import json
    import signal
    import time

    model, _ = tiny_model
    store = _copy_store(model, tmp_path / "p.zarr")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "PYTHONPATH": str(ROOT)}
    out_dir = tmp_path / "out"
    args = [sys.executable, str(ROOT / "train.py"), "policy", "--config", str(ROOT / "configs/pendulum/policy.yaml"),
            "--model", model, "--store", store, "--timesteps", "4000", "--iterations", "1", "--eval_episodes", "1",
            "--num_envs", "4", "--checkpoint_every", "200",
            "--hyperparameters", '{"learning_starts": 50, "batch_size": 16, "policy_kwargs": {"net_arch": [16]}}',
            "--out_dir", str(out_dir)]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    state = out_dir / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not state.exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err[-3000:]
    saved = json.loads(state.read_text())
    step = saved["iteration_steps"]
    assert 200 <= step < 4000 and saved["iteration"] == 0
    assert f"preempted: SIGTERM in iteration 0 at learned-env step {step}; checkpoint saved: {state}" in err
    assert "--resume" in err and "Traceback" not in err

    resumed = subprocess.run([*args, "--resume"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"[policy] resuming iteration 0 at learned-env step {step}" in resumed.stdout
    assert json.loads(state.read_text())["iteration"] == 1 and "policy: " in resumed.stdout
