"""Record episodes of any Gymnasium env into a trajectory store.

    python -m data_pipeline record --env Pendulum-v1 --episodes 50 --policy random --seed 0 --out p.zarr

Episode k is reset with seed `seed + k` (and the random policy samples from an action space seeded
the same way), and episodes are stored in order of k, so a store holds the same data whatever
`--num-envs` is. Simulated episodes lie back to back on one clock: episode k starts one `dt` after
episode k-1's final observation, the first at `start_time` (default: when recording began).
"""

from __future__ import annotations

import copy
import dataclasses
import time as _time
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image
from tqdm import tqdm

from data_pipeline.schema import DISCRETE_FILL, Episode, StoreSchema
from data_pipeline.store import TrajectoryStore
from data_pipeline.validate import check_schema_matches
from policies.behaviour import make_policy

FLUSH_BYTES = 32 << 20  # finished episodes are appended once they hold this much data (fewer, larger appends)

_CHEETAH_JOINTS = ["bthigh", "bshin", "bfoot", "fthigh", "fshin", "ffoot"]

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
    # Gymnasium's HalfCheetah-v5 table (default: the x position is left out of the observation).
    "HalfCheetah": {
        "obs_channels": ["rootz", "rooty", *[f"{j}_angle" for j in _CHEETAH_JOINTS], "rootx_vel", "rootz_vel",
                         "rooty_angvel", *[f"{j}_angvel" for j in _CHEETAH_JOINTS]],
        "obs_units": ["m", "rad", *["rad"] * 6, "m/s", "m/s", "rad/s", *["rad/s"] * 6],
        "action_channels": [f"{j}_torque" for j in _CHEETAH_JOINTS],
        "action_units": ["N*m"] * 6,
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
    """The store schema of an env: its spaces and dt, channel names and units where known."""
    known = KNOWN_CHANNELS.get(env_id.split("-")[0], {})
    state_space = env.state_space if isinstance(env, RenderedObservation) else env.observation_space
    n_obs = state_space.shape[0] if isinstance(state_space, spaces.Box) and len(state_space.shape) == 1 else 0
    n_act = env.action_space.shape[0] if isinstance(env.action_space, spaces.Box) else 1
    if known and (len(known["obs_channels"]) != n_obs or len(known["action_channels"]) != n_act):
        known = {}  # a variant of the env (e.g. other constructor arguments): generic names
    return StoreSchema.from_spaces(
        env.observation_space,
        env.action_space,
        env_dt(env),
        state_dim=n_obs if image_size else None,
        provenance={"source": "record", "env_id": env_id, "image_size": image_size,
                    "gymnasium": gym.__version__},
        **known,
    )


@dataclass
class _Open:
    """Rows of an episode being recorded by one sub-env."""

    index: int
    seed: int
    sampler: spaces.Space | None  # the random policy's own action space, seeded for this episode
    obs: list = field(default_factory=list)
    image: list = field(default_factory=list)
    action: list = field(default_factory=list)
    reward: list = field(default_factory=list)


def _episode_bytes(ep: Episode) -> int:
    return sum(a.nbytes for a in (ep.obs, ep.image, ep.action, ep.reward) if a is not None)


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
    start_time: int | None = None,
) -> TrajectoryStore:
    """Roll out `policy` in `num_envs` copies of `env_id` until `episodes` episodes are stored.

    `policy` is "random", a stable-baselines3 .zip or "module:function" (batched obs -> actions).
    With `store` (an open writable store) or `append=True` (open `out`) the episodes are appended;
    the store's schema must match the env's. `start_time` (ns since the epoch) fixes the clock, so
    the store is bit-for-bit reproducible; by default the first episode starts now, or after the
    store's last row when appending. Returns the store, still open for writing: close it.
    """
    if episodes < 1 or num_envs < 1:
        raise ValueError(f"record: episodes ({episodes}) and num_envs ({num_envs}) must be ≥ 1")
    kwargs = dict(env_kwargs or {})
    if max_episode_steps:
        kwargs["max_episode_steps"] = max_episode_steps
    envs = [make_env(env_id, image_size, **kwargs) for _ in range(num_envs)]
    schema = schema_for_env(envs[0], env_id, image_size)
    act = None if policy == "random" else make_policy(policy, envs[0].action_space, seed=seed)
    opened = store is None
    if store is None:
        store = TrajectoryStore.open(out, mode="a") if append else TrajectoryStore.create(out, schema,
                                                                                          overwrite=overwrite)
    try:
        check_schema_matches(store.schema, schema, source=f"record {env_id} into {store.path}")
        _rollout(envs, env_id, schema, store, act, episodes, seed, image_size, progress, start_time)
    except BaseException:
        if opened:
            store.close()
        raise
    finally:
        for env in envs:
            env.close()
    return store


