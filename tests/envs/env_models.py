"""Tiny seeded world models on tiny recorded stores, shared by the WorldModel-v0 tests (Pendulum: Box
actions; CartPole: Discrete). Test modules import the fixtures by name: `from env_models import stores,
ensembles, one_thread`."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401 - registers WorldModel-v0
from data_pipeline.record import record
from data_pipeline.store import TrajectoryStore
from data_pipeline.windows import WindowSampler, normalization_for, usable_episodes
from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel
from worldmodel.interface import WorldModel

KINDS = ["ensemble", "rssm", "diffusion"]  # every model kind: a kind that cannot be built fails, never skips


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> object:
    """Tiny models are fastest on one thread; on a shared 2-core machine, two threads spin-wait badly."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build_model(kind: str, store: TrajectoryStore, seed: int = 0) -> WorldModel:
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


def train_model(model: WorldModel, store: TrajectoryStore, steps: int, seed: int = 0) -> WorldModel:
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


def record_store(tmp: Path, env_id: str, episodes: int, steps: int, **kwargs: object) -> TrajectoryStore:
    path = str(tmp / f"{env_id}.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        record(env_id, episodes, path, max_episode_steps=steps, progress=False, **kwargs).close()
    return TrajectoryStore.open(path)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, TrajectoryStore]:
    tmp = tmp_path_factory.mktemp("envs")
    return {
        "pendulum": record_store(tmp, "Pendulum-v1", 6, 50),
        "cartpole": record_store(tmp, "CartPole-v1", 6, 50),
    }


@pytest.fixture(scope="module")
def ensembles(stores: dict[str, TrajectoryStore]) -> dict[str, WorldModel]:
    return {name: train_model(build_model("ensemble", store), store, steps=150) for name, store in stores.items()}


def env_model(kind: str, system: str, stores: dict, ensembles: dict) -> WorldModel:
    return ensembles[system] if kind == "ensemble" else build_model(kind, stores[system])


def rollout(env: gym.Env, seed: int, steps: int, options: dict | None = None) -> list[np.ndarray]:
    obs, _ = env.reset(seed=seed, options=options)
    env.action_space.seed(seed)
    out = [obs]
    for _ in range(steps):
        obs, *_ = env.step(env.action_space.sample())
        out.append(obs)
    return out
