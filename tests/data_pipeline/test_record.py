"""`record`: Gymnasium rollouts into a store, checked by replaying them in the env."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import xarray as xr
from conftest import T0

from data_pipeline.__main__ import main
from data_pipeline.info import validate_store
from data_pipeline.record import record
from data_pipeline.schema import Episode
from data_pipeline.store import TrajectoryStore
from data_pipeline.validate import DataValidationError
from policies.behaviour import make_policy


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # MuJoCo writes MUJOCO_LOG.TXT into the working directory


def rec(path: Path, env_id: str, episodes: int, **kw) -> TrajectoryStore:
    kw.setdefault("start_time", T0)
    store = record(env_id, episodes, str(path), progress=False, **kw)
    store.close()
    return TrajectoryStore.open(path)


def replay(env_id: str, ep: Episode, **make_kw) -> None:
    """Step the env with the stored actions from the stored seed: the stored rows must come out."""
    env = gym.make(env_id, **make_kw)
    obs, _ = env.reset(seed=ep.seed)
    np.testing.assert_array_equal(ep.obs[0], np.float32(obs))
    discrete = isinstance(env.action_space, gym.spaces.Discrete)
    for t in range(ep.num_transitions):
        obs, reward, terminated, truncated, _ = env.step(int(ep.action[t, 0]) if discrete else ep.action[t])
        np.testing.assert_array_equal(ep.obs[t + 1], np.float32(obs), err_msg=f"{env_id} row {t + 1}")
        assert ep.reward[t] == np.float32(reward)
    assert (terminated, truncated and not terminated) == (ep.terminated[-1], ep.truncated[-1])
    env.close()


def test_pendulum_box(tmp_path):
    store = rec(tmp_path / "p.zarr", "Pendulum-v1", 2, seed=5, max_episode_steps=20)
    ds = store.to_xarray()
    assert list(ds.obs_channel.values) == ["cos_theta", "sin_theta", "theta_dot"]
    assert list(ds.obs_unit.values) == ["1", "1", "rad/s"]
    assert list(ds.action_channel.values) == ["torque"] and list(ds.action_unit.values) == ["N*m"]
    assert ds.attrs["dt"] == 0.05 and ds.attrs["provenance"]["env_id"] == "Pendulum-v1"
    assert ds.action.dtype == np.float32 and list(ds.episode_length.values) == [21, 21]
    assert list(ds.episode_seed.values) == [5, 6] and list(ds.episode_source.values) == ["Pendulum-v1"] * 2
    # One clock, episodes back to back: episode 1 starts one dt after episode 0's final row.
    np.testing.assert_array_equal(ds.time.values, T0 + 50_000_000 * np.arange(42))
    np.testing.assert_array_equal(ds.episode_start_time.values, [T0, T0 + 21 * 50_000_000])
    for i in range(2):
        ep = store.read_episode(i)
        assert ep.truncated[-1] and not ep.terminated.any()
        assert np.isnan(ep.action[-1]).all() and np.isnan(ep.reward[-1])
        replay("Pendulum-v1", ep, max_episode_steps=20)
    assert validate_store(str(tmp_path / "p.zarr"))["status"] == "ok"


def test_cartpole_discrete(tmp_path):
    store = rec(tmp_path / "c.zarr", "CartPole-v1", 3, seed=0)
    ds = store.to_xarray()
    assert ds.action.dtype == np.int64 and list(ds.action_channel.values) == ["push"]
    assert list(ds.obs_unit.values) == ["m", "m/s", "rad", "rad/s"]
    assert ds.attrs["schema"]["action_space"] == {"type": "Discrete", "n": 2, "start": 0}
    for i in range(3):
        ep = store.read_episode(i)
        assert ep.action[-1, 0] == -1 and set(np.unique(ep.action[:-1])) <= {0, 1}
        assert ep.terminated[-1]  # a random CartPole falls long before 500 steps
        replay("CartPole-v1", ep)


def test_halfcheetah_mujoco(tmp_path):
    store = rec(tmp_path / "h.zarr", "HalfCheetah-v5", 2, seed=1, max_episode_steps=8)
    ds = store.to_xarray()
    assert ds.sizes["obs_channel"] == 17 and ds.sizes["action_channel"] == 6
    assert list(ds.obs_channel.values[:3]) == ["rootz", "rooty", "bthigh_angle"]
    assert ds.obs_unit.values[8] == "m/s" and list(ds.action_unit.values) == ["N*m"] * 6
    assert ds.attrs["dt"] == pytest.approx(0.05) and list(ds.episode_length.values) == [9, 9]
    for i in range(2):
        replay("HalfCheetah-v5", store.read_episode(i), max_episode_steps=8)


def test_pendulum_rendered_to_images(tmp_path):
    store = rec(tmp_path / "img.zarr", "Pendulum-v1", 2, seed=0, image_size=64, max_episode_steps=5)
    ds = store.to_xarray()
    assert ds.image.dims == ("step", "height", "width", "color") and ds.image.dtype == np.uint8
    assert ds.image.shape == (12, 64, 64, 3)
    assert ds.attrs["schema"]["image_shape"] == [64, 64, 3]
    assert list(ds.obs_channel.values) == ["cos_theta", "sin_theta", "theta_dot"]  # the state beside the image
    images = ds.image.values
    assert images.std() > 0 and not (images[0] == images[1]).all()  # the pendulum moves
    replay("Pendulum-v1", store.read_episode(0), max_episode_steps=5)  # obs holds the simulator state
    assert validate_store(str(tmp_path / "img.zarr"))["status"] == "ok"


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_same_store_whatever_num_envs(tmp_path, env_id):
    """Episode k is reset with seed + k and stored k-th, however many envs run side by side."""
    kw = dict(seed=7, max_episode_steps=30)
    one = rec(tmp_path / "one.zarr", env_id, 5, num_envs=1, **kw).to_xarray()
    three = rec(tmp_path / "three.zarr", env_id, 5, num_envs=3, **kw).to_xarray()
    if env_id == "CartPole-v1":
        assert len(set(one.episode_length.values)) > 1  # ragged: the envs finish out of order
    xr.testing.assert_identical(one.drop_vars("episode_id").drop_attrs(),
                                three.drop_vars("episode_id").drop_attrs())
    six = rec(tmp_path / "six.zarr", env_id, 5, num_envs=6, **kw).to_xarray()  # more envs than episodes
    xr.testing.assert_identical(one.drop_vars("episode_id").drop_attrs(),
                                six.drop_vars("episode_id").drop_attrs())
    other = rec(tmp_path / "other.zarr", env_id, 5, num_envs=1, seed=8, max_episode_steps=30).to_xarray()
    assert not np.array_equal(one.obs.values[:10], other.obs.values[:10])


def test_module_function_policy(tmp_path, monkeypatch, capsys):
    """`--policy module:function` on the command line: resolved to a callable before any store is made."""
    (tmp_path / "tw_policies.py").write_text(
        "import numpy as np\n"
        "def push_right(obs):\n"
        "    return np.ones(len(obs), dtype=np.int64)\n"
        "def brake(obs):\n"
        "    return -0.5 * obs[:, 2:3]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    out = str(tmp_path / "c.zarr")
    assert main(["record", "--env", "CartPole-v1", "--episodes", "3", "--seed", "0", "--num-envs", "2",
                 "--policy", "tw_policies:push_right", "--out", out, "--no-progress"]) == 0
    assert f"store: {out}" in capsys.readouterr().out
    store = TrajectoryStore.open(out)
    for i in range(3):
        ep = store.read_episode(i)
        assert (ep.action[:-1] == 1).all()
        replay("CartPole-v1", ep)
    store = rec(tmp_path / "p.zarr", "Pendulum-v1", 1, seed=0, max_episode_steps=6,
                policy=make_policy("tw_policies:brake", gym.make("Pendulum-v1").action_space))
    ep = store.read_episode(0)
    np.testing.assert_allclose(ep.action[:-1], -0.5 * ep.obs[:-1, 2:3], rtol=1e-6)
    with pytest.raises(ValueError, match="'tw_policies:nope': module 'tw_policies' has no attribute 'nope'"):
        main(["record", "--env", "CartPole-v1", "--episodes", "1", "--policy", "tw_policies:nope",
              "--out", str(tmp_path / "x.zarr"), "--no-progress"])
    assert not (tmp_path / "x.zarr").exists()  # the policy is checked before the store is made


def test_record_takes_a_callable_not_a_policy_name(tmp_path):
    """Resolving a zip or module:function is the command line's job (policies sit above data_pipeline)."""
    with pytest.raises(TypeError, match=r"policy='tw_policies:push_right'; expected 'random' or a callable"):
        rec(tmp_path / "x.zarr", "CartPole-v1", 1, policy="tw_policies:push_right")
    assert not (tmp_path / "x.zarr").exists()


