"""WorldModel-v0: Gymnasium and SB3 API checks, seeding, syncing to recorded states, vector autoreset.

Tiny seeded models trained a few dozen steps on tiny recorded stores (Pendulum: Box actions;
CartPole: Discrete), trained once per module.
"""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from env_models import KINDS, build_model, ensembles, env_model, one_thread, rollout, stores, train_model  # noqa: F401 - fixtures
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401 - registers WorldModel-v0
from data_pipeline.store import TrajectoryStore
from worldmodel.interface import WorldModel, previous_actions


# ---------------------------------------------------------------------------------------- API checks
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("system", ["pendulum", "cartpole"])
def test_check_env_gymnasium_and_sb3(kind: str, system: str, stores: dict, ensembles: dict) -> None:
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    model = env_model(kind, system, stores, ensembles)
    env = gym.make("WorldModel-v0", model=model, store=stores[system])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "env is wrapped" / unbounded-space warnings are expected
        check_env(env)
        check_env(env.unwrapped)
        sb3_check_env(env, warn=False)
    assert env.observation_space == stores[system].schema.gym_observation_space()
    assert env.action_space == stores[system].schema.gym_action_space()
    assert env.spec.max_episode_steps == envs.DEFAULT_MAX_EPISODE_STEPS


def test_seeded_determinism(stores: dict, ensembles: dict) -> None:
    for kind in KINDS:
        model = env_model(kind, "pendulum", stores, ensembles)
        env = gym.make("WorldModel-v0", model=model, store=stores["pendulum"])
        a, b = rollout(env, 7, 12), rollout(env, 7, 12)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
        c = rollout(env, 8, 12)
        assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True)), kind
        assert all(o.dtype == np.float32 and o in env.observation_space for o in a)


# ---------------------------------------------------------------------------------------- syncing
HORIZON = 3


def _env_errors(env: gym.Env, store: TrajectoryStore, starts: list[tuple[int, int]], sync: bool) -> np.ndarray:
    """(starts, HORIZON, D) errors of the env's observations to the recorded ones under the recorded actions,
    started synced at (e, t) or (sync=False) from a random recorded state."""
    errs = []
    for e, t in starts:
        ep = store.read_episode(e)
        if sync:
            obs, info = env.reset(seed=0, options={"episode": e, "t": t})
            space = env.observation_space
            np.testing.assert_allclose(obs, np.clip(ep.obs[t], space.low, space.high))
            assert info == {"start_episode": e, "start_t": t}
        else:
            env.reset(seed=0)
        errs.append([env.step(ep.action[t + h])[0] - ep.obs[t + h + 1] for h in range(HORIZON)])
    return np.asarray(errs)


def _direct_errors(model: WorldModel, store: TrajectoryStore, starts: list[tuple[int, int]], history: int
                   ) -> np.ndarray:
    """The same model evaluated directly: observe the same history, imagine under the recorded actions."""
    errs = []
    gen = torch.Generator().manual_seed(0)
    for e, t in starts:
        ep = store.read_episode(e)
        lo = max(0, t - history + 1)
        obs = torch.from_numpy(ep.obs[lo : t + 1])[None]
        act = torch.from_numpy(ep.action[lo : t + HORIZON])[None]
        first = torch.zeros(1, t + 1 - lo, dtype=torch.bool)
        first[:, 0] = True
        with torch.no_grad():
            state = model.observe(model.initial_state(1), obs, previous_actions(act[:, : t + 1 - lo], first), first)
            _, pred = model.imagine(state, act[:, t - lo :], gen)
        errs.append(pred.obs[0].numpy() - ep.obs[t + 1 : t + 1 + HORIZON])
    return np.asarray(errs)


