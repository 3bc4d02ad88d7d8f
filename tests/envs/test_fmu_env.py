"""`FMU-v0`: a real FMU (the oscillator, compiled here) as a Gymnasium env, and recorded by the data CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import yaml
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs  # noqa: F401  (registers FMU-v0)
from data_pipeline.store import TrajectoryStore
from fmu.oscillator import build

ROOT = Path(__file__).resolve().parents[2]
CONFIG = {
    "actions": [{"name": "u", "low": -2.0, "high": 2.0}],
    "observations": [{"name": "x", "unit": "m"}, {"name": "v"}],
    "parameters": {"c": [0.3, 0.5]},
    "start": {"x": [-1.0, 1.0], "v": 0.0},
    "dt": 0.05,
    "max_episode_steps": 30,
    "reward": "envs.rewards:cartpole",  # +1 per step: any batched f(obs, action, next_obs)
}


@pytest.fixture(scope="session")
def osc_fmu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.getbasetemp() / "fmu-build" / "oscillator.fmu"  # shared with tests/fmu
    if not path.exists():
        build(path)
    return path


@pytest.fixture
def osc_config(tmp_path: Path) -> Path:
    path = tmp_path / "osc.yaml"
    path.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    return path


def test_fmu_env_passes_gymnasium_and_sb3_checks(osc_fmu: Path, osc_config: Path) -> None:
    env = gym.make("FMU-v0", fmu=str(osc_fmu), config=str(osc_config))
    try:
        check_env(env.unwrapped, skip_render_check=True)
        sb3_check_env(env.unwrapped, warn=False)
        assert env.action_space.shape == (1,) and env.observation_space.shape == (2,)
    finally:
        env.close()


def rollout(env: gym.Env, seed: int) -> np.ndarray:
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    rows, done, rewards = [obs], False, 0.0
    while not done:
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        rows.append(obs)
        rewards += reward
        done = terminated or truncated
    assert rewards == len(rows) - 1  # the config's reward formula ran at every step
    return np.array(rows)


def test_fmu_env_is_seeded_and_truncates_at_the_configs_length(osc_fmu: Path, osc_config: Path) -> None:
    env = gym.make("FMU-v0", fmu=str(osc_fmu), config=str(osc_config))
    try:
        a, b, c = rollout(env, 7), rollout(env, 7), rollout(env, 8)
        assert len(a) == CONFIG["max_episode_steps"] + 1
        assert np.array_equal(a, b) and not np.array_equal(a, c)
        obs, _ = env.reset(options={"values": {"x": 0.25, "v": 0.0}})
        assert np.allclose(obs, [0.25, 0.0])
    finally:
        env.close()


def run_record(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "data_pipeline", "record", *args, "--no-progress"], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=300)


def test_record_an_fmu_stores_its_channels_and_units(osc_fmu: Path, osc_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "osc.zarr"
    done = run_record("--env", f"fmu:{osc_fmu}", "--fmu-config", str(osc_config), "--episodes", "3",
                      "--num-envs", "2", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "episodes: 3" in done.stdout
    with TrajectoryStore.open(str(out), mode="r") as store:
        schema = store.schema
        assert schema.obs_channels == ["x", "v"] and schema.obs_units == ["m", "m/s"]
        assert schema.action_channels == ["u"] and schema.action_units == ["N"]
        assert schema.dt == 0.05
        assert schema.provenance["fmu_model"] == "oscillator"
        assert schema.provenance["fmu_config"]["parameters"] == {"c": [0.3, 0.5]}
        assert store.num_steps == 3 * (CONFIG["max_episode_steps"] + 1)


@pytest.mark.parametrize("args", [["--env", "fmu:osc.fmu"], ["--env", "Pendulum-v1", "--fmu-config", "osc.yaml"]])
def test_record_refuses_an_fmu_without_its_config_and_a_config_without_an_fmu(tmp_path: Path, args: list[str]) -> None:
    from data_pipeline.__main__ import main
    from data_pipeline.errors import UserError

    with pytest.raises(UserError, match="--fmu-config is needed with --env fmu:PATH.fmu and only there"):
        main(["record", *args, "--episodes", "1", "--out", str(tmp_path / "x.zarr")])
    assert not (tmp_path / "x.zarr").exists()


def test_record_names_a_bad_fmu_config_in_one_line(osc_fmu: Path, tmp_path: Path) -> None:
    from data_pipeline.__main__ import main
    from fmu.model import FMUError

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**CONFIG, "observations": [{"name": "position"}]}), encoding="utf-8")
    with pytest.raises(FMUError, match=r"observations\.0\.name' names variable 'position'"):
        main(["record", "--env", f"fmu:{osc_fmu}", "--fmu-config", str(bad), "--episodes", "1",
              "--out", str(tmp_path / "x.zarr")])
    assert not (tmp_path / "x.zarr").exists()
