"""The chunk cache: whole chunks of the step variables a Batch needs, in fixed slots under a byte budget.

Windows are gathered from resident chunks with one vectorized index per variable; the samplers decide
which chunks are resident (docs/windows.md).
"""

from __future__ import annotations

import numpy as np

from data_pipeline.errors import InputError
from data_pipeline.store import TrajectoryStore
from data_pipeline.store.paths import is_url

# What a Batch needs from the store; `time` and `truncated` are not part of a training window.
WINDOW_VARS = ("obs", "image", "action", "reward", "terminated", "is_first", "is_last")
# Chunks read per zarr call. One zarr call decodes its chunks concurrently in zarr's threads, which hides
# object-store latency but leaves per-thread allocator slack (measured: ~20 MiB over the budget at 4
# chunks vs ~8 MiB at 1 on local disk), so local stores read one chunk at a time.
LOCAL_RUN_CHUNKS = 1
REMOTE_RUN_CHUNKS = 4


def chunk_span(window: int, chunk: int) -> int:
    """The most chunks one window of `window` rows can touch, with chunks of `chunk` rows."""
    return -(-(window - 1) // chunk) + 1


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
                raise InputError(f"{store.path}: array '{v}' has chunks {arr.chunks}; expected {self.chunk}")
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
