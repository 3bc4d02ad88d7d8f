"""Minari datasets to and from trajectory stores. Nothing is ever downloaded.

    python -m data_pipeline ingest minari twinworld/pendulum-random-v0 --out p.zarr
    python -m data_pipeline export minari p.zarr --dataset-id twinworld/pendulum-export-v0

Minari keeps N+1 observations and N actions / rewards / terminations / truncations per episode; a
store keeps N+1 rows with the last action and reward NaN (Discrete: -1) and the end flags on the last
row, so the two convert without loss. Rewards are float32 in a store (Minari's are often float64).
Datasets are found where Minari looks (`MINARI_DATASETS_PATH`, else ~/.minari/datasets).
"""

from __future__ import annotations

import contextlib
import os
import time as _time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import minari
import numpy as np
from gymnasium import spaces
from minari.data_collector.episode_buffer import EpisodeBuffer
from minari.dataset.minari_dataset import parse_dataset_id

from data_pipeline.errors import InputError
from data_pipeline.record.env_schema import ChannelNames, env_dt, known_channels
from data_pipeline.schema import DISCRETE_FILL, Episode, StoreSchema
from data_pipeline.spaces import is_image_space
from data_pipeline.store import TrajectoryStore

FLUSH_BYTES = 64 << 20  # append imported episodes in blocks of about this size
EPISODE_SPACING_NS = 3600 * 10**9  # Minari keeps no clock: imported episodes start an hour apart


def _load(dataset_id_or_path: str) -> minari.MinariDataset:
    """A local Minari dataset by id, or by its directory (the one holding `data/`, or `data/` itself)."""
    path = Path(dataset_id_or_path)
    if path.is_dir():
        data = path / "data" if (path / "data").is_dir() else path
        return minari.MinariDataset(data)
    try:
        return minari.load_dataset(dataset_id_or_path, download=False)
    except FileNotFoundError as err:
        root = os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets")
        raise FileNotFoundError(
            f"Minari dataset {dataset_id_or_path!r} is not in {root} (MINARI_DATASETS_PATH) and is not a "
            "dataset directory; twinworld never downloads datasets: create it locally or pass its path"
        ) from err


def _dt_of(env_spec: gym.envs.registration.EnvSpec | None) -> tuple[float, str]:
    """The env's step in seconds and how it was found; 1.0 when the dataset names no usable env."""
    if env_spec is None:
        return 1.0, "the dataset names no env: dt set to 1.0 s"
    try:
        env = gym.make(env_spec)
    except Exception as err:  # the env's package may not be installed here
        return 1.0, f"env {env_spec.id} could not be made ({type(err).__name__}: {err}): dt set to 1.0 s"
    try:
        return env_dt(env), f"from env {env_spec.id}"
    finally:
        env.close()


def schema_for_dataset(ds: minari.MinariDataset) -> StoreSchema:
    """Store schema of a Minari dataset: its spaces, channel names where the env is known, dt."""
    obs_space, act_space = ds.observation_space, ds.action_space
    flat = isinstance(obs_space, spaces.Box) and len(obs_space.shape) == 1
    if not (flat or is_image_space(obs_space)):
        raise InputError(
            f"Minari dataset {ds.id}: observation space {obs_space} is not a flat Box or a uint8 (H, W, C) "
            "image Box; twinworld stores only those"
        )
    env_spec = ds.env_spec
    dt, dt_note = _dt_of(env_spec)
    known = ChannelNames()
    if env_spec is not None:
        known = known_channels(env_spec.name, obs_space.shape[0] if flat else None)
    return StoreSchema.from_spaces(
        obs_space, act_space, dt,
        provenance={
            "source": "minari",
            "dataset_id": ds.id,
            "env_id": env_spec.id if env_spec is not None else None,
            "dt": dt_note,
            "minari": minari.__version__,
            "dataset_minari_version": ds.minari_version,
            "total_episodes": int(ds.total_episodes),
        },
        **known,
    )


