"""The rollout loop: step `num_envs` copies of an env with a behaviour policy and append finished episodes
to a store, in order of their index, on one clock.

Finished episodes are committed in batches (fewer, larger appends are faster), but at least every
`commit_interval` seconds, and at once on SIGINT / SIGTERM: a SIGKILL loses at most the episodes
finished in the last interval, a SIGINT / SIGTERM only the episodes still running.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import signal
import threading
import time as _time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from tqdm import tqdm

from data_pipeline.record.env_schema import make_env, schema_for_env
from data_pipeline.schema import DISCRETE_FILL, Episode, StoreSchema
from data_pipeline.store import TrajectoryStore
from data_pipeline.validate import check_schema_compatible

FLUSH_BYTES = 32 << 20  # finished episodes are appended once they hold this much data (fewer, larger appends)
COMMIT_INTERVAL = 10.0  # ... or once this many seconds passed since the last commit


class RecordInterrupted(Exception):
    """SIGINT or SIGTERM stopped `record`; every finished episode was committed first."""

    def __init__(self, signum: int, episodes: int, steps: int) -> None:
        super().__init__(f"record stopped by {signal.Signals(signum).name}: {episodes} episodes ({steps} rows) "
                         "committed; episodes still running were dropped")
        self.signum = signum
        self.episodes = episodes
        self.steps = steps

Policy = Callable[[np.ndarray], np.ndarray]
"""A behaviour policy: a batch of observations (batch, *obs_shape) to a batch of actions (batch, *action_shape)."""


def record(
    env_id: str,
    episodes: int,
    out: str,
    *,
    policy: Policy | Literal["random"] = "random",
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
    commit_interval: float = COMMIT_INTERVAL,
    obs_names: list[str] | None = None,
    action_names: list[str] | None = None,
) -> TrajectoryStore:
    """Roll out `policy` in `num_envs` copies of `env_id` until `episodes` episodes are stored.

    `policy` is "random" (episode k samples from the action space seeded with `seed + k`) or a callable
    mapping a batch of observations to a batch of actions; `python -m data_pipeline record --policy` also
    takes a stable-baselines3 .zip or "module:function" and resolves them to such a callable.
    With `store` (an open writable store) or `append=True` (open `out`) the episodes are appended;
    the store's schema must match the env's. `start_time` (ns since the epoch) fixes the clock, so
    the store is bit-for-bit reproducible; by default the first episode starts now, or after the
    store's last row when appending. Finished episodes are committed at least every `commit_interval`
    seconds (0: whenever one finishes). A Dict / Tuple observation is flattened into channels named by
    its key paths (`env_schema.flat_channel_names`); `obs_names` / `action_names` name the channels
    instead (one name each). Returns the store, still open for writing: close it.

    SIGINT and SIGTERM (in the main thread) commit the finished episodes, close the store and raise
    `RecordInterrupted`; the command line then exits 130 / 143.
    """
    if episodes < 1 or num_envs < 1:
        raise ValueError(f"record: episodes ({episodes}) and num_envs ({num_envs}) must be ≥ 1")
    if isinstance(policy, str) and policy != "random":
        raise TypeError(
            f"record: policy={policy!r}; expected 'random' or a callable (batched obs -> actions). A "
            "stable-baselines3 .zip or 'module:function' is resolved by policies.behaviour.make_policy, as "
            "`python -m data_pipeline record --policy` does"
        )
    kwargs = dict(env_kwargs or {})
    if max_episode_steps:
        kwargs["max_episode_steps"] = max_episode_steps
    envs = [make_env(env_id, image_size, **kwargs) for _ in range(num_envs)]
    try:
        schema = schema_for_env(envs[0], env_id, image_size, obs_names, action_names)
    except BaseException:
        for env in envs:
            env.close()
        raise
    opened = store is None
    if store is None:
        store = TrajectoryStore.open(out, mode="a") if append else TrajectoryStore.create(out, schema,
                                                                                          overwrite=overwrite)
    try:
        check_schema_compatible(store.schema, schema, use="append", where=f"record {env_id} into {store.path}")
        act = None if isinstance(policy, str) else policy
        with _stop_on_signals() as stop:
            _rollout(envs, env_id, schema, store, act, episodes, seed, image_size, progress, start_time,
                     commit_interval, stop)
        if stop.signum is not None:
            raise RecordInterrupted(stop.signum, store.num_episodes, store.num_steps)
    except BaseException:
        if opened:
            store.close()
        raise
    finally:
        for env in envs:
            env.close()
    return store


@dataclass
class _Stop:
    signum: int | None = None
    """The signal that asked the rollout to stop, if any."""


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_Stop]:
    """While inside, SIGINT / SIGTERM set `stop.signum` (the rollout then commits and ends) instead of
    killing the process; outside the main thread signals cannot be caught, and nothing is installed."""
    stop = _Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        stop.signum = signum

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


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


def _sample(ep: _Open) -> np.ndarray:
    """The random policy's action for an episode, from the action space seeded for it alone."""
    if ep.sampler is None:
        raise RuntimeError("record: an episode of the random policy has no seeded action space")
    return np.asarray(ep.sampler.sample())


def _episode_bytes(ep: Episode) -> int:
    return sum(a.nbytes for a in (ep.obs, ep.image, ep.action, ep.reward) if a is not None)


def _rollout(
    envs: list[gym.Env],
    env_id: str,
    schema: StoreSchema,
    store: TrajectoryStore,
    act: Policy | None,
    episodes: int,
    seed: int,
    image_size: int | None,
    progress: bool,
    start_time: int | None,
    commit_interval: float,
    stop: _Stop,
) -> None:
    """Step the envs side by side (`act` None: the random policy); append finished episodes in order of
    their index, at least every `commit_interval` seconds, until done or `stop` is signalled."""
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

    last_commit = _time.monotonic()

    def flush(force: bool) -> None:
        nonlocal flushed, clock, last_commit
        if flushed not in done_eps:  # the next episode in index order is still running
            return
        due = _time.monotonic() - last_commit >= commit_interval
        if not (force or due) and sum(_episode_bytes(e) for e in done_eps.values()) < FLUSH_BYTES:
            return
        ready = []
        while flushed in done_eps:  # in index order, whichever env finished first
            ep = done_eps.pop(flushed)
            ready.append(dataclasses.replace(ep, time=clock + dt_ns * np.arange(ep.num_rows, dtype=np.int64)))
            clock += dt_ns * ep.num_rows
            flushed += 1
        store.append(ready)
        last_commit = _time.monotonic()

    for i in range(min(num_envs, episodes)):
        start(i)
    while any(s is not None for s in slots) and stop.signum is None:
        active = [(i, ep) for i, ep in enumerate(slots) if ep is not None]
        if act is None:
            actions = [_sample(ep) for _, ep in active]
        else:
            actions = list(act(np.stack([np.asarray(last_obs[i]) for i, _ in active])))
        for a, (i, ep) in zip(actions, active, strict=True):
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
