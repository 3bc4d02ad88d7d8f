"""Shared fixtures: tiny seeded schemas, episodes and stores.

    def test_something(tiny_store):
        tiny = tiny_store(episodes=4, action="discrete")    # a closed store on disk
        store = TrajectoryStore.open(tiny.path)
        assert store.num_episodes == len(tiny.episodes)

`make_tiny_schema` / `make_tiny_episodes` are plain functions (also importable by a subprocess
that puts this directory on sys.path); the fixtures wrap them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from gymnasium import spaces
from stream_helpers import free_port, wait_for

from data_pipeline.schema import Episode, StoreSchema
from data_pipeline.store import TrajectoryStore

REPO = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000 * 10**9  # a fixed start time (ns) so stores are reproducible


def subprocess_env() -> dict[str, str]:
    """Environment for a child python that must import this checkout (installed or not)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    return env


def make_tiny_schema(
    obs_dim: int = 3,
    action: str = "box",
    action_dim: int = 2,
    n_actions: int = 3,
    image_shape: tuple[int, int, int] | None = None,
    dt: float = 0.1,
) -> StoreSchema:
    """A schema with `obs_dim` vector channels (units "m"), Box or Discrete actions, optional images."""
    if image_shape is not None:
        obs_space: spaces.Space = spaces.Box(0, 255, image_shape, np.uint8)
    else:
        obs_space = spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
    act_space: spaces.Space = spaces.Box(-1.0, 1.0, (action_dim,), np.float32)
    if action == "discrete":
        act_space = spaces.Discrete(n_actions)
    n_act = 1 if action == "discrete" else action_dim
    return StoreSchema.from_spaces(
        obs_space,
        act_space,
        dt,
        obs_units=["m"] * obs_dim,
        action_units=["N"] * n_act,
        state_dim=obs_dim if image_shape is not None else None,
        provenance={"source": "tests"},
    )


def make_tiny_episodes(
    schema: StoreSchema,
    lengths: list[int] | int = 3,
    seed: int = 0,
    min_transitions: int = 1,
    max_transitions: int = 12,
    start_time: int = T0,
    id_prefix: str | None = None,
) -> list[Episode]:
    """Random episodes for `schema`: `lengths` transitions each (or that many random lengths).

    Episodes lie back to back in time, one `dt` apart; the last row holds NaN / -1 like a stored one,
    so `read_episode` returns exactly what was made.
    """
    rng = np.random.default_rng(seed)
    if isinstance(lengths, int):
        lengths = [int(n) for n in rng.integers(min_transitions, max_transitions + 1, size=lengths)]
    dt_ns = round(schema.dt * 1e9)
    prefix = f"s{seed}-" if id_prefix is None else id_prefix
    episodes, clock = [], start_time
    for i, t in enumerate(lengths):
        n = t + 1
        if schema.discrete:
            action = rng.integers(0, int(schema.action_space["n"]), size=(n, 1)).astype(np.int64)
            action[-1] = -1
        else:
            action = rng.uniform(-1, 1, size=(n, schema.action_dim)).astype(np.float32)
            action[-1] = np.nan
        reward = rng.normal(size=n).astype(np.float32)
        reward[-1] = np.nan
        end = bool(rng.integers(2))
        image = None
        if schema.image_shape:
            image = rng.integers(0, 256, size=(n, *schema.image_shape), dtype=np.uint8)
        episodes.append(Episode(
            obs=rng.normal(size=(n, schema.obs_dim)).astype(np.float32) if schema.obs_dim else None,
            image=image,
            action=action,
            reward=reward,
            terminated=np.r_[np.zeros(n - 1, bool), end],
            truncated=np.r_[np.zeros(n - 1, bool), not end],
            time=clock + dt_ns * np.arange(n, dtype=np.int64),
            episode_id=f"{prefix}{i}",
            source="tiny",
            seed=i,
            start_time=clock,
        ))
        clock += dt_ns * (n + 1)
    return episodes


@dataclass
class TinyStore:
    """A small store on disk (closed) and the episodes it holds, in order."""

    path: str
    schema: StoreSchema
    episodes: list[Episode]


@pytest.fixture
def tiny_schema() -> Callable[..., StoreSchema]:
    """Factory: `tiny_schema(obs_dim=3, action="box"|"discrete", action_dim=2, image_shape=None)`."""
    return make_tiny_schema


@pytest.fixture
def tiny_episodes() -> Callable[..., list[Episode]]:
    """Factory: `tiny_episodes(schema, lengths=3 | [t0, t1, …], seed=0)`."""
    return make_tiny_episodes


@pytest.fixture
def tiny_store(tmp_path: Path) -> Callable[..., TinyStore]:
    """Factory of seeded tiny stores under tmp_path.

    `tiny_store(episodes=3, obs_dim=3, action="box", action_dim=2, n_actions=3, image_shape=None,
    min_transitions=1, max_transitions=12, seed=0, chunk_steps=None, name=None)`; `episodes` may be a
    list of transition counts. Small `chunk_steps` give several chunks per variable.
    """
    counter = iter(range(10**6))

    def make(
        episodes: int | list[int] = 3,
        obs_dim: int = 3,
        action: str = "box",
        action_dim: int = 2,
        n_actions: int = 3,
        image_shape: tuple[int, int, int] | None = None,
        min_transitions: int = 1,
        max_transitions: int = 12,
        seed: int = 0,
        chunk_steps: int | None = None,
        name: str | None = None,
    ) -> TinyStore:
        schema = make_tiny_schema(obs_dim, action, action_dim, n_actions, image_shape)
        eps = make_tiny_episodes(schema, episodes, seed, min_transitions, max_transitions)
        path = str(tmp_path / (name or f"tiny{next(counter)}.zarr"))
        with TrajectoryStore.create(path, schema, chunk_steps=chunk_steps) as store:
            store.append(eps)
        return TinyStore(path, schema, eps)

    return make


@pytest.fixture(autouse=True, scope="session")
def _one_thread_per_process() -> None:
    """Tiny models run fastest on one thread, and on 2 shared cores extra threads only spin.

    Subprocesses inherit OMP_NUM_THREADS, so CLI tests are capped the same way.
    """
    import torch

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)


@pytest.fixture
def mqtt_broker(tmp_path: Path) -> Iterator[int]:
    """A mosquitto broker on loopback (Debian's package; .ci/run installs it)."""
    binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None)
    if binary is None:
        pytest.skip("mosquitto is not installed (apt-get install -y mosquitto; `make test` does it)")
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up() -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_for(up, 10.0, "mosquitto to listen")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
