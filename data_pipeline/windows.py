"""Training windows (DESIGN contract 2): the episode split, its normalization, and chunk-aware samplers.

    split = split_episodes(store, seed=0)                     # {"train": [...], "val": [...], "test": [...]}
    norm = normalization_for(store, split["train"], split_key={"seed": 0})
    sampler = WindowSampler(store, *usable_episodes(store, split["train"], 64), window=64, batch_size=64)
    batch = next(iter(sampler))                               # a Batch of (64, 64, …) windows

The samplers read whole chunks (every step variable a Batch needs) into a `ChunkCache` of fixed slots
under a byte budget, gather many windows from the resident chunks with one vectorized index, then rotate
which chunks are resident. docs/windows.md explains the scheme and its guarantees.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from data_pipeline.batch import Batch, Normalization
from data_pipeline.stats import channel_stats
from data_pipeline.store import TrajectoryStore
from data_pipeline.store.paths import is_url

# What a Batch needs from the store; `time` and `truncated` are not part of a training window.
WINDOW_VARS = ("obs", "image", "action", "reward", "terminated", "is_first", "is_last")
# Chunks read per zarr call. One zarr call decodes its chunks concurrently in zarr's threads, which hides
# object-store latency but leaves per-thread allocator slack (measured: ~20 MiB over the budget at 4
# chunks vs ~8 MiB at 1 on local disk), so local stores read one chunk at a time.
LOCAL_RUN_CHUNKS = 1
REMOTE_RUN_CHUNKS = 4


# ---------------------------------------------------------------------------------------------- split
def _unit_hash(seed: int, episode_id: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, episode_id) alone, so appends never move an episode."""
    digest = hashlib.blake2b(f"{seed}:{episode_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def split_episodes(
    store: TrajectoryStore, seed: int, val_fraction: float = 0.1, test_fraction: float = 0.1
) -> dict[str, np.ndarray]:
    """Episode positions of the train / val / test split, each sorted.

    Each episode's split is decided by a hash of (seed, episode id): the same seed gives the same split,
    and appending episodes never moves an old one. Guarantees at least one train episode and, with 3 or
    more episodes, at least one val and one test episode (unless its fraction is 0); those few forced
    moves (only where a split would otherwise be empty) take the episode whose hash lies closest to it.
    """
    if not (0 <= val_fraction and 0 <= test_fraction and val_fraction + test_fraction < 1):
        raise ValueError(
            f"split: val_fraction={val_fraction} and test_fraction={test_fraction} must be ≥ 0 and sum to < 1"
        )
    ids = store.episodes()["id"].tolist()
    u = np.array([_unit_hash(seed, i) for i in ids])
    # 0 train, 1 val, 2 test
    label = np.where(u < test_fraction, 2, np.where(u < test_fraction + val_fraction, 1, 0))

    # Where each split's hash interval lies: a forced move takes the episode whose hash is closest to it.
    bounds = {0: (test_fraction + val_fraction, 1.0), 1: (test_fraction, test_fraction + val_fraction),
              2: (0.0, test_fraction)}

    def move(target: int) -> None:
        # Donors keep at least one episode, except when filling an empty train split.
        floor = 0 if target == 0 else 1
        donors = [k for k in (0, 1, 2) if k != target and (label == k).sum() > floor]
        members = np.flatnonzero(np.isin(label, donors))
        lo, hi = bounds[target]
        distance = np.maximum(np.maximum(lo - u[members], u[members] - hi), 0.0)
        label[members[np.argmin(distance)]] = target

    if len(ids) and not (label == 0).any():
        move(0)
    for target, fraction in ((1, val_fraction), (2, test_fraction)):
        if len(ids) >= 3 and fraction > 0 and not (label == target).any():
            move(target)
    names = ("train", "val", "test")
    return {name: np.flatnonzero(label == k).astype(np.int64) for k, name in enumerate(names)}


# -------------------------------------------------------------------------------------- normalization
def _train_hash(store: TrajectoryStore, train_episodes: Sequence[int]) -> str:
    ids = store.episodes()["id"].to_numpy()[np.asarray(train_episodes, np.int64)]
    return hashlib.blake2b(",".join(sorted(map(str, ids))).encode(), digest_size=8).hexdigest()


