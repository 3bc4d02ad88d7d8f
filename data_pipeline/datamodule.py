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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipeline.batch import Batch, Normalization
from data_pipeline.schema import StoreSchema
from data_pipeline.store import StoreLockedError, TrajectoryStore
from data_pipeline.store.paths import is_url
from data_pipeline.windows import (
    FixedWindows,
    WindowSampler,
    eval_starts,
    normalization_for,
    split_episodes,
    to_batch,
    usable_episodes,
)


def _stream() -> tuple[int, int, int, int, int, int]:
    """(stream, num_streams, worker, num_workers, rank, world): one stream per DataLoader worker of every rank."""
    info = get_worker_info()
    worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return rank * num_workers + worker, world * num_workers, worker, num_workers, rank, world


@dataclass
class TrainPosition:
    """Where a training run stands in the window stream: the next batch is batch `batch` of epoch `epoch`.

    `epoch_batches` is how many batches an epoch took (`batches_per_epoch`, or less with
    `limit_train_batches`); only a rotating sampler (store larger than the cache) needs it, to replay.
    """

    epoch: int = 0
    batch: int = 0
    epoch_batches: int = 0

    def normalized(self) -> TrainPosition:
        """A finished epoch's end is the start of the next one."""
        if self.epoch_batches and self.batch >= self.epoch_batches:
            return TrainPosition(self.epoch + 1, 0, self.epoch_batches)
        return self