def _episodes(ds: minari.MinariDataset, schema: StoreSchema) -> Iterator[Episode]:
    ids = list(ds.episode_indices)
    seeds = {int(m["id"]): m.get("seed") for m in ds.storage.get_episode_metadata(ids)}
    base_time = _time.time_ns()
    dt_ns = round(schema.dt * 1e9)
    for k, ep in enumerate(ds.iterate_episodes(ids)):
        n = len(ep.rewards)  # transitions
        if schema.discrete:
            action = np.r_[np.asarray(ep.actions, np.int64).reshape(n), DISCRETE_FILL].reshape(n + 1, 1)
        else:
            act = np.asarray(ep.actions, np.float32).reshape(n, schema.action_dim)
            action = np.concatenate([act, np.full((1, schema.action_dim), np.nan, np.float32)])
        terminated = np.zeros(n + 1, bool)
        truncated = np.zeros(n + 1, bool)
        terminated[-1] = bool(np.asarray(ep.terminations)[-1]) if n else False
        truncated[-1] = bool(np.asarray(ep.truncations)[-1]) and not terminated[-1] if n else False
        obs = np.asarray(ep.observations)
        seed = seeds.get(int(ep.id))
        yield Episode(
            obs=None if schema.image_shape else obs.astype(np.float32),
            image=obs.astype(np.uint8) if schema.image_shape else None,
            action=action,
            reward=np.r_[np.asarray(ep.rewards, np.float32), np.float32(np.nan)],
            terminated=terminated,
            truncated=truncated,
            time=base_time + k * EPISODE_SPACING_NS + dt_ns * np.arange(n + 1, dtype=np.int64),
            episode_id=f"{ds.id}:{int(ep.id)}",
            source=f"minari:{ds.id}",
            seed=int(seed) if seed is not None else -1,
        )


def import_minari(dataset_id_or_path: str, out: str, *, overwrite: bool = False) -> TrajectoryStore:
    """Read a local Minari dataset (by id or directory; never downloaded) into a new store at `out`.

    Spaces come from the dataset, dt from its env (1.0 s, noted in the provenance, when the env
    is unknown). Returns the store open for writing; close it when done.
    """
    ds = _load(dataset_id_or_path)
    schema = schema_for_dataset(ds)
    store = TrajectoryStore.create(out, schema, overwrite=overwrite)
    block: list[Episode] = []
    size = 0
    for ep in _episodes(ds, schema):
        block.append(ep)
        size += sum(a.nbytes for a in (ep.obs, ep.image) if a is not None)
        if size >= FLUSH_BYTES:
            store.append(block, min_transitions=0)
            block, size = [], 0
    store.append(block, min_transitions=0)
    return store


@contextlib.contextmanager
def _datasets_root(data_path: str | os.PathLike | None) -> Iterator[None]:
    """Point Minari at `data_path` for the duration (Minari reads the root from the environment)."""
    if data_path is None:
        yield
        return
    old = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(data_path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def _buffer(index: int, ep: Episode, schema: StoreSchema, obs_space: spaces.Space,
            act_space: spaces.Space) -> EpisodeBuffer:
    n = ep.num_transitions
    obs = ep.image if schema.image_obs else ep.obs
    if schema.discrete:
        actions: Any = ep.action[:n, 0].astype(act_space.dtype)
    else:
        actions = ep.action[:n].astype(act_space.dtype)
    terminations = np.zeros(n, bool)
    truncations = np.zeros(n, bool)
    terminations[-1], truncations[-1] = bool(ep.terminated[-1]), bool(ep.truncated[-1])
    return EpisodeBuffer(
        id=index,
        seed=ep.seed if ep.seed >= 0 else None,
        observations=np.asarray(obs).astype(obs_space.dtype),
        actions=actions,
        rewards=ep.reward[:n].astype(np.float32),
        terminations=terminations,
        truncations=truncations,
    )


def export_minari(store_path: str, dataset_id: str, *, data_path: str | os.PathLike | None = None) -> str:
    """Write the committed episodes of a store as a new Minari dataset; return its id.

    `data_path` is the Minari datasets root (default: `MINARI_DATASETS_PATH`, else ~/.minari/datasets).
    The dataset uses Minari's `arrow` format, images unencoded (no JPEG loss). An image store exports
    its images as the observations (its vector channels are not part of a Minari observation).
    """
    parse_dataset_id(dataset_id)  # a malformed id raises here, before Minari creates its directory
    store = TrajectoryStore.open(store_path)
    schema = store.schema
    obs_space, act_space = schema.gym_observation_space(), schema.gym_action_space()
    buffers = [_buffer(i, ep, schema, obs_space, act_space) for i, ep in enumerate(store.iter_episodes())
               if ep.num_transitions > 0]
    if not buffers:
        raise InputError(f"{store_path}: no committed episode with a transition to export")
    env_id = schema.provenance.get("env_id")
    env = env_id if env_id and env_id in gym.registry else None
    with _datasets_root(data_path), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is set to None.*")  # optional Minari metadata
        minari.create_dataset_from_buffers(
            dataset_id,
            buffers,
            env=env,
            observation_space=obs_space,
            action_space=act_space,
            algorithm_name=str(schema.provenance.get("policy", schema.provenance.get("source", "unknown"))),
            author="twinworld",
            description=f"Exported from the twinworld store {store_path} (fingerprint {store.fingerprint()})",
            data_format="arrow",
            jpeg_encoding=False,
        )
    return dataset_id