@pytest.mark.parametrize("kind", ["ensemble", "rssm"])
def test_reset_from_recorded_state_reproduces_recording(kind: str, stores: dict, ensembles: dict) -> None:
    """Reset at (e, t), then the recorded actions: the errors to the recorded observations are the model's
    own (the model evaluated directly on the same history and actions), far below an unsynced start's."""
    store = stores["pendulum"]
    model = ensembles["pendulum"] if kind == "ensemble" else train_model(build_model(kind, store), store, steps=150)
    env = gym.make("WorldModel-v0", model=model, store=store, history=8)
    rng = np.random.default_rng(0)
    lengths = store.episodes()["length"].to_numpy()
    starts = [(int(e), int(rng.integers(0, lengths[e] - HORIZON))) for e in rng.integers(0, len(lengths), 24)]
    std = np.asarray(model.normalization.obs_std)

    def nrmse(errs: np.ndarray) -> np.ndarray:  # per horizon, averaged over channels
        return (np.sqrt((errs**2).mean(0)) / std).mean(-1)

    synced = nrmse(_env_errors(env, store, starts, sync=True))
    direct = nrmse(_direct_errors(model, store, starts, history=8))
    unsynced = nrmse(_env_errors(env, store, starts, sync=False))
    assert (synced <= 1.5 * direct + 0.05).all(), (synced, direct)
    assert synced[0] < 0.5 * unsynced[0], (synced, unsynced)


def test_history_reset_equals_episode_reset(stores: dict, ensembles: dict) -> None:
    store = stores["pendulum"]
    ep = store.read_episode(2)
    t = 10
    for kind in KINDS:
        model = env_model(kind, "pendulum", stores, ensembles)
        env = gym.make("WorldModel-v0", model=model, store=store, history=16)
        uncached = gym.make("WorldModel-v0", model=model, store=store, history=16, cache_bytes=0)
        assert env.unwrapped.core.starts.cached and not uncached.unwrapped.core.starts.cached
        hist = {"obs": ep.obs[: t + 1], "action": ep.action[:t]}
        a = rollout(env, 3, 5, {"history": hist})
        b = rollout(env, 3, 5, {"episode": ep.episode_id, "t": t})
        c = rollout(uncached, 3, 5, {"episode": 2, "t": t})
        np.testing.assert_array_equal(a[0], ep.obs[t])
        for x, y, z in zip(a, b, c, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg=kind)
            np.testing.assert_array_equal(y, z, err_msg=kind)
    # Random starts read on demand equal the cached ones.
    env = gym.make("WorldModel-v0", model=ensembles["pendulum"], store=store, history=4)
    uncached = gym.make("WorldModel-v0", model=ensembles["pendulum"], store=store, history=4, cache_bytes=0)
    for x, y in zip(rollout(env, 9, 3), rollout(uncached, 9, 3), strict=True):
        np.testing.assert_array_equal(x, y)


def test_reset_option_errors(stores: dict, ensembles: dict) -> None:
    env = gym.make("WorldModel-v0", model=ensembles["pendulum"], store=stores["pendulum"])
    with pytest.raises(IndexError, match="episode 99 out of range"):
        env.reset(options={"episode": 99})
    with pytest.raises(ValueError, match="t=500 is outside episode"):
        env.reset(options={"episode": 0, "t": 500})
    with pytest.raises(ValueError, match="unknown keys"):
        env.reset(options={"episod": 0})
    with pytest.raises(ValueError, match="obs_channels"):
        gym.make("WorldModel-v0", model=ensembles["pendulum"], store=stores["cartpole"])
    with pytest.raises(TypeError, match="histroy"):
        gym.make("WorldModel-v0", model=ensembles["pendulum"], store=stores["pendulum"], histroy=4)


def test_env_options_are_the_core_config() -> None:
    """The envs' typed keyword options and `CoreConfig` name the same fields (render_mode is the envs' own)."""
    from dataclasses import fields

    from envs.core import CoreConfig, EnvOptions

    assert set(EnvOptions.__annotations__) == {f.name for f in fields(CoreConfig)} - {"render_mode"}