class WindowDataset(IterableDataset):
    """Whole batches of windows (collated in numpy; use `DataLoader(..., batch_size=None)`).

    Each process (DataLoader worker) opens the store itself and reads it through its own chunk cache of
    `cache_bytes / num_workers`. Training yields `num_batches` batches per epoch, dealt round-robin to the
    workers. When the episodes fit the cache, batch j of epoch e is a pure function of
    (seed, e * num_batches + j, rank): resuming at any position is exact for any worker count, and the
    ranks of a DDP run split one global batch. A store larger than the cache is sampled by a sequential
    rotating stream per (rank, worker); resuming replays it (exact with num_workers=0). Evaluation yields
    the fixed windows `eval_starts` in order, batches dealt round-robin to the workers; every DDP rank
    evaluates all of them (equal step counts on all ranks, and the metrics of a single process).
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
        # The position the next epoch (the next __iter__ in this process) starts at. Each process
        # (the main one, or each persistent worker) advances its own copy one epoch per __iter__.
        self.start = TrainPosition(0, 0, num_batches)
        self._replayed = False  # a rotating stream has been advanced to `start` in this process
        self._state: tuple[int, Any] | None = None  # (pid, sampler) of the process that built it

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_state": None}  # a worker builds its own store handle and cache

    def __len__(self) -> int:
        if self.eval_windows is not None:
            return -(-len(self.eval_windows) // self.batch_size)
        return self.num_batches

    def resume_at(self, position: TrainPosition) -> None:
        """Start the next epoch at `position` (set before the loader's workers start)."""
        self.start = position.normalized()
        self._replayed = False
        self._state = None  # a sampler that already drew batches would replay from the wrong place

    def _sampler(self) -> WindowSampler | FixedWindows:
        if self._state is not None and self._state[0] == os.getpid():
            return self._state[1]
        stream, num_streams, worker, num_workers, _, _ = _stream()
        store = TrajectoryStore.open(self.path, storage_options=self.storage_options)
        budget = self.cache_bytes // num_workers
        if self.eval_windows is not None:
            # Every DDP rank evaluates all windows (split over its workers only): ranks must take the same
            # number of steps (each DDP forward is a collective), and the metrics equal one process's.
            sampler: WindowSampler | FixedWindows = FixedWindows(
                store, self.eval_windows, window=self.window, batch_size=self.batch_size, cache_bytes=budget,
                stream=worker, num_streams=num_workers)
        else:
            sampler = WindowSampler(
                store, self.starts, self.lengths, window=self.window, batch_size=self.batch_size,
                cache_bytes=budget, seed=self.seed, stream=stream, num_streams=num_streams)
        self._state = (os.getpid(), sampler)
        return sampler

    def __iter__(self) -> Iterator[Batch]:
        sampler = self._sampler()
        if isinstance(sampler, FixedWindows):
            yield from sampler
            return
        _, _, worker, num_workers, rank, world = _stream()
        epoch, first, epoch_batches = self.start.epoch, self.start.batch, self.start.epoch_batches
        self.start = TrainPosition(epoch + 1, 0, self.num_batches)
        # Batches first, first + 1, … of the epoch go to workers 0, 1, … in turn (the loader's order).
        mine = range(first + worker, self.num_batches, num_workers)
        if sampler.rotating:
            if not self._replayed:
                sampler.skip(self._replay_count(epoch, first, epoch_batches, worker, num_workers))
                self._replayed = True
            for _ in mine:
                yield to_batch(sampler.next_arrays(), sampler.store)
        else:
            for j in mine:
                yield to_batch(sampler.arrays_at(epoch * self.num_batches + j, rank, world), sampler.store)

    def _replay_count(self, epoch: int, first: int, epoch_batches: int, worker: int, num_workers: int) -> int:
        """Batches this worker's rotating stream drew before batch `first` of `epoch`, each earlier epoch
        having taken `epoch_batches` batches (fewer than `num_batches` under `limit_train_batches`)."""
        per_epoch = len(range(worker, min(epoch_batches or self.num_batches, self.num_batches), num_workers))
        return epoch * per_epoch + len(range(worker, first, num_workers))


class EpochDataLoader(DataLoader):
    """The DataLoader of a WindowDataset, resumable through Lightning's stateful-loader interface.

    `state_dict()` is the `TrainPosition` of the next batch training will take: from the Trainer's progress
    when `position` is set (the DataModule does that: the loader itself runs ahead of training by the
    prefetched batches), else from the batches this loader has yielded. `load_state_dict` makes the next
    epoch start there. With non-persistent workers it also tells the dataset a new epoch began.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position: Callable[[], TrainPosition | None] | None = None
        self._yielded = TrainPosition(0, 0, len(self.dataset) if isinstance(self.dataset, WindowDataset) else 0)
        self._epochs = 0

    def __iter__(self) -> Any:
        if self._epochs:  # the previous epoch ended (or was cut short): count from the next one
            self._yielded = TrainPosition(self._yielded.epoch + 1, 0, self._yielded.epoch_batches)
        self._epochs += 1
        batches = super().__iter__()
        dataset = self.dataset
        if isinstance(dataset, WindowDataset) and self.num_workers > 0 and not self.persistent_workers:
            # Fresh workers took their copy of the dataset just now; the next epoch's copies start later.
            dataset.start = TrainPosition(dataset.start.epoch + 1, 0, dataset.num_batches)
        return self._count(batches)

    def _count(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            self._yielded = TrainPosition(self._yielded.epoch, self._yielded.batch + 1, self._yielded.epoch_batches)
            yield batch

    def state_dict(self) -> dict[str, Any]:
        if not isinstance(self.dataset, WindowDataset) or self.dataset.eval_windows is not None:
            return {}
        position = (self.position() if self.position is not None else None) or self._yielded
        return {**asdict(position.normalized()), "seed": self.dataset.seed, "num_workers": self.num_workers}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state or not isinstance(self.dataset, WindowDataset):
            return
        position = TrainPosition(int(state["epoch"]), int(state["batch"]), int(state["epoch_batches"]))
        if state.get("seed", self.dataset.seed) != self.dataset.seed:
            warnings.warn(f"resuming with data.sample_seed={self.dataset.seed}; the checkpoint used "
                          f"{state['seed']}, so the windows differ from the interrupted run's", stacklevel=2)
        self.dataset.resume_at(position)
        self._yielded = position
        self._epochs = 0


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
        if not is_url(path):  # object stores have no lock to respect
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
        loader = self._loader(WindowDataset(
            self.store_path, starts, lengths, window=self.window, batch_size=self.batch_size,
            cache_bytes=self.cache_bytes, seed=self.sample_seed, num_batches=self.batches_per_epoch,
            storage_options=self.storage_options))
        loader.position = self._trained_position
        return loader

    def _trained_position(self) -> TrainPosition | None:
        """The next batch training takes, from the Trainer's progress (None without a fitting Trainer).

        A checkpoint saved at the end of training batch i of epoch e resumes at batch i + 1; one saved in the
        middle of batch i (the non-finite-loss guard's) at batch i; one saved after an epoch at the next.
        """
        trainer = self.trainer
        if trainer is None or trainer.state.fn != "fit":
            return None
        loop = trainer.fit_loop
        epochs = loop.epoch_progress.current
        total = trainer.num_training_batches
        epoch_batches = int(total) if total != float("inf") else self.batches_per_epoch
        if epochs.processed >= epochs.started:  # no epoch in progress
            return TrainPosition(epochs.started, 0, epoch_batches)
        batches = loop.epoch_loop.batch_progress.current.processed
        return TrainPosition(epochs.started - 1, batches, epoch_batches).normalized()

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