def _rollout(
    envs: list[gym.Env],
    env_id: str,
    schema: StoreSchema,
    store: TrajectoryStore,
    act: Any,
    episodes: int,
    seed: int,
    image_size: int | None,
    progress: bool,
    start_time: int | None,
) -> None:
    """Step the envs side by side; append finished episodes in order of their index."""
    num_envs = len(envs)
    action_space = envs[0].action_space
    discrete = isinstance(action_space, spaces.Discrete)
    dt_ns = round(schema.dt * 1e9)
    clock = start_time if start_time is not None else _time.time_ns()
    if start_time is None and store.num_steps:  # appending: continue after the store's last row
        clock = max(clock, int(store.read_rows("time", store.num_steps - 1, store.num_steps)[0]) + dt_ns)

    next_index = 0
    done_eps: dict[int, Episode] = {}
    flushed = 0
    slots: list[_Open | None] = [None] * num_envs
    last_obs: list[Any] = [None] * num_envs
    bar = tqdm(total=episodes, desc=f"record {env_id}", unit="ep", disable=not progress)

    def push_obs(ep: _Open, obs: Any, info: dict) -> None:
        if image_size:
            ep.image.append(obs)
            ep.obs.append(info["state"])
        else:
            ep.obs.append(np.asarray(obs, np.float32))

    def start(i: int) -> None:
        nonlocal next_index
        sampler = None
        if act is None:
            sampler = copy.deepcopy(action_space)
            sampler.seed(seed + next_index)
        ep = _Open(index=next_index, seed=seed + next_index, sampler=sampler)
        next_index += 1
        obs, info = envs[i].reset(seed=ep.seed)
        slots[i] = ep
        push_obs(ep, obs, info)
        last_obs[i] = obs

    def flush(force: bool) -> None:
        nonlocal flushed, clock
        if not force and sum(_episode_bytes(e) for e in done_eps.values()) < FLUSH_BYTES:
            return
        ready = []
        while flushed in done_eps:  # in index order, whichever env finished first
            ep = done_eps.pop(flushed)
            ready.append(dataclasses.replace(ep, time=clock + dt_ns * np.arange(ep.num_rows, dtype=np.int64)))
            clock += dt_ns * ep.num_rows
            flushed += 1
        if ready:
            store.append(ready)

    for i in range(min(num_envs, episodes)):
        start(i)
    while any(s is not None for s in slots):
        active = [i for i in range(num_envs) if slots[i] is not None]
        if act is None:
            actions = [np.asarray(slots[i].sampler.sample()) for i in active]
        else:
            actions = list(act(np.stack([np.asarray(last_obs[i]) for i in active])))
        for a, i in zip(actions, active, strict=True):
            ep = slots[i]
            obs, reward, terminated, truncated, info = envs[i].step(a.item() if discrete else a)
            ep.action.append(np.atleast_1d(np.asarray(a)))
            ep.reward.append(float(reward))
            push_obs(ep, obs, info)
            last_obs[i] = obs
            if not (terminated or truncated):
                continue
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
                source=env_id,
                seed=ep.seed,
            )
            slots[i] = None
            bar.update(1)
            if next_index < episodes:
                start(i)
        flush(force=False)
    flush(force=True)
    bar.close()
