"""Record episodes of any Gymnasium env into a trajectory store.

    python -m data_pipeline record --env Pendulum-v1 --episodes 50 --policy random --seed 0 --out p.zarr

Episode k is reset with seed `seed + k`, so a store is reproducible whatever `--num-envs` is.
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image
from tqdm import tqdm

from data_pipeline.policies import make_policy
from data_pipeline.schema import DISCRETE_FILL, Episode, StoreSchema
from data_pipeline.store import TrajectoryStore

# Simulated episodes are placed on a synthetic clock: episode k starts k hours after recording began.
EPISODE_SPACING_NS = 3600 * 10**9

# Channel names and units of well-known simulators; others get obs_0…, action_0….
KNOWN_CHANNELS: dict[str, dict[str, list[str]]] = {
    "Pendulum": {
        "obs_channels": ["cos_theta", "sin_theta", "theta_dot"],
        "obs_units": ["1", "1", "rad/s"],
        "action_channels": ["torque"],
        "action_units": ["N*m"],
    },
    "CartPole": {
        "obs_channels": ["cart_position", "cart_velocity", "pole_angle", "pole_angular_velocity"],
        "obs_units": ["m", "m/s", "rad", "rad/s"],
        "action_channels": ["push"],
        "action_units": ["0=left,1=right"],
    },
    "MountainCarContinuous": {
        "obs_channels": ["position", "velocity"],
        "obs_units": ["m", "m/s"],
        "action_channels": ["force"],
        "action_units": ["1"],
    },
    "Acrobot": {
        "obs_channels": ["cos_theta1", "sin_theta1", "cos_theta2", "sin_theta2", "theta1_dot", "theta2_dot"],
        "obs_units": ["1", "1", "1", "1", "rad/s", "rad/s"],
        "action_channels": ["torque"],
        "action_units": ["-1,0,+1 N*m"],
    },
}


class RenderedObservation(gym.ObservationWrapper):
    """Replace the observation with the env's rendering resized to (size, size, 3) uint8.

    The simulator's own vector observation stays available as `info["state"]`, so a store
    can keep both the image and the state it shows.
    """

    def __init__(self, env: gym.Env, size: int) -> None:
        super().__init__(env)
        self.size = size
        self.state_space = env.observation_space
        self.observation_space = spaces.Box(0, 255, (size, size, 3), np.uint8)
        self._state: np.ndarray | None = None

    def observation(self, observation: Any) -> np.ndarray:
        self._state = np.asarray(observation, np.float32)
        frame = self.env.render()
        return np.asarray(Image.fromarray(frame).resize((self.size, self.size), Image.BILINEAR), np.uint8)

    def step(self, action: Any) -> tuple:
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, {**info, "state": self._state}

    def reset(self, **kwargs: Any) -> tuple:
        obs, info = super().reset(**kwargs)
        return obs, {**info, "state": self._state}


def env_dt(env: gym.Env) -> float:
    """The nominal step of a simulator, in seconds."""
    base = env.unwrapped
    for attr in ("dt", "tau"):
        value = getattr(base, attr, None)
        if isinstance(value, int | float) and value > 0:
            return float(value)
    fps = env.metadata.get("render_fps")
    return 1.0 / fps if fps else 1.0


def make_env(env_id: str, image_size: int | None = None, **kwargs: Any) -> gym.Env:
    if image_size:
        return RenderedObservation(gym.make(env_id, render_mode="rgb_array", **kwargs), image_size)
    return gym.make(env_id, **kwargs)


def schema_for_env(env: gym.Env, env_id: str, image_size: int | None = None) -> StoreSchema:
    known = KNOWN_CHANNELS.get(env_id.split("-")[0], {})
    state_space = env.state_space if isinstance(env, RenderedObservation) else env.observation_space
    n_obs = state_space.shape[0] if isinstance(state_space, spaces.Box) and len(state_space.shape) == 1 else 0
    if known and len(known["obs_channels"]) != n_obs:
        known = {}
    import gymnasium

    return StoreSchema.from_spaces(
        env.observation_space,
        env.action_space,
        env_dt(env),
        state_dim=n_obs if image_size else None,
        provenance={
            "source": "record",
            "env_id": env_id,
            "image_size": image_size,
            "gymnasium": gymnasium.__version__,
        },
        **known,
    )


@dataclass
class _Open:
    """Rows of an episode being recorded by one sub-env."""

    index: int
    seed: int
    obs: list = field(default_factory=list)
    image: list = field(default_factory=list)
    action: list = field(default_factory=list)
    reward: list = field(default_factory=list)


def record(
    env_id: str,
    episodes: int,
    out: str,
    *,
    policy: str = "random",
    seed: int = 0,
    num_envs: int = 1,
    image_size: int | None = None,
    max_episode_steps: int | None = None,
    overwrite: bool = False,
    append: bool = False,
    progress: bool = True,
    store: TrajectoryStore | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> TrajectoryStore:
    """Roll out `policy` in `num_envs` copies of `env_id` until `episodes` episodes are stored.

    With `store` (or `append=True`) the episodes are appended to an existing store, whose schema
    must match the env's.
    """
    kwargs = dict(env_kwargs or {})
    if max_episode_steps:
        kwargs["max_episode_steps"] = max_episode_steps
    envs = [make_env(env_id, image_size, **kwargs) for _ in range(num_envs)]
    schema = schema_for_env(envs[0], env_id, image_size)
    if store is None:
        if append:
            store = TrajectoryStore.open(out, mode="a")
        else:
            store = TrajectoryStore.create(out, schema, overwrite=overwrite)
    from data_pipeline.validate import check_schema_matches

    check_schema_matches(store.schema, schema, source=f"record {env_id}")
    act = make_policy(policy, envs[0].action_space, seed=seed)
    discrete = isinstance(envs[0].action_space, spaces.Discrete)
    base_time = _time.time_ns()
    dt_ns = int(round(schema.dt * 1e9))

    next_index = 0
    done_eps: dict[int, Episode] = {}
    slots: list[_Open | None] = [None] * num_envs
    last_obs: list[Any] = [None] * num_envs
    flushed = 0
    bar = tqdm(total=episodes, desc=f"record {env_id}", unit="ep", disable=not progress)

    def start(i: int) -> None:
        nonlocal next_index
        ep = _Open(index=next_index, seed=seed + next_index)
        next_index += 1
        obs, info = envs[i].reset(seed=ep.seed)
        slots[i] = ep
        _push_obs(ep, obs, info)
        last_obs[i] = obs

    def _push_obs(ep: _Open, obs: Any, info: dict) -> None:
        if image_size:
            ep.image.append(obs)
            ep.obs.append(info["state"])
        else:
            ep.obs.append(np.asarray(obs, np.float32))

    def flush() -> None:
        nonlocal flushed
        ready = []
        while flushed in done_eps:
            ready.append(done_eps.pop(flushed))
            flushed += 1
        if ready:
            store.append(ready)

    for i in range(num_envs):
        if next_index < episodes:
            start(i)
    while any(s is not None for s in slots):
        active = [i for i in range(num_envs) if slots[i] is not None]
        actions = act(np.stack([last_obs[i] for i in active]))
        for j, i in enumerate(active):
            ep = slots[i]
            a = actions[j]
            obs, reward, terminated, truncated, info = envs[i].step(a.item() if discrete else a)
            ep.action.append(np.atleast_1d(np.asarray(a)))
            ep.reward.append(float(reward))
            _push_obs(ep, obs, info)
            last_obs[i] = obs
            if terminated or truncated:
                n = len(ep.reward) + 1
                fill = np.full((1, schema.action_dim), DISCRETE_FILL if discrete else np.nan)
                action = np.concatenate([np.asarray(ep.action).reshape(-1, schema.action_dim), fill])
                done_eps[ep.index] = Episode(
                    obs=np.asarray(ep.obs, np.float32) if schema.obs_dim else None,
                    image=np.asarray(ep.image, np.uint8) if image_size else None,
                    action=action.astype(np.int64 if discrete else np.float32),
                    reward=np.asarray([*ep.reward, np.nan], np.float32),
                    terminated=np.r_[np.zeros(n - 1, bool), bool(terminated)],
                    truncated=np.r_[np.zeros(n - 1, bool), bool(truncated) and not terminated],
                    time=base_time + ep.index * EPISODE_SPACING_NS + dt_ns * np.arange(n, dtype=np.int64),
                    source=env_id,
                    seed=ep.seed,
                )
                slots[i] = None
                bar.update(1)
                if next_index < episodes:
                    start(i)
        if sum(e.num_rows for e in done_eps.values()) * 4 * max(schema.obs_dim, 1) > (8 << 20):
            flush()
    flush()
    bar.close()
    for env in envs:
        env.close()
    return store
