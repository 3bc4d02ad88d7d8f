"""WorldModel-v0 as a vector env, its reward / termination / render options, loading from paths, the SB3
adapter, and image models."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from env_models import KINDS, build_model, ensembles, one_thread, record_store, rollout, stores  # noqa: F401 - fixtures
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401 - registers WorldModel-v0
from data_pipeline.store import TrajectoryStore
from envs.rewards import pendulum
from envs.sb3 import SB3VecEnv, make_sb3_env
from envs.vector_env import WorldModelVectorEnv


# ---------------------------------------------------------------------------------------- vector env
def test_make_vec_autoreset_same_step(stores: dict, ensembles: dict) -> None:
    venv = gym.make_vec("WorldModel-v0", num_envs=4, vectorization_mode="vector_entry_point",
                        model=ensembles["pendulum"], store=stores["pendulum"], max_episode_steps=5)
    assert isinstance(venv, WorldModelVectorEnv)
    assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    obs, info = venv.reset(seed=0)
    assert obs.shape == (4, 3) and obs.dtype == np.float32 and info["_start_episode"].all()
    for step in range(1, 11):
        obs, reward, term, trunc, info = venv.step(venv.action_space.sample())
        assert reward.shape == (4,) and info["uncertainty"].shape == (4,) and (info["uncertainty"] >= 0).all()
        assert obs in venv.observation_space
        if step % 5:
            assert not trunc.any() and "final_obs" not in info
        else:  # all sub-envs truncate together and restart at a recorded state in the same step
            assert trunc.all() and info["_final_obs"].all()
            assert all(o.shape == (3,) for o in info["final_obs"])
            for i in range(4):
                e, t = info["start_episode"][i], info["start_t"][i]
                np.testing.assert_array_equal(obs[i], stores["pendulum"].read_episode(int(e)).obs[t])
    # The registration's default applies when make_vec gets no max_episode_steps.
    default = gym.make_vec("WorldModel-v0", num_envs=2, model=ensembles["pendulum"], store=stores["pendulum"])
    assert default.max_episode_steps == envs.DEFAULT_MAX_EPISODE_STEPS


def test_vector_per_env_options_and_reset_mask(stores: dict, ensembles: dict) -> None:
    store = stores["cartpole"]
    venv = WorldModelVectorEnv(3, ensembles["cartpole"], store)
    obs, info = venv.reset(seed=1, options={"episode": [0, 1, 2], "t": [0, 1, 2]})
    for i in range(3):
        np.testing.assert_array_equal(obs[i], store.read_episode(i).obs[i])
    before = obs.copy()
    obs, info = venv.reset(options={"episode": 4, "t": 0, "reset_mask": np.array([False, True, False])})
    np.testing.assert_array_equal(obs[[0, 2]], before[[0, 2]])
    np.testing.assert_array_equal(obs[1], store.read_episode(4).obs[0])
    assert info["_start_episode"].tolist() == [False, True, False]
    out = venv.step(np.array([0, 1, 1]))
    assert out[0].shape == (3, 4)
    with pytest.raises(ValueError, match="expected \\(3,\\) integers"):
        venv.step(np.array([0.5, 1.0, 0.0]))


def test_vector_matches_single_env(stores: dict, ensembles: dict) -> None:
    """One code path: a vector env of one sub-env steps exactly like the single env."""
    store = stores["pendulum"]
    env = gym.make("WorldModel-v0", model=ensembles["pendulum"], store=store)
    venv = WorldModelVectorEnv(1, ensembles["pendulum"], store)
    o1, _ = env.reset(seed=5)
    o2, _ = venv.reset(seed=5)
    np.testing.assert_array_equal(o1, o2[0])
    for a in np.linspace(-2, 2, 6, dtype=np.float32):
        o1, r1, *_ = env.step(np.array([a]))
        o2, r2, *_ = venv.step(np.array([[a]]))
        np.testing.assert_array_equal(o1, o2[0])
        assert r1 == pytest.approx(float(r2[0]))


# ---------------------------------------------------------------------------------------- reward, info
def test_reward_fn_and_uncertainty_penalty(stores: dict, ensembles: dict) -> None:
    store = stores["pendulum"]
    ep = store.read_episode(1)
    env = gym.make("WorldModel-v0", model=ensembles["pendulum"], store=store, reward_fn="envs.rewards:pendulum",
                   uncertainty="elites")
    # Pendulum's reward is a function of the state and the action: the recorded reward comes back exactly.
    for t in (0, 7, 20):
        env.reset(seed=0, options={"episode": 1, "t": t})
        _, reward, *_ = env.step(ep.action[t])
        assert reward == pytest.approx(float(ep.reward[t]), rel=1e-4, abs=1e-4)
    penalized = gym.make("WorldModel-v0", model=ensembles["pendulum"], store=store,
                         reward_fn="envs.rewards:pendulum", uncertainty_penalty=2.0)
    env.reset(seed=4)
    penalized.reset(seed=4)
    for _ in range(5):
        a = np.array([0.3], np.float32)
        obs, r0, _, _, info = env.step(a)
        obs_p, r1, _, _, info_p = penalized.step(a)
        np.testing.assert_array_equal(obs, obs_p)
        assert info["uncertainty"] > 0
        assert r1 == pytest.approx(r0 - 2.0 * info["uncertainty"], rel=1e-5, abs=1e-6)
    batch = np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 1.0]], np.float32)
    np.testing.assert_allclose(pendulum(batch, np.zeros((2, 1)), batch), [0.0, -(np.pi**2) - 0.1], rtol=1e-5)


def test_termination_fn_and_model_termination(stores: dict, ensembles: dict) -> None:
    store = stores["cartpole"]
    venv = gym.make_vec("WorldModel-v0", num_envs=8, model=ensembles["cartpole"], store=store,
                        reward_fn="envs.rewards:cartpole", termination_fn="envs.rewards:cartpole_termination")
    venv.reset(seed=0)
    ended = 0
    for _ in range(60):
        obs, reward, term, trunc, info = venv.step(np.ones(8, np.int64))  # always push right: falls over
        assert (reward == 1.0).all()
        ended += int(term.sum())
        if term.any():
            final = np.stack(info["final_obs"][term])
            assert ((np.abs(final[:, 0]) > 2.4) | (np.abs(final[:, 2]) > 0.2094)).all()
    assert ended > 0
    never = WorldModelVectorEnv(4, ensembles["cartpole"], store, termination="never")
    never.reset(seed=0)
    assert not any(never.step(np.ones(4, np.int64))[2].any() for _ in range(10))


def test_bf16_precision(stores: dict, ensembles: dict) -> None:
    store = stores["pendulum"]
    exact = gym.make("WorldModel-v0", model=ensembles["pendulum"], store=store)
    fast = gym.make("WorldModel-v0", model=ensembles["pendulum"], store=store, precision="bf16-mixed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(fast.unwrapped)
    std = np.asarray(ensembles["pendulum"].normalization.obs_std)
    exact.reset(seed=1, options={"episode": 3, "t": 5})
    fast.reset(seed=1, options={"episode": 3, "t": 5})
    for _ in range(3):
        a = np.array([1.0], np.float32)
        x, y = exact.step(a)[0], fast.step(a)[0]
        assert y.dtype == np.float32 and (np.abs(x - y) < 0.1 * std).all()


def test_render_rgb_array(stores: dict, ensembles: dict) -> None:
    env = gym.make("WorldModel-v0", model=ensembles["pendulum"], store=stores["pendulum"],
                   render_mode="rgb_array")
    env.reset(seed=0, options={"episode": 0, "t": 12})
    for _ in range(4):
        env.step(np.array([0.5], np.float32))
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3 and frame.std() > 0
    trace = env.unwrapped.core.trace
    assert trace.real[0] == 13 and trace.length[0] == 17  # 13 recorded rows (t = 0..12), then 4 imagined
    venv = WorldModelVectorEnv(2, ensembles["cartpole"], stores["cartpole"], render_mode="rgb_array",
                               max_episode_steps=3)
    venv.reset(seed=0)
    for _ in range(4):  # across an autoreset
        venv.step(np.zeros(2, np.int64))
    frames = venv.render()
    assert len(frames) == 2 and all(f.ndim == 3 and f.dtype == np.uint8 for f in frames)


# ---------------------------------------------------------------------------------------- loading, SB3
def test_model_and_store_from_paths(stores: dict, ensembles: dict, tmp_path: Path) -> None:
    path = ensembles["cartpole"].save(str(tmp_path / "model.pt"))
    env = gym.make("WorldModel-v0", model=path, store=stores["cartpole"].path)
    ref = gym.make("WorldModel-v0", model=ensembles["cartpole"], store=stores["cartpole"])
    for x, y in zip(rollout(env, 2, 6), rollout(ref, 2, 6), strict=True):
        np.testing.assert_array_equal(x, y)


def test_sb3_adapter_terminal_observation(stores: dict, ensembles: dict) -> None:
    venv = gym.make_vec("WorldModel-v0", num_envs=3, model=ensembles["pendulum"], store=stores["pendulum"],
                        max_episode_steps=4)
    sb3 = SB3VecEnv(venv)
    sb3.seed(3)
    obs = sb3.reset()
    assert obs.shape == (3, 3)
    for _ in range(4):
        obs, reward, dones, infos = sb3.step(np.zeros((3, 1), np.float32))
        assert len(infos) == 3 and all("uncertainty" in i for i in infos)
    assert dones.all()
    assert all(i["TimeLimit.truncated"] and i["terminal_observation"].shape == (3,) for i in infos)
    assert sb3.get_attr("render_mode") == [None] * 3 and sb3.env_is_wrapped(gym.Wrapper) == [False] * 3


def test_sb3_ppo_and_sac_run(stores: dict, ensembles: dict) -> None:
    """Both algorithm families learn in the learned env through the adapter: they step it for the whole
    budget, see finished episodes (VecMonitor), update their networks and act inside the action space."""
    from stable_baselines3 import PPO, SAC

    cartpole = make_sb3_env(ensembles["cartpole"], stores["cartpole"], num_envs=4, seed=0, max_episode_steps=20,
                            termination_fn="envs.rewards:cartpole_termination")
    pendulum = make_sb3_env(ensembles["pendulum"], stores["pendulum"], num_envs=4, seed=0, max_episode_steps=20,
                            reward_fn="envs.rewards:pendulum")
    agents = [
        (PPO("MlpPolicy", cartpole, n_steps=32, batch_size=64, n_epochs=1, seed=0, device="cpu",
             policy_kwargs={"net_arch": [16]}), cartpole),
        (SAC("MlpPolicy", pendulum, learning_starts=64, batch_size=32, seed=0, device="cpu",
             policy_kwargs={"net_arch": [16]}), pendulum),
    ]
    for agent, venv in agents:
        before = [p.detach().clone() for p in agent.policy.parameters()]
        agent.learn(256)
        assert agent.num_timesteps == 256
        assert len(agent.ep_info_buffer) > 0 and all(ep["l"] <= 20 for ep in agent.ep_info_buffer)
        assert any(not torch.equal(a, b) for a, b in zip(before, agent.policy.parameters(), strict=True))
        actions, _ = agent.predict(venv.reset(), deterministic=True)
        assert all(venv.action_space.contains(np.asarray(a, venv.action_space.dtype)) for a in actions)


# ---------------------------------------------------------------------------------------- image models
@pytest.fixture(scope="module")
def image_store(tmp_path_factory: pytest.TempPathFactory) -> TrajectoryStore:
    return record_store(tmp_path_factory.mktemp("pixels"), "Pendulum-v1", 2, 12, image_size=32)


@pytest.mark.skipif(importlib.util.find_spec("pygame") is None, reason="rendering Pendulum needs pygame")
@pytest.mark.parametrize("kind", [k for k in KINDS if k != "ensemble"])
def test_image_model_env(kind: str, image_store: TrajectoryStore) -> None:
    store = image_store
    model = build_model(kind, store)
    env = gym.make("WorldModel-v0", model=model, store=store, render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env.unwrapped)
    obs, _ = env.reset(seed=0, options={"episode": 1, "t": 3})
    np.testing.assert_array_equal(obs, store.read_episode(1).image[3])
    obs, *_ = env.step(np.array([1.0], np.float32))
    assert obs.shape == (32, 32, 3) and obs.dtype == np.uint8
    np.testing.assert_array_equal(env.render(), obs)