def normalization_for(
    store: TrajectoryStore, train_episodes: Sequence[int], *, split_key: dict[str, Any] | None = None
) -> Normalization:
    """Per-channel statistics of the train episodes, computed once and cached in attrs["normalization"].

    The cache entry is keyed by the store's fingerprint and a hash of the train episode ids (and records
    `split_key`, e.g. the split seed and fractions, for people reading the attrs); a stale entry is
    recomputed. Only a store open with mode="a" is written to; otherwise the result stays in memory.
    """
    if len(train_episodes) == 0:
        raise ValueError(f"{store.path}: normalization needs a train episode; the train split is empty")
    key = {"fingerprint": store.fingerprint(), "train_hash": _train_hash(store, train_episodes)}
    cached = store.attrs.get("normalization")
    if isinstance(cached, dict) and all(cached.get(k) == v for k, v in key.items()) and "stats" in cached:
        return Normalization.from_dict(cached["stats"])

    schema = store.schema
    train = [int(i) for i in train_episodes]

    def stats(name: str) -> dict[str, list[float]]:
        st = channel_stats(store, name, train)
        if (st["count"] == 0).any():
            raise ValueError(f"{store.path}: '{name}' has a channel with no finite value in the train split")
        return {k: st[k].astype(float).tolist() for k in ("mean", "std", "min", "max")}

    empty = {k: [] for k in ("mean", "std", "min", "max")}
    obs = stats("obs") if schema.obs_dim else empty
    action = empty if schema.discrete else stats("action")
    reward = stats("reward")
    norm = Normalization(
        **{f"obs_{k}": v for k, v in obs.items()},
        **{f"action_{k}": v for k, v in action.items()},
        **{f"reward_{k}": v[0] for k, v in reward.items()},
        num_actions=int(schema.action_space["n"]) if schema.discrete else 0,
    )
    if store.mode == "a":
        store.set_attr("normalization", {**key, "split": split_key or {}, "train_episodes": len(train),
                                         "stats": norm.to_dict()})
    return norm


# ---------------------------------------------------------------------------------------- episodes
_warned_short: set[tuple[str, int]] = set()


