"""The Lightning DataModule of training windows (DESIGN contract 2).

    dm = WindowDataModule(store="p.zarr", window=32, batch_size=64)
    dm.schema, dm.normalization          # available before the Trainer starts (lazy, cheap)
    trainer.fit(model, datamodule=dm)

With LightningCLI the arguments are `--data.store`, `--data.window`, …; see docs/windows.md.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any

import lightning as L
import numpy as np

from data_pipeline.errors import InputError
from data_pipeline.schema import StoreSchema
from data_pipeline.store import StoreLockedError, TrajectoryStore
from data_pipeline.store.paths import is_url
from data_pipeline.validate import check_schema_compatible
from data_pipeline.windows.batch import Batch, Normalization
from data_pipeline.windows.dataset import EpochDataLoader, TrainPosition, WindowDataset
from data_pipeline.windows.fixed import eval_starts, eval_windows
from data_pipeline.windows.normalization import normalization_for
from data_pipeline.windows.split import DataUsage, fitting_window, split_episodes, usable_episodes

EPOCH_BATCHES = (50, 1000)
"""Bounds of an automatic epoch (`batches_per_epoch=None`), in batches per training process: at least 50, so
a small store validates after a few passes rather than after every batch (and early stopping's patience
counts enough steps to mean something); at most 1000, so a huge store still validates (and checkpoints
its best weights) every 1000 steps."""


def epoch_batches(transitions: int, window: int, batch_size: int, processes: int = 1) -> int:
    """Batches per process for one pass over `transitions` training transitions, within `EPOCH_BATCHES`.

    A window of `window` rows trains on `window - 1` transitions, so a pass is transitions / (batch × (window
    − 1)) global batches, shared by `processes` DDP ranks. 2,000 transitions give the floor (50 batches: many
    passes); 2 million give the ceiling (1000 batches: a fraction of a pass between validations).
    """
    per_batch = batch_size * max(window - 1, 1) * max(processes, 1)
    low, high = EPOCH_BATCHES
    return int(min(max(-(-transitions // per_batch), low), high))


@dataclass(frozen=True)
class _StoreFacts:
    """What the DataModule reads from the store once: schema, split, normalization, usable episodes."""

    schema: StoreSchema
    split: dict[str, np.ndarray]
    """Episode positions of "train", "val" and "test"."""
    fingerprint: str
    normalization: Normalization
    episodes: dict[str, tuple[np.ndarray, np.ndarray]]
    """(start, length) rows of each split's episodes that hold a training window."""
    window: int
    """Rows per training window: the requested one, shortened to fit the train episodes (`fitting_window`)."""
    usage: DataUsage
    """How much of the train split the windows cover."""
    longest: dict[str, int]
    """Rows of each split's longest episode (0 for an empty split): the longest evaluation window it holds."""


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
        batches_per_epoch: int | None = None,
        val_batches: int = 20,
        sample_seed: int = 0,
        storage_options: dict[str, Any] | None = None,
        window_coverage: float = 0.9,
        test_store: str | None = None,
        test_stride: int | None = None,
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
            batches_per_epoch: Random training batches per epoch (per training process); None (default): one
                pass over the train split's transitions, at least 50 and at most 1000 batches (`epoch_batches`),
                so the budget follows the data and early stopping sees a validation often enough.
            val_batches: Most batches of fixed windows for validation and for test.
            sample_seed: Base seed of the training-window RNG streams.
            storage_options: fsspec options for a URL store (credentials stay out of the checkpoint).
            window_coverage: Shorten `window` where needed so that at least this fraction of the train
                episodes holds one (never below 2 rows); 0 keeps `window` and skips shorter episodes.
            test_store: A separate store to test on (`train.py test`): all its episodes replace the test split,
                so a model is scored on the user's own held-out data; its schema must match the store's.
            test_stride: Evaluation windows of the test store start every this many rows from each episode's
                first row (default: back to back, one window length apart).
        """
        super().__init__()
        if window < 1 or batch_size < 1:
            raise InputError(f"data: window={window} and batch_size={batch_size} must be ≥ 1")
        if test_stride is not None and test_stride < 1:
            raise InputError(f"data: test_stride={test_stride} must be ≥ 1 (rows between evaluation starts)")
        if not 0 <= window_coverage <= 1:
            raise InputError(f"data: window_coverage={window_coverage} must lie in [0, 1]")
        self.save_hyperparameters(ignore=["storage_options"])
        self.store_path, self.requested_window, self.batch_size = str(store), window, batch_size
        self.window_coverage = window_coverage
        self.split_seed, self.val_fraction, self.test_fraction = split_seed, val_fraction, test_fraction
        self.cache_bytes = int(cache_mb * (1 << 20))
        self.num_workers, self.batches_per_epoch = num_workers, batches_per_epoch
        self.val_batches = val_batches
        self.sample_seed, self.storage_options = sample_seed, storage_options
        self.test_store, self.test_stride = test_store, test_stride
        self._facts: _StoreFacts | None = None

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
        self._store_facts()
        return self

    def _store_facts(self) -> _StoreFacts:
        if self._facts is not None:
            return self._facts
        store = self._open_for_cache()
        try:
            split = split_episodes(store, self.split_seed, self.val_fraction, self.test_fraction)
            key = {"seed": self.split_seed, "val_fraction": self.val_fraction,
                   "test_fraction": self.test_fraction}
            lengths = store.episodes()["length"].to_numpy(np.int64)
            train_lengths = lengths[split["train"]]
            window = fitting_window(train_lengths, self.requested_window, self.window_coverage)
            self._facts = _StoreFacts(
                schema=store.schema,
                split=split,
                fingerprint=store.fingerprint(),
                normalization=normalization_for(store, split["train"], split_key=key),
                episodes={name: usable_episodes(store, pos, window) for name, pos in split.items()},
                window=window,
                usage=DataUsage.of(train_lengths, window, self.requested_window),
                longest={name: int(lengths[pos].max()) if len(pos) else 0 for name, pos in split.items()},
            )
        finally:
            store.close()
        return self._facts

    def prepare_data(self) -> None:
        self.prepare()

    def setup(self, stage: str | None = None) -> None:
        self.prepare()
        if stage == "test" and self.test_store:
            self.test_store_episodes()  # an incompatible or unreadable test store stops here, in one line

    def test_store_episodes(self) -> tuple[np.ndarray, np.ndarray]:
        """(start, length) rows of every committed episode of `test_store`, after checking that a model of this
        store runs on it (`check_schema_compatible`, use "model")."""
        if not self.test_store:
            raise InputError("data: no test_store given")
        with TrajectoryStore.open(self.test_store, storage_options=self.storage_options) as store:
            where = f"--data.test_store {self.test_store}"
            check_schema_compatible(store.schema, self.schema, use="model", where=where)
            table = store.episodes()
            return table["start"].to_numpy(np.int64), table["length"].to_numpy(np.int64)

    @property
    def schema(self) -> StoreSchema:
        return self._store_facts().schema

    @property
    def normalization(self) -> Normalization:
        return self._store_facts().normalization

    @property
    def split(self) -> dict[str, np.ndarray]:
        """Episode positions of "train", "val" and "test"."""
        return self._store_facts().split

    @property
    def fingerprint(self) -> str:
        return self._store_facts().fingerprint

    @property
    def window(self) -> int:
        """Rows per training window: `window`, shortened to fit the train episodes (see `window_coverage`)."""
        return self._store_facts().window

    @property
    def epoch_batches(self) -> int:
        """Training batches per epoch (per process): `batches_per_epoch`, or one pass over the train split."""
        if self.batches_per_epoch is not None:
            return self.batches_per_epoch
        trainer = self.trainer
        processes = int(trainer.world_size) if trainer is not None else 1
        return epoch_batches(self.usage.transitions_used, self.window, self.batch_size, processes)

    @property
    def usage(self) -> DataUsage:
        """How much of the train split training sees (`data_used: 93% of transitions (412/443 episodes)`)."""
        return self._store_facts().usage

    def longest_episode(self, split: str) -> int:
        """Rows of the longest episode of a split ("train", "val", "test"); 0 when the split is empty."""
        return self._store_facts().longest[split]

    # ------------------------------------------------------------------ loaders
    def _loader(self, dataset: WindowDataset) -> EpochDataLoader:
        return EpochDataLoader(dataset, batch_size=None, num_workers=self.num_workers,
                               persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> EpochDataLoader:
        starts, lengths = self._store_facts().episodes["train"]
        if not len(starts):
            raise InputError(f"{self.store_path}: no train episode holds a window of {self.window} rows")
        loader = self._loader(WindowDataset(
            self.store_path, starts, lengths, window=self.window, batch_size=self.batch_size,
            cache_bytes=self.cache_bytes, seed=self.sample_seed, num_batches=self.epoch_batches,
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
        # Lightning declares `current` as its base tracker; the fit loop's trackers count started and processed.
        epochs: Any = loop.epoch_progress.current
        total = trainer.num_training_batches
        epoch_batches = int(total) if total != float("inf") else self.epoch_batches
        if epochs.processed >= epochs.started:  # no epoch in progress
            return TrainPosition(epochs.started, 0, epoch_batches)
        batch_progress: Any = loop.epoch_loop.batch_progress.current
        batches = batch_progress.processed
        return TrainPosition(epochs.started - 1, batches, epoch_batches).normalized()

    def _eval_loader(self, name: str) -> EpochDataLoader:
        path, stride = self.store_path, None
        if name == "test" and self.test_store:
            (starts, lengths), path, stride = self.test_store_episodes(), self.test_store, self.test_stride
            keep = lengths >= self.window
            starts, lengths = starts[keep], lengths[keep]
        else:
            starts, lengths = self._store_facts().episodes[name]
        windows = eval_starts(starts, lengths, self.window, self.val_batches * self.batch_size, stride=stride)
        if not len(windows):
            warnings.warn(f"{path}: the {name} split holds no window of {self.window} rows", stacklevel=3)
        return self._loader(WindowDataset(
            path, starts, lengths, window=self.window, batch_size=self.batch_size,
            cache_bytes=self.cache_bytes, fixed_starts=windows, storage_options=self.storage_options))

    def val_dataloader(self) -> EpochDataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> EpochDataLoader:
        return self._eval_loader("test")


def test_store_windows(datamodule: WindowDataModule, length: int, max_windows: int) -> tuple[Batch | None, int]:
    """Evaluation windows of `length` rows from every episode of the DataModule's `test_store`, starting every
    `test_stride` rows (default `length`) from each episode's first row: the first `max_windows` of them, and
    how many there are in all."""
    starts, lengths = datamodule.test_store_episodes()
    found = len(eval_starts(starts, lengths, length, 2**62, spread=False, stride=datamodule.test_stride))
    with TrajectoryStore.open(str(datamodule.test_store), storage_options=datamodule.storage_options) as store:
        windows = eval_windows(store, np.arange(store.num_episodes), length, max_windows, stride=datamodule.test_stride)
    return windows, found


def split_eval_windows(datamodule: WindowDataModule, split: str, length: int, max_windows: int = 256) -> Batch | None:
    """`eval_windows` over one split ("train", "val", "test") of a WindowDataModule's store."""
    with TrajectoryStore.open(datamodule.store_path, storage_options=datamodule.storage_options) as store:
        return eval_windows(store, datamodule.split[split], length, max_windows)
