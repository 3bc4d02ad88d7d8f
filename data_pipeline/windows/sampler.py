"""The training-window sampler: random windows drawn from resident chunks, rotating through a store larger
than the cache (docs/windows.md)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence

import numpy as np

from data_pipeline.errors import InputError
from data_pipeline.store import TrajectoryStore
from data_pipeline.windows.batch import Batch, to_batch
from data_pipeline.windows.cache import ChunkCache, chunk_span


def _intersect(
    a_lo: np.ndarray, a_hi: np.ndarray, b_lo: np.ndarray, b_hi: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Intersection of two sorted lists of disjoint half-open intervals."""
    lo, hi = [], []
    i = j = 0
    while i < len(a_lo) and j < len(b_lo):
        s, e = max(a_lo[i], b_lo[j]), min(a_hi[i], b_hi[j])
        if s < e:
            lo.append(s)
            hi.append(e)
        if a_hi[i] < b_hi[j]:
            i += 1
        else:
            j += 1
    return np.asarray(lo, np.int64), np.asarray(hi, np.int64)


class WindowSampler:
    """An endless sequence of random windows (Batch objects) from the given episodes, read chunk-wise.

    If every chunk the episodes touch fits `cache_bytes`, they are loaded once. Otherwise the chunks are
    cut into blocks of a few adjacent chunks (random cut points each pass, so windows over a block edge
    are not left out for good); each pass shuffles the blocks, shard `shard` of `num_shards` takes
    every num_shards-th block, the cache is filled with blocks, about `reuse` windows per loaded row
    are drawn from the resident windows, then the oldest half of the blocks is evicted and replaced.

    A shard is one (DDP rank, DataLoader worker) of a training run. Positions and resuming: when
    everything is resident, batch `p` is a pure function of (seed, p): the shards share one draw of
    `num_shards * batch_size` windows per position and shard `s` takes slice `s`, so S shards of B windows
    draw exactly what one shard of S*B would (`arrays_at`). A rotating sampler is sequential; `skip(n)`
    replays n batches (rotations included, without reading their data) so a resumed run continues the
    same sequence.
    """

    def __init__(
        self,
        store: TrajectoryStore,
        starts: np.ndarray,
        lengths: np.ndarray,
        *,
        window: int,
        batch_size: int,
        cache_bytes: int = 512 << 20,
        seed: int | Sequence[int] = 0,
        shard: int = 0,
        num_shards: int = 1,
        reuse: float = 1.0,
    ) -> None:
        if len(starts) == 0:
            raise InputError(f"{store.path}: no episode holds a window of {window} rows; nothing to sample")
        self.store, self.window, self.batch_size, self.reuse = store, window, batch_size, reuse
        self.shard, self.num_shards = shard, num_shards
        self.seed = [int(seed)] if isinstance(seed, int | np.integer) else [int(s) for s in seed]
        self.rng = np.random.default_rng([*self.seed, 1, shard])
        order = np.argsort(starts)
        self.ep_lo = starts[order]
        self.ep_hi = starts[order] + lengths[order] - window + 1  # valid window starts [lo, hi)
        num_rows = int((starts + lengths).max())
        c = int(store.attrs["chunk_steps"])
        self.chunk = c
        first, last = starts // c, (starts + lengths - 1) // c
        touched = [np.arange(a, b + 1) for a, b in zip(first, last, strict=True)]
        self.needed = np.unique(np.concatenate(touched))  # chunk ids the episodes touch
        chunk_bytes = ChunkCache.chunk_bytes(store)
        capacity = int(cache_bytes // chunk_bytes)
        span = chunk_span(window, c)
        self.rotating = capacity < len(self.needed)
        if self.rotating and capacity < 2 * span:
            raise InputError(
                f"{store.path}: cache_bytes={cache_bytes} holds {capacity} chunks of {chunk_bytes} bytes; "
                f"sampling windows of {window} rows from a store larger than the cache needs at least "
                f"{2 * span * chunk_bytes} bytes ({2 * span} chunks)"
            )
        self.cache = ChunkCache(store, capacity if self.rotating else len(self.needed), num_rows)
        self.block = max(span, min(8, capacity // 8))
        self.passes = 0
        self.drawn = 0  # batches drawn (or skipped) so far: the position of the next one
        self.queue: deque[np.ndarray] = deque()
        self.resident_blocks: deque[np.ndarray] = deque()
        self.batches_left = 0
        self.lo = self.hi = self.cum = np.zeros(0, np.int64)
        if not self.rotating:
            self.cache.load(self.needed)
            self._index_resident()
            self.batches_left = -1  # never rotate

    def _new_pass(self) -> None:
        rng = np.random.default_rng([*self.seed, 0, self.passes])  # shared by all shards: a partition
        self.passes += 1
        offset = int(rng.integers(self.block))
        cuts = np.arange(offset or self.block, len(self.needed), self.block)
        blocks = np.split(self.needed, cuts)
        order = rng.permutation(len(blocks))
        mine = order[self.shard :: self.num_shards] if len(blocks) >= self.num_shards else order
        self.queue.extend(blocks[i] for i in mine)

    def _rotate(self) -> None:
        for _ in range(max(1, len(self.resident_blocks) // 2)):
            if self.resident_blocks:
                self.cache.evict(self.resident_blocks.popleft())
        loaded = 0
        for _ in range(10 * len(self.needed) + 10):
            if not self.queue:
                self._new_pass()
            nxt = self.queue[0]
            new = nxt[self.cache.slot_of[nxt] < 0]
            if len(new) > self.cache.free:
                break
            self.queue.popleft()
            self.cache.load(new)
            self.resident_blocks.append(new)
            loaded += len(new)
        self._index_resident()
        rows = loaded * self.chunk
        self.batches_left = max(1, round(self.reuse * rows / (self.batch_size * self.window)))

    def _index_resident(self) -> None:
        """Valid window starts whose rows are all resident, as sorted intervals with a cumulative count."""
        res = self.cache.resident
        cuts = np.flatnonzero(np.diff(res) != 1) + 1
        runs = np.split(res, cuts) if len(res) else []
        r_lo = np.array([r[0] * self.chunk for r in runs], np.int64)
        r_hi = np.array([(r[-1] + 1) * self.chunk - self.window + 1 for r in runs], np.int64)
        self.lo, self.hi = _intersect(r_lo, r_hi, self.ep_lo, self.ep_hi)
        self.cum = np.cumsum(self.hi - self.lo)

    def _locate(self, u: np.ndarray) -> np.ndarray:
        """The u-th valid resident window start, for each u in [0, cum[-1])."""
        k = np.searchsorted(self.cum, u, side="right")
        return self.lo[k] + u - (self.cum[k] - (self.hi[k] - self.lo[k]))

    def _rotating_starts(self) -> np.ndarray:
        """Window starts of the next batch of a rotating sampler (rotates the cache when it is due)."""
        for _ in range(10 * len(self.needed) + 10):
            if self.batches_left == 0 or not len(self.cum) or self.cum[-1] == 0:
                self._rotate()
                continue
            break
        else:
            raise RuntimeError(f"{self.store.path}: shard {self.shard} found no windows in its blocks")
        self.batches_left -= 1
        return self._locate(self.rng.integers(0, self.cum[-1], size=self.batch_size))

    def starts_at(self, position: int, part: int = 0, parts: int = 1) -> np.ndarray:
        """Window starts of batch `position`, slice `part` of `parts` (everything resident only).

        One draw of `parts * batch_size` windows per position, from an RNG fixed by (seed, position), so
        DDP ranks (part = rank) together draw the global batch one process would draw with `parts` times
        the batch size, and any process can produce any position (exact resume, any worker count).
        """
        if self.rotating:
            raise RuntimeError(f"{self.store.path}: a rotating sampler (store larger than the cache) is sequential; "
                               "use next_arrays / skip")
        if not len(self.cum) or self.cum[-1] == 0:
            raise RuntimeError(f"{self.store.path}: no window fits the resident chunks")
        rng = np.random.default_rng([*self.seed, 2, int(position)])
        u = rng.integers(0, self.cum[-1], size=parts * self.batch_size)
        return self._locate(u[part * self.batch_size : (part + 1) * self.batch_size])

    def arrays_at(self, position: int, part: int = 0, parts: int = 1) -> dict[str, np.ndarray]:
        """Batch `position` (slice `part` of `parts`) as numpy arrays; see `starts_at`."""
        return self.cache.gather(self.starts_at(position, part, parts), self.window)

    def next_arrays(self) -> dict[str, np.ndarray]:
        """One batch as numpy arrays straight from the cache (before the last-row fill)."""
        if self.rotating:
            starts = self._rotating_starts()
        else:
            starts = self.starts_at(self.drawn, self.shard, self.num_shards)
        self.drawn += 1
        return self.cache.gather(starts, self.window)

    def skip(self, n: int) -> None:
        """Advance the sampler by `n` batches as if they had been drawn (resuming a run).

        A rotating sampler replays its rotations without reading chunk data, then reads only the chunks
        resident at the end, so skipping costs a few RNG draws per batch, not the reads.
        """
        if n <= 0:
            return
        if self.rotating:
            self.cache.dry = True
            try:
                for _ in range(n):
                    self._rotating_starts()
            finally:
                self.cache.dry = False
            self.cache.reload()
        self.drawn += n

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield to_batch(self.next_arrays(), self.store)