def usable_episodes(
    store: TrajectoryStore, positions: Sequence[int], window: int
) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) rows of the given episodes that hold at least one window; warns once about the rest."""
    table = store.episodes()
    pos = np.asarray(positions, np.int64)
    starts = table["start"].to_numpy(np.int64)[pos]
    lengths = table["length"].to_numpy(np.int64)[pos]
    keep = lengths >= window
    if not keep.all() and (store.path, window) not in _warned_short:
        _warned_short.add((store.path, window))
        warnings.warn(
            f"{store.path}: {int((~keep).sum())} of {len(pos)} episodes have fewer than window={window} rows "
            f"(shortest {int(lengths.min())}); they are skipped",
            stacklevel=2,
        )
    return starts[keep], lengths[keep]


def eval_starts(starts: np.ndarray, lengths: np.ndarray, window: int, max_windows: int) -> np.ndarray:
    """A fixed set of window start rows: back-to-back non-overlapping windows per episode, evenly thinned
    to at most `max_windows`."""
    parts = [s + np.arange(0, n - window + 1, window) for s, n in zip(starts, lengths, strict=True)]
    found = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)
    if len(found) > max_windows:
        found = found[np.unique(np.linspace(0, len(found) - 1, max_windows).round().astype(np.int64))]
    return found


# ------------------------------------------------------------------------------------------- cache
class ChunkCache:
    """Whole chunks of the step variables a Batch needs, held in `capacity` fixed slots.

    Slot k holds rows [k*C, (k+1)*C) of each buffer; `slot_of[chunk]` says where a chunk lives, so a
    window spanning chunks in any two slots is gathered with one fancy index per variable.
    """

    def __init__(self, store: TrajectoryStore, capacity: int, num_rows: int) -> None:
        self.store = store
        self.chunk = int(store.attrs["chunk_steps"])
        self.num_rows = num_rows
        self.capacity = capacity
        self.variables = [v for v in WINDOW_VARS if store.has(v)]
        self.buffers: dict[str, np.ndarray] = {}
        for v in self.variables:
            arr = store.array(v)
            if arr.chunks[0] != self.chunk:
                raise ValueError(f"{store.path}: array '{v}' has chunks {arr.chunks}; expected {self.chunk}")
            # np.empty does not touch the pages: resident memory grows only as slots are filled.
            self.buffers[v] = np.empty((capacity * self.chunk, *arr.shape[1:]), arr.dtype)
        self.slot_of = np.full(-(-num_rows // self.chunk), -1, np.int64)
        self.chunk_in = np.full(capacity, -1, np.int64)
        self.stamp = np.zeros(capacity, np.int64)
        self.clock = 0
        self.chunks_read = 0
        # Dry mode keeps the bookkeeping (which chunk sits in which slot) but reads nothing: a resumed
        # sampler replays its rotations this way and then `reload`s only the chunks it ends up holding.
        self.dry = False
        local = not is_url(store.path)
        self.run_chunks = LOCAL_RUN_CHUNKS if local else REMOTE_RUN_CHUNKS

    @staticmethod
    def chunk_bytes(store: TrajectoryStore) -> int:
        """Bytes one chunk of every window variable occupies in the cache."""
        total = 0
        for v in WINDOW_VARS:
            if store.has(v):
                arr = store.array(v)
                total += int(np.prod(arr.shape[1:], dtype=np.int64)) * arr.dtype.itemsize
        return total * int(store.attrs["chunk_steps"])

    @property
    def resident(self) -> np.ndarray:
        return np.sort(self.chunk_in[self.chunk_in >= 0])

    @property
    def free(self) -> int:
        return int((self.chunk_in < 0).sum())

    def evict(self, chunks: np.ndarray) -> None:
        chunks = np.asarray(chunks, np.int64)
        slots = self.slot_of[chunks]
        slots = slots[slots >= 0]
        self.chunk_in[slots] = -1
        self.slot_of[chunks] = -1

    def load(self, chunks: np.ndarray, protect: np.ndarray | None = None) -> None:
        """Make `chunks` resident, evicting the least recently used chunks outside `protect` if needed."""
        chunks = np.unique(np.asarray(chunks, np.int64))
        self.clock += 1
        present = self.slot_of[chunks]
        self.stamp[present[present >= 0]] = self.clock
        missing = chunks[present < 0]
        if not len(missing):
            return
        if len(missing) > self.free:
            keep = np.union1d(chunks, protect if protect is not None else [])
            candidates = np.flatnonzero((self.chunk_in >= 0) & ~np.isin(self.chunk_in, keep))
            candidates = candidates[np.argsort(self.stamp[candidates], kind="stable")]
            need = len(missing) - self.free
            if need > len(candidates):
                raise RuntimeError(f"chunk cache of {self.capacity} slots cannot hold {len(chunks)} chunks")
            self.evict(self.chunk_in[candidates[:need]])
        free = list(np.flatnonzero(self.chunk_in < 0))
        slots = np.array([free.pop(0) for _ in missing], np.int64)
        self.chunk_in[slots] = missing
        self.slot_of[missing] = slots
        self.stamp[slots] = self.clock
        if not self.dry:
            self._read(missing)

    def reload(self) -> None:
        """Read every resident chunk into its slot (after a dry replay placed them without reading)."""
        self._read(self.resident)

    def _read(self, chunks: np.ndarray) -> None:
        """Fill the slots of `chunks` (already assigned) from the store."""
        # Runs of consecutive chunks are read with one zarr call per variable, `run_chunks` at a time.
        cuts = np.flatnonzero(np.diff(chunks) != 1) + 1
        for run in np.split(chunks, cuts) if len(chunks) else []:
            for i in range(0, len(run), self.run_chunks):
                part = run[i : i + self.run_chunks]
                a, b = int(part[0]) * self.chunk, min((int(part[-1]) + 1) * self.chunk, self.num_rows)
                for v in self.variables:
                    data = self.store.read_rows(v, a, b)
                    for j, slot in enumerate(self.slot_of[part]):
                        rows = data[j * self.chunk : (j + 1) * self.chunk]
                        self.buffers[v][slot * self.chunk : slot * self.chunk + len(rows)] = rows
                self.chunks_read += len(part)

    def gather(self, starts: np.ndarray, window: int) -> dict[str, np.ndarray]:
        """Windows [s, s+window) for each start s, all of whose chunks must be resident: (B, T, …) arrays."""
        rows = starts[:, None] + np.arange(window)  # (B, T)
        chunk = rows // self.chunk
        slot = self.slot_of[chunk]
        if (slot < 0).any():
            raise RuntimeError("window sampler bug: a window touches a chunk that is not resident")
        idx = slot * self.chunk + (rows - chunk * self.chunk)
        return {v: buf[idx] for v, buf in self.buffers.items()}


def to_batch(arrays: dict[str, np.ndarray], store: TrajectoryStore) -> Batch:
    """Physical-unit Batch: last-row action and reward (NaN / the Discrete fill) set to 0."""
    schema = store.schema
    is_last = arrays["is_last"]
    action = arrays["action"]
    if schema.discrete:
        action = action[..., 0].astype(np.int64)  # (B, T)
    action[is_last] = 0
    reward = arrays["reward"]
    reward[is_last] = 0.0
    b, t = reward.shape
    return Batch.from_numpy({
        "obs": arrays["obs"] if "obs" in arrays else np.zeros((b, t, 0), np.float32),
        "action": action,
        "reward": reward,
        "terminated": arrays["terminated"],
        "is_first": arrays["is_first"],
        "is_last": is_last,
        "image": arrays.get("image"),
    })


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


def _chunk_span(window: int, chunk: int) -> int:
    """The most chunks one window can touch."""
    return -(-(window - 1) // chunk) + 1


# ------------------------------------------------------------------------------------------ samplers
class WindowSampler:
    """An endless stream of random windows (Batch objects) from the given episodes, read chunk-wise.

    If every chunk the episodes touch fits `cache_bytes`, they are loaded once. Otherwise the chunks are
    cut into blocks of a few adjacent chunks (random cut points each pass, so windows over a block edge
    are not left out for good); each pass shuffles the blocks, stream `stream` of `num_streams` takes
    every num_streams-th block, the cache is filled with blocks, about `reuse` windows per loaded row
    are drawn from the resident windows, then the oldest half of the blocks is evicted and replaced.

    Positions and resuming: when everything is resident, batch `p` is a pure function of (seed, p): the
    streams share one draw of `num_streams * batch_size` windows per position and stream `s` takes slice
    `s`, so S streams of B windows draw exactly what one stream of S*B would (`arrays_at`). A rotating
    sampler is sequential; `skip(n)` replays n batches (rotations included, without reading their data)
    so a resumed run continues the same stream.
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
        stream: int = 0,
        num_streams: int = 1,
        reuse: float = 1.0,
    ) -> None:
        if len(starts) == 0:
            raise ValueError(f"{store.path}: no episode holds a window of {window} rows; nothing to sample")
        self.store, self.window, self.batch_size, self.reuse = store, window, batch_size, reuse
        self.stream, self.num_streams = stream, num_streams
        self.seed = [int(seed)] if isinstance(seed, int | np.integer) else [int(s) for s in seed]
        self.rng = np.random.default_rng([*self.seed, 1, stream])
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
        span = _chunk_span(window, c)
        self.rotating = capacity < len(self.needed)
        if self.rotating and capacity < 2 * span:
            raise ValueError(
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
        rng = np.random.default_rng([*self.seed, 0, self.passes])  # shared by all streams: a partition
        self.passes += 1
        offset = int(rng.integers(self.block))
        cuts = np.arange(offset or self.block, len(self.needed), self.block)
        blocks = np.split(self.needed, cuts)
        order = rng.permutation(len(blocks))
        mine = order[self.stream :: self.num_streams] if len(blocks) >= self.num_streams else order
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
            raise RuntimeError(f"{self.store.path}: stream {self.stream} found no windows in its blocks")
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
            starts = self.starts_at(self.drawn, self.stream, self.num_streams)
        self.drawn += 1
        return self.cache.gather(starts, self.window)

    def skip(self, n: int) -> None:
        """Advance the stream by `n` batches as if they had been drawn (resuming a run).

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


class FixedWindows:
    """A fixed, ordered set of windows (validation / test), batched; stream `stream` of `num_streams` takes
    every num_streams-th batch. Chunks are loaded in order and the least recently used ones evicted."""

    def __init__(
        self,
        store: TrajectoryStore,
        starts: np.ndarray,
        *,
        window: int,
        batch_size: int,
        cache_bytes: int = 512 << 20,
        stream: int = 0,
        num_streams: int = 1,
    ) -> None:
        self.store, self.window, self.batch_size = store, window, batch_size
        self.starts = np.sort(np.asarray(starts, np.int64))
        self.stream, self.num_streams = stream, num_streams
        c = int(store.attrs["chunk_steps"])
        self.chunk = c
        span = _chunk_span(window, c)
        chunk_bytes = ChunkCache.chunk_bytes(store)
        touched = [np.arange(s // c, (s + window - 1) // c + 1) for s in self.starts]
        needed = len(np.unique(np.concatenate(touched))) if touched else 0
        capacity = min(int(cache_bytes // chunk_bytes), max(needed, span))
        if capacity < span:
            raise ValueError(
                f"{store.path}: cache_bytes={cache_bytes} is below one window's {span * chunk_bytes} B"
            )
        num_rows = int(self.starts.max()) + window if len(self.starts) else 0
        self.cache = ChunkCache(store, capacity, num_rows)

    def __len__(self) -> int:
        return -(-len(self.starts) // self.batch_size)

    def _gather(self, starts: np.ndarray) -> dict[str, np.ndarray]:
        parts, group, chunks = [], [], np.zeros(0, np.int64)
        for s in starts:
            mine = np.arange(s // self.chunk, (s + self.window - 1) // self.chunk + 1)
            union = np.union1d(chunks, mine)
            if len(union) > self.cache.capacity and group:
                self.cache.load(chunks)
                parts.append(self.cache.gather(np.asarray(group), self.window))
                group, union = [], mine
            group.append(s)
            chunks = union
        self.cache.load(chunks)
        parts.append(self.cache.gather(np.asarray(group), self.window))
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def __iter__(self) -> Iterator[Batch]:
        for b in range(self.stream, len(self), self.num_streams):
            starts = self.starts[b * self.batch_size : (b + 1) * self.batch_size]
            yield to_batch(self._gather(starts), self.store)
