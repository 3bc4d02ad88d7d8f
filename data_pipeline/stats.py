"""Per-channel statistics of a store, computed chunk by chunk (memory stays at one chunk)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from data_pipeline.store import TrajectoryStore


def _ranges(store: TrajectoryStore, episodes: Sequence[int] | None) -> list[tuple[int, int]]:
    if episodes is None:
        end = store.num_steps
        return [(0, end)] if end else []
    return store.episode_rows(episodes)


def channel_stats(
    store: TrajectoryStore, name: str, episodes: Sequence[int] | None = None
) -> dict[str, np.ndarray]:
    """count, mean, std, min, max per channel of a float step variable, ignoring NaN rows.

    `episodes` restricts the statistics to those episode positions (e.g. the train split).
    """
    arr = store.array(name)
    chunk = arr.chunks[0]
    width = int(np.prod(arr.shape[1:])) if arr.ndim > 1 else 1
    count = np.zeros(width)
    total = np.zeros(width)
    total_sq = np.zeros(width)
    lo = np.full(width, np.inf)
    hi = np.full(width, -np.inf)
    # Merge the requested ranges chunk by chunk so each chunk is read once.
    ranges = _ranges(store, episodes)
    mask_end = max((b for _, b in ranges), default=0)
    for c0 in range(0, mask_end, chunk):
        c1 = min(c0 + chunk, mask_end)
        keep = np.zeros(c1 - c0, bool)
        for a, b in ranges:
            if b > c0 and a < c1:
                keep[max(a, c0) - c0 : min(b, c1) - c0] = True
        if not keep.any():
            continue
        block = store.read_rows(name, c0, c1)[keep].reshape(-1, width).astype(np.float64)
        finite = np.isfinite(block)
        vals = np.where(finite, block, 0.0)
        count += finite.sum(0)
        total += vals.sum(0)
        total_sq += (vals**2).sum(0)
        lo = np.minimum(lo, np.where(finite, block, np.inf).min(0))
        hi = np.maximum(hi, np.where(finite, block, -np.inf).max(0))
    mean = total / np.maximum(count, 1)
    var = np.maximum(total_sq / np.maximum(count, 1) - mean**2, 0.0)
    return {"count": count, "mean": mean, "std": np.sqrt(var), "min": lo, "max": hi}
