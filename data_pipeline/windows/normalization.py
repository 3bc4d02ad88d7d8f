"""Normalization statistics of the train split, computed once and cached in the store's attrs."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from data_pipeline.errors import InputError
from data_pipeline.stats import channel_stats
from data_pipeline.store import TrajectoryStore
from data_pipeline.windows.batch import Normalization

_STATS = ("mean", "std", "min", "max")


def _train_hash(store: TrajectoryStore, train_episodes: Sequence[int] | np.ndarray) -> str:
    ids = store.episodes()["id"].to_numpy()[np.asarray(train_episodes, np.int64)]
    return hashlib.blake2b(",".join(sorted(map(str, ids))).encode(), digest_size=8).hexdigest()


def normalization_for(
    store: TrajectoryStore, train_episodes: Sequence[int] | np.ndarray, *, split_key: dict[str, Any] | None = None
) -> Normalization:
    """Per-channel statistics of the train episodes, computed once and cached in attrs["normalization"].

    The cache entry is keyed by the store's fingerprint and a hash of the train episode ids (and records
    `split_key`, e.g. the split seed and fractions, for people reading the attrs); a stale entry is
    recomputed. Only a store open with mode="a" is written to; otherwise the result stays in memory.
    """
    if len(train_episodes) == 0:
        raise InputError(f"{store.path}: normalization needs a train episode; the train split is empty")
    key = {"fingerprint": store.fingerprint(), "train_hash": _train_hash(store, train_episodes)}
    cached = store.attrs.get("normalization")
    if isinstance(cached, dict) and all(cached.get(k) == v for k, v in key.items()) and "stats" in cached:
        return Normalization.from_dict(cached["stats"])

    schema = store.schema
    train = [int(i) for i in train_episodes]

    def stats(name: str) -> dict[str, list[float]]:
        st = channel_stats(store, name, train)
        if (st["count"] == 0).any():
            raise InputError(f"{store.path}: '{name}' has a channel with no finite value in the train split")
        return {k: st[k].astype(float).tolist() for k in _STATS}

    empty: dict[str, list[float]] = {k: [] for k in _STATS}
    obs = stats("obs") if schema.obs_dim else empty
    action = empty if schema.discrete else stats("action")
    reward = stats("reward")
    norm = Normalization(
        obs_mean=obs["mean"], obs_std=obs["std"], obs_min=obs["min"], obs_max=obs["max"],
        action_mean=action["mean"], action_std=action["std"], action_min=action["min"], action_max=action["max"],
        reward_mean=reward["mean"][0], reward_std=reward["std"][0], reward_min=reward["min"][0],
        reward_max=reward["max"][0],
        num_actions=int(schema.action_space["n"]) if schema.discrete else 0,
    )
    if store.mode == "a":
        store.set_attr("normalization", {**key, "split": split_key or {}, "train_episodes": len(train),
                                         "stats": norm.to_dict()})
    return norm
