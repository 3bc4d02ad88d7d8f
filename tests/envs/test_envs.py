"""WorldModel-v0: Gymnasium and SB3 API checks, seeding, syncing to recorded states, vector autoreset.

Tiny seeded models trained a few dozen steps on tiny recorded stores (Pendulum: Box actions;
CartPole: Discrete), trained once per module.
"""

from __future__ import annotations

import importlib.util
import itertools
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401 - registers WorldModel-v0
from data_pipeline.record import record
from data_pipeline.store import TrajectoryStore
from data_pipeline.windows import WindowSampler, normalization_for, usable_episodes
from envs.rewards import pendulum
from envs.sb3 import SB3VecEnv, make_sb3_env
from envs.vector_env import WorldModelVectorEnv
from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel
from worldmodel.interface import WorldModel, previous_actions

KINDS = ["ensemble", "rssm", "diffusion"]  # every model kind: a kind that cannot be built fails, never skips


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> object:
    """Tiny models are fastest on one thread; on a shared 2-core machine, two threads spin-wait badly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _build(kind: str, store: TrajectoryStore, seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    norm = normalization_for(store, range(store.num_episodes))
    if kind == "ensemble":
        return EnsembleWorldModel(EnsembleConfig.preset("tiny"), store.schema, norm)
    if kind == "rssm":
        from worldmodel.rssm import RSSMConfig, RSSMWorldModel

        return RSSMWorldModel(RSSMConfig.preset("tiny"), store.schema, norm)
    from worldmodel.diffusion import DiffusionConfig, DiffusionWorldModel

    config = DiffusionConfig.preset("tiny")
    if hasattr(config, "num_steps"):
        config.num_steps = 2  # a cheap sampler: these tests check the env, not sample quality
    return DiffusionWorldModel(config, store.schema, norm)


def _train(model: WorldModel, store: TrajectoryStore, steps: int, seed: int = 0) -> WorldModel:
    """A few Adam steps on random windows: enough for the one-step error to beat an untrained model."""
    torch.manual_seed(seed)
    starts, lengths = usable_episodes(store, range(store.num_episodes), 8)
    sampler = WindowSampler(store, starts, lengths, window=8, batch_size=32, seed=seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for batch in itertools.islice(sampler, steps):
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _record(tmp: Path, env_id: str, episodes: int, steps: int, **kwargs: object) -> TrajectoryStore:
    path = str(tmp / f"{env_id}.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record(env_id, episodes, path, max_episode_steps=steps, progress=False, **kwargs).close()
    return TrajectoryStore.open(path)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrajectoryStore]:
    tmp = tmp_path_factory.mktemp("envs")
    return {
        "pendulum": _record(tmp, "Pendulum-v1", 6, 50),
        "cartpole": _record(tmp, "CartPole-v1", 6, 50),
    }


@pytest.fixture(scope="module")
def ensembles(stores: dict[str, TrajectoryStore]) -> dict[str, WorldModel]:
    return {name: _train(_build("ensemble", store), store, steps=150) for name, store in stores.items()}


def _model(kind: str, system: str, stores: dict, ensembles: dict) -> WorldModel:
    return ensembles[system] if kind == "ensemble" else _build(kind, stores[system])


def _rollout(env: gym.Env, seed: int, steps: int, options: dict | None = None) -> list[np.ndarray]:
    obs, _ = env.reset(seed=seed, options=options)
    env.action_space.seed(seed)
    out = [obs]
    for _ in range(steps):
        obs, *_ = env.step(env.action_space.sample())
        out.append(obs)
    return out


# ---------------------------------------------------------------------------------------- API checks
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("system", ["pendulum", "cartpole"])
def test_check_env_gymnasium_and_sb3(kind: str, system: str, stores: dict, ensembles: dict) -> None:
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    model = _model(kind, system, stores, ensembles)
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
        model = _model(kind, "pendulum", stores, ensembles)
        env = gym.make("WorldModel-v0", model=model, store=stores["pendulum"])
        a, b = _rollout(env, 7, 12), _rollout(env, 7, 12)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)
        c = _rollout(env, 8, 12)
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
    model = ensembles["pendulum"] if kind == "ensemble" else _train(_build(kind, store), store, steps=150)
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
        model = _model(kind, "pendulum", stores, ensembles)
        env = gym.make("WorldModel-v0", model=model, store=store, history=16)
        uncached = gym.make("WorldModel-v0", model=model, store=store, history=16, cache_bytes=0)
        assert env.unwrapped.core.starts.cached and not uncached.unwrapped.core.starts.cached
        hist = {"obs": ep.obs[: t + 1], "action": ep.action[:t]}
        a = _rollout(env, 3, 5, {"history": hist})
        b = _rollout(env, 3, 5, {"episode": ep.episode_id, "t": t})
        c = _rollout(uncached, 3, 5, {"episode": 2, "t": t})
        np.testing.assert_array_equal(a[0], ep.obs[t])
        for x, y, z in zip(a, b, c, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg=kind)
            np.testing.assert_array_equal(y, z, err_msg=kind)
    # Random starts read on demand equal the cached ones.
    env = gym.make("WorldModel-v0", model=ensembles["pendulum"], store=store, history=4)
    uncached = gym.make("WorldModel-v0", model=ensembles["pendulum"], store=store, history=4, cache_bytes=0)
    for x, y in zip(_rollout(env, 9, 3), _rollout(uncached, 9, 3), strict=True):
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
    env = gym.make("WorldModel-v0", model=ensembles["pendulum"], store=store, reward_fn="envs.rewards:pendulum")
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
    for x, y in zip(_rollout(env, 2, 6), _rollout(ref, 2, 6), strict=True):
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
    return _record(tmp_path_factory.mktemp("pixels"), "Pendulum-v1", 2, 12, image_size=32)


@pytest.mark.skipif(importlib.util.find_spec("pygame") is None, reason="rendering Pendulum needs pygame")
@pytest.mark.parametrize("kind", [k for k in KINDS if k != "ensemble"])
def test_image_model_env(kind: str, image_store: TrajectoryStore) -> None:
    store = image_store
    model = _build(kind, store)
    env = gym.make("WorldModel-v0", model=model, store=store, render_mode="rgb_array")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check_env(env.unwrapped)
    obs, _ = env.reset(seed=0, options={"episode": 1, "t": 3})
    np.testing.assert_array_equal(obs, store.read_episode(1).image[3])
    obs, *_ = env.step(np.array([1.0], np.float32))
    assert obs.shape == (32, 32, 3) and obs.dtype == np.uint8
    np.testing.assert_array_equal(env.render(), obs)
