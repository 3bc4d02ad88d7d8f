"""Deterministic long windows for evaluation: the first `max_windows` non-overlapping windows of the
given episodes, in episode order. Open-loop evaluation at horizon 50 needs windows longer than the
training windows, so this is separate from the training sampler."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data_pipeline.batch import Batch
from data_pipeline.store import TrajectoryStore


def eval_windows(
    store: TrajectoryStore, episodes: Sequence[int], length: int, max_windows: int = 256
) -> Batch | None:
    """Up to `max_windows` windows of `length` rows from `episodes` (None if no episode is long enough)."""
    table = store.episodes()
    names = [n for n in ("obs", "image", "action", "reward", "terminated", "is_first", "is_last") if store.has(n)]
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    count = 0
    for e in episodes:
        start, rows = int(table["start"].iloc[e]), int(table["length"].iloc[e])
        for a in range(start, start + rows - length + 1, length):
            for n in names:
                parts[n].append(store.read_rows(n, a, a + length))
            count += 1
            if count >= max_windows:
                break
        if count >= max_windows:
            break
    if not count:
        return None
    arrays = {n: np.stack(v) for n, v in parts.items()}
    action = arrays["action"]
    if store.schema.discrete:
        action = np.where(action < 0, 0, action)[..., 0]
    else:
        action = np.nan_to_num(action, nan=0.0)
    return Batch.from_numpy({
        "obs": arrays["obs"] if "obs" in arrays else np.zeros((count, length, 0), np.float32),
        "action": action,
        "reward": np.nan_to_num(arrays["reward"], nan=0.0),
        "terminated": arrays["terminated"],
        "is_first": arrays["is_first"],
        "is_last": arrays["is_last"],
        "image": arrays.get("image"),
    })


def split_eval_windows(datamodule: object, split: str, length: int, max_windows: int = 256) -> Batch | None:
    """`eval_windows` over one split ("train", "val", "test") of a WindowDataModule's store."""
    hp = datamodule.hparams
    with TrajectoryStore.open(hp.store, storage_options=getattr(datamodule, "storage_options", None)) as store:
        return eval_windows(store, datamodule.split[split], length, max_windows)
