"""The Lightning DataModule of training windows (DESIGN contract 2), and the IterableDataset behind it.

    dm = WindowDataModule(store="p.zarr", window=32, batch_size=64)
    dm.schema, dm.normalization          # available before the Trainer starts (lazy, cheap)
    trainer.fit(model, datamodule=dm)

With LightningCLI the arguments are `--data.store`, `--data.window`, …; see docs/windows.md.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipeline.batch import Batch, Normalization
from data_pipeline.schema import StoreSchema
from data_pipeline.store import StoreLockedError, TrajectoryStore
from data_pipeline.windows import (
    FixedWindows,
    WindowSampler,
    eval_starts,
    normalization_for,
    split_episodes,
    to_batch,
    usable_episodes,
)


def _stream() -> tuple[int, int, int, int]:
    """(stream, num_streams, worker, num_workers): one RNG stream per DataLoader worker of every rank."""
    info = get_worker_info()
    worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return rank * num_workers + worker, world * num_workers, worker, num_workers


class WindowDataset(IterableDataset):
    """Whole batches of windows (collated in numpy; use `DataLoader(..., batch_size=None)`).

    Each process (DataLoader worker) opens the store itself and reads it through its own chunk cache of
    `cache_bytes / num_workers`. Training draws `num_batches` random batches per epoch split over the
    workers, from an RNG stream fixed by (seed, epoch, rank, worker); evaluation yields the fixed windows
    `eval_starts` in order, batches dealt round-robin to the workers (so the loader's order is fixed).
    """

    def __init__(
        self,
        store: str,
        starts: np.ndarray,
        lengths: np.ndarray,
        *,
        window: int,
        batch_size: int,
        cache_bytes: int,
        seed: int = 0,
        num_batches: int = 100,
        eval_windows: np.ndarray | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.path, self.storage_options = store, storage_options
        self.starts, self.lengths = np.asarray(starts, np.int64), np.asarray(lengths, np.int64)
        self.window, self.batch_size, self.cache_bytes = window, batch_size, cache_bytes
        self.seed, self.num_batches, self.eval_windows = seed, num_batches, eval_windows
        self.epoch = 0  # bumped by EpochDataLoader in the main process before workers start
        self._state: tuple[int, Any] | None = None  # (pid, sampler) of the process that built it

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_state": None}  # a worker builds its own store handle and cache

    def __len__(self) -> int:
        if self.eval_windows is not None:
            return -(-len(self.eval_windows) // self.batch_size)
        return self.num_batches

    def _sampler(self) -> WindowSampler | FixedWindows:
        if self._state is not None and self._state[0] == os.getpid():
            return self._state[1]
        stream, num_streams, _, num_workers = _stream()
        store = TrajectoryStore.open(self.path, storage_options=self.storage_options)
        budget = self.cache_bytes // num_workers
        if self.eval_windows is not None:
            sampler: WindowSampler | FixedWindows = FixedWindows(
                store, self.eval_windows, window=self.window, batch_size=self.batch_size, cache_bytes=budget,
                stream=stream, num_streams=num_streams)
        else:
            sampler = WindowSampler(
                store, self.starts, self.lengths, window=self.window, batch_size=self.batch_size,
                cache_bytes=budget, seed=[self.seed, self.epoch], stream=stream, num_streams=num_streams)
        self._state = (os.getpid(), sampler)
        return sampler

    def __iter__(self) -> Iterator[Batch]:
        sampler = self._sampler()
        if isinstance(sampler, FixedWindows):
            yield from sampler
            return
        _, _, worker, num_workers = _stream()
        mine = self.num_batches // num_workers + (worker < self.num_batches % num_workers)
        for _ in range(mine):
            yield to_batch(sampler.next_arrays(), sampler.store)


class EpochDataLoader(DataLoader):
    """A DataLoader that tells its WindowDataset a new epoch began, so fresh (non-persistent) workers
    draw new windows each epoch instead of repeating the first epoch's."""

    def __iter__(self) -> Any:
        if isinstance(self.dataset, WindowDataset):
            self.dataset.epoch += 1
        return super().__iter__()


class WindowDataModule(L.LightningDataModule):
    """Training windows `(batch, time, …)` from a trajectory store, split by episode.

    `schema`, `normalization`, `split` and `fingerprint` are available right after construction (they are
    loaded lazily on first use), so a model can be built from them before the Trainer starts. The
    normalization is cached in the store's attrs when the store is local and no other writer holds it.
    """

    def __init__(
        self,
        store: str,
        window: int = 32,
        batch_size: int = 64,
        split_seed: int = 0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        cache_mb: float = 512.0,
        num_workers: int = 0,
        batches_per_epoch: int = 100,
        val_batches: int = 20,
        sample_seed: int = 0,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        """
        Args:
            store: Path or fsspec URL (file://, memory://, s3://, …) of the trajectory store.
            window: Rows (time steps) per training window.
            batch_size: Windows per batch.
            split_seed: Seed of the episode-level train / val / test split.
            val_fraction: Expected fraction of episodes in the validation split.
            test_fraction: Expected fraction of episodes in the test split.
            cache_mb: Memory budget (MiB) of the chunk caches of one training process, shared by its workers.
            num_workers: DataLoader worker processes (each opens the store itself).
            batches_per_epoch: Random training batches per epoch (per training process).
            val_batches: Most batches of fixed windows for validation and for test.
            sample_seed: Base seed of the training-window RNG streams.
            storage_options: fsspec options for a URL store (credentials stay out of the checkpoint).
        """
        super().__init__()
        if window < 1 or batch_size < 1:
            raise ValueError(f"data: window={window} and batch_size={batch_size} must be ≥ 1")
        self.save_hyperparameters(ignore=["storage_options"])
        self.store_path, self.window, self.batch_size = str(store), window, batch_size
        self.split_seed, self.val_fraction, self.test_fraction = split_seed, val_fraction, test_fraction
        self.cache_bytes = int(cache_mb * (1 << 20))
        self.num_workers, self.batches_per_epoch = num_workers, batches_per_epoch
        self.val_batches = val_batches
        self.sample_seed, self.storage_options = sample_seed, storage_options
        self._meta: dict[str, Any] | None = None

    # ------------------------------------------------------------------ metadata
    def _open_for_cache(self) -> TrajectoryStore:
        """The store open for writing when that is safe (local, unlocked, writable), else read-only."""
        path = self.store_path
        if "://" not in path or path.startswith("file://"):  # object stores have no lock to respect
            with contextlib.suppress(StoreLockedError, PermissionError, OSError):
                return TrajectoryStore.open(path, mode="a")
        return TrajectoryStore.open(path, storage_options=self.storage_options)

    def prepare(self) -> WindowDataModule:
        """Open the store, split its episodes and get the normalization (cached in the store if possible)."""
        if self._meta is not None:
            return self
        store = self._open_for_cache()
        try:
            split = split_episodes(store, self.split_seed, self.val_fraction, self.test_fraction)
            key = {"seed": self.split_seed, "val_fraction": self.val_fraction,
                   "test_fraction": self.test_fraction}
            self._meta = {
                "schema": store.schema,
                "split": split,
                "fingerprint": store.fingerprint(),
                "normalization": normalization_for(store, split["train"], split_key=key),
                "episodes": {name: usable_episodes(store, pos, self.window) for name, pos in split.items()},
            }
        finally:
            store.close()
        return self

    def prepare_data(self) -> None:
        self.prepare()

    def setup(self, stage: str | None = None) -> None:
        self.prepare()

    @property
    def schema(self) -> StoreSchema:
        return self.prepare()._meta["schema"]

    @property
    def normalization(self) -> Normalization:
        return self.prepare()._meta["normalization"]

    @property
    def split(self) -> dict[str, np.ndarray]:
        """Episode positions of "train", "val" and "test"."""
        return self.prepare()._meta["split"]

    @property
    def fingerprint(self) -> str:
        return self.prepare()._meta["fingerprint"]

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: WindowDataset) -> EpochDataLoader:
        return EpochDataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                               persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> EpochDataLoader:
        starts, lengths = self.prepare()._meta["episodes"]["train"]
        if not len(starts):
            raise ValueError(f"{self.store_path}: no train episode holds a window of {self.window} rows")
        return self._loader(WindowDataset(
            self.store_path, starts, lengths, window=self.window, batch_size=self.batch_size,
            cache_bytes=self.cache_bytes, seed=self.sample_seed, num_batches=self.batches_per_epoch,
            storage_options=self.storage_options))

    def _eval_loader(self, name: str) -> EpochDataLoader:
        starts, lengths = self.prepare()._meta["episodes"][name]
        windows = eval_starts(starts, lengths, self.window, self.val_batches * self.batch_size)
        if not len(windows):
            warnings.warn(f"{self.store_path}: the {name} split holds no window of {self.window} rows",
                          stacklevel=3)
        return self._loader(WindowDataset(
            self.store_path, starts, lengths, window=self.window, batch_size=self.batch_size,
            cache_bytes=self.cache_bytes, eval_windows=windows, storage_options=self.storage_options))

    def val_dataloader(self) -> EpochDataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> EpochDataLoader:
        return self._eval_loader("test")