def test_stable_baselines3_zip_policy(tmp_path):
    from stable_baselines3 import PPO

    model = PPO("MlpPolicy", gym.make("CartPole-v1"), seed=0, device="cpu")  # untrained: any policy will do
    from policies import save_sb3

    save_sb3(model, tmp_path / "ppo_cartpole.zip")
    policy = make_policy(str(tmp_path / "ppo_cartpole.zip"), gym.make("CartPole-v1").action_space)
    store = rec(tmp_path / "c.zarr", "CartPole-v1", 2, seed=3, policy=policy)
    for i in range(2):
        ep = store.read_episode(i)
        expected, _ = model.predict(ep.obs[:-1], deterministic=True)
        np.testing.assert_array_equal(ep.action[:-1, 0], expected)
        replay("CartPole-v1", ep)


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode() + p.read_bytes())
    return h.hexdigest()


def test_append_continues_the_clock_and_refuses_drift(tmp_path):
    path = tmp_path / "p.zarr"
    future = time.time_ns() + 86_400 * 10**9  # so "after the last row" beats "now"
    first = rec(path, "Pendulum-v1", 2, seed=0, max_episode_steps=10, start_time=future)
    last_time = int(first.to_xarray().time.values[-1])
    store = rec(path, "Pendulum-v1", 2, seed=100, max_episode_steps=10, append=True, start_time=None)
    ds = store.to_xarray()
    assert store.num_episodes == 4 and list(ds.episode_seed.values) == [0, 1, 100, 101]
    assert int(ds.episode_start_time.values[2]) == last_time + 50_000_000
    assert (np.diff(ds.time.values) > 0).all()
    replay("Pendulum-v1", store.read_episode(3), max_episode_steps=10)

    before = _digest(path)
    with pytest.raises(DataValidationError, match=r"record CartPole-v1 into .*p.zarr: schema field 'obs_channels' "
                                                  r"is \['cart_position'.*the store has \['cos_theta'.*schema drift"):
        rec(path, "CartPole-v1", 1, append=True)
    with pytest.raises(DataValidationError, match="schema field 'image_shape' is \\[8, 8, 3\\]; the store has None"):
        rec(path, "Pendulum-v1", 1, append=True, image_size=8, max_episode_steps=3)
    assert _digest(path) == before
    TrajectoryStore.open(path, mode="a").close()  # the failed records let go of the writer lock
    with pytest.raises(FileNotFoundError, match="no trajectory store here"):
        rec(tmp_path / "missing.zarr", "Pendulum-v1", 1, append=True)
    with pytest.raises(FileExistsError, match="overwrite"):
        rec(path, "Pendulum-v1", 1)
    assert rec(path, "Pendulum-v1", 1, overwrite=True, max_episode_steps=3).num_episodes == 1
