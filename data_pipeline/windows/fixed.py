"""Evaluation windows, the one home of the rule: back-to-back, non-overlapping windows of each episode, in
store order, capped at a number of windows. The same windows every time, so metrics compare across epochs
and runs.

- `FixedWindows` batches them through an LRU chunk cache (validation and test loaders of the DataModule);
- `eval_windows` returns them as one Batch (open-loop evaluation, scenarios, published metrics), often
  longer than the training window (context + horizon).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from data_pipeline.errors import InputError
from data_pipeline.store import TrajectoryStore
from data_pipeline.windows.batch import Batch, to_batch
from data_pipeline.windows.cache import ChunkCache, chunk_span

# Cache budget of `eval_windows`: only the chunks its windows touch are read; this bounds the resident copy.
EVAL_CACHE_BYTES = 512 << 20


def eval_starts(
    starts: np.ndarray, lengths: np.ndarray, window: int, max_windows: int, *, spread: bool = True,
    stride: int | None = None,
) -> np.ndarray:
    """A fixed set of window start rows: back-to-back non-overlapping windows per episode (given as its
    start row and length), at most `max_windows` of them. `stride` k starts one every k rows from each
    episode's first row instead (overlapping where k < window: a held-out yardstick, `--data.test_stride`).

    When there are more, `spread=True` thins them evenly over all episodes (validation and test loaders);
    `spread=False` keeps the first `max_windows` in episode order (open-loop evaluation, `eval_windows`).
    """
    step = stride or window
    parts = [s + np.arange(0, n - window + 1, step) for s, n in zip(starts, lengths, strict=True)]
    found = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    if len(found) > max_windows:
        if not spread:
            return found[:max_windows]
        found = found[np.unique(np.linspace(0, len(found) - 1, max_windows).round().astype(np.int64))]
    return found


class FixedWindows:
    """A fixed, ordered set of windows (validation / test), batched; shard `shard` of `num_shards` (a
    DataLoader worker) takes every num_shards-th batch. Chunks are loaded in order and the least recently
    used ones evicted."""

    def __init__(
        self,
        store: TrajectoryStore,
        starts: np.ndarray,
        *,
        window: int,
        batch_size: int,
        cache_bytes: int = 512 << 20,
        shard: int = 0,
        num_shards: int = 1,
    ) -> None:
        self.store, self.window, self.batch_size = store, window, batch_size
        self.starts = np.sort(np.asarray(starts, np.int64))
        self.shard, self.num_shards = shard, num_shards
        c = int(store.attrs["chunk_steps"])
        self.chunk = c
        span = chunk_span(window, c)
        chunk_bytes = ChunkCache.chunk_bytes(store)
        touched = [np.arange(s // c, (s + window - 1) // c + 1) for s in self.starts]
        needed = len(np.unique(np.concatenate(touched))) if touched else 0
        capacity = min(int(cache_bytes // chunk_bytes), max(needed, span))
        if capacity < span:
            raise InputError(
                f"{store.path}: cache_bytes={cache_bytes} is below one window's {span * chunk_bytes} B"
            )
        num_rows = int(self.starts.max()) + window if len(self.starts) else 0
        self.cache = ChunkCache(store, capacity, num_rows)

    def __len__(self) -> int:
        return -(-len(self.starts) // self.batch_size)

    def _gather(self, starts: np.ndarray) -> dict[str, np.ndarray]:
        parts: list[dict[str, np.ndarray]] = []
        group: list[int] = []
        chunks = np.zeros(0, np.int64)
        for s in starts:
            mine = np.arange(s // self.chunk, (s + self.window - 1) // self.chunk + 1)
            union = np.union1d(chunks, mine)
            if len(union) > self.cache.capacity and group:
                self.cache.load(chunks)
                parts.append(self.cache.gather(np.asarray(group), self.window))
                group, union = [], mine
            group.append(int(s))
            chunks = union
        self.cache.load(chunks)
        parts.append(self.cache.gather(np.asarray(group), self.window))
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def __iter__(self) -> Iterator[Batch]:
        for b in range(self.shard, len(self), self.num_shards):
            starts = self.starts[b * self.batch_size : (b + 1) * self.batch_size]
            yield to_batch(self._gather(starts), self.store)


def eval_windows(
    store: TrajectoryStore, episodes: Sequence[int] | np.ndarray, length: int, max_windows: int = 256,
    stride: int | None = None,
) -> Batch | None:
    """Up to `max_windows` windows of `length` rows from `episodes`, the first ones in the order the episodes
    are given, as one Batch (None if no episode is long enough); `stride` as in `eval_starts`."""
    table = store.episodes()
    pos = np.asarray(episodes, np.int64)
    starts = eval_starts(table["start"].to_numpy(np.int64)[pos], table["length"].to_numpy(np.int64)[pos], length,
                         max_windows, spread=False, stride=stride)
    if not len(starts):
        return None
    fixed = FixedWindows(store, starts, window=length, batch_size=len(starts), cache_bytes=EVAL_CACHE_BYTES)
    batch = next(iter(fixed))
    order = np.argsort(starts, kind="stable")
    if (order == np.arange(len(order))).all():
        return batch
    # FixedWindows yields the windows in row order; put them back in the order of `episodes`.
    back = torch.from_numpy(np.argsort(order))
    return Batch(obs=batch.obs[back], action=batch.action[back], reward=batch.reward[back],
                 terminated=batch.terminated[back], is_first=batch.is_first[back], is_last=batch.is_last[back],
                 image=None if batch.image is None else batch.image[back])
