"""The IterableDataset of windows behind the DataModule, and its resumable DataLoader.

Each (DDP rank, DataLoader worker) is one shard of the sampling (`LoaderShard`); the dataset yields whole
batches collated in numpy, so loaders run with `batch_size=None`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_pipeline.store import TrajectoryStore
from data_pipeline.windows.batch import Batch, to_batch
from data_pipeline.windows.fixed import FixedWindows
from data_pipeline.windows.sampler import WindowSampler


@dataclass(frozen=True)
class LoaderShard:
    """Which part of the windows this process draws: DataLoader worker `worker` of `num_workers` on DDP rank
    `rank` of `world`, which is shard `rank * num_workers + worker` of `world * num_workers`."""

    worker: int = 0
    num_workers: int = 1
    rank: int = 0
    world: int = 1

    @property
    def shard(self) -> int:
        return self.rank * self.num_workers + self.worker

    @property
    def num_shards(self) -> int:
        return self.world * self.num_workers

    @classmethod
    def current(cls) -> LoaderShard:
        """The shard of the calling process (the main process counts as worker 0 of 1)."""
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
        return cls(worker, num_workers, rank, world)


@dataclass
class TrainPosition:
    """Where a training run stands in its training windows: the next batch is batch `batch` of epoch `epoch`.

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
    rotating sampler per (rank, worker) shard; resuming replays it (exact with num_workers=0). Evaluation
    (`fixed_starts` given) yields those fixed windows in order, batches dealt round-robin to the workers;
    every DDP rank evaluates all of them (equal step counts on all ranks, and the metrics of a single
    process).
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
        fixed_starts: np.ndarray | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.path, self.storage_options = store, storage_options
        self.starts, self.lengths = np.asarray(starts, np.int64), np.asarray(lengths, np.int64)
        self.window, self.batch_size, self.cache_bytes = window, batch_size, cache_bytes
        self.seed, self.num_batches, self.fixed_starts = seed, num_batches, fixed_starts
        # The position the next epoch (the next __iter__ in this process) starts at. Each process
        # (the main one, or each persistent worker) advances its own copy one epoch per __iter__.
        self.start = TrainPosition(0, 0, num_batches)
        self._replayed = False  # a rotating sampler has been advanced to `start` in this process
        # (pid, sampler) of the process that built it: a forked worker must not reuse its parent's.
        self._state: tuple[int, WindowSampler | FixedWindows] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_state": None}  # a worker builds its own store handle and cache

    def __len__(self) -> int:
        if self.fixed_starts is not None:
            return -(-len(self.fixed_starts) // self.batch_size)
        return self.num_batches

    def resume_at(self, position: TrainPosition) -> None:
        """Start the next epoch at `position` (set before the loader's workers start)."""
        self.start = position.normalized()
        self._replayed = False
        self._state = None  # a sampler that already drew batches would replay from the wrong place

    def _sampler(self) -> WindowSampler | FixedWindows:
        if self._state is not None and self._state[0] == os.getpid():
            return self._state[1]
        me = LoaderShard.current()
        store = TrajectoryStore.open(self.path, storage_options=self.storage_options)
        budget = self.cache_bytes // me.num_workers
        if self.fixed_starts is not None:
            # Every DDP rank evaluates all windows (split over its workers only): ranks must take the same
            # number of steps (each DDP forward is a collective), and the metrics equal one process's.
            sampler: WindowSampler | FixedWindows = FixedWindows(
                store, self.fixed_starts, window=self.window, batch_size=self.batch_size, cache_bytes=budget,
                shard=me.worker, num_shards=me.num_workers)
        else:
            sampler = WindowSampler(
                store, self.starts, self.lengths, window=self.window, batch_size=self.batch_size,
                cache_bytes=budget, seed=self.seed, shard=me.shard, num_shards=me.num_shards)
        self._state = (os.getpid(), sampler)
        return sampler

    def __iter__(self) -> Iterator[Batch]:
        sampler = self._sampler()
        if isinstance(sampler, FixedWindows):
            yield from sampler
            return
        me = LoaderShard.current()
        worker, num_workers = me.worker, me.num_workers
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
                yield to_batch(sampler.arrays_at(epoch * self.num_batches + j, me.rank, me.world), sampler.store)

    def _replay_count(self, epoch: int, first: int, epoch_batches: int, worker: int, num_workers: int) -> int:
        """Batches this worker's rotating sampler drew before batch `first` of `epoch`, each earlier epoch
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

    def __init__(self, dataset: WindowDataset, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)
        self.position: Callable[[], TrainPosition | None] | None = None
        self._yielded = TrainPosition(0, 0, len(dataset))
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
        if not isinstance(self.dataset, WindowDataset) or self.dataset.fixed_starts is not None:
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
