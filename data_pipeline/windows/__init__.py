"""Training windows (DESIGN contract 2): the episode split, its normalization, chunk-aware samplers, the
evaluation windows and the Lightning DataModule.

    split = split_episodes(store, seed=0)                     # {"train": [...], "val": [...], "test": [...]}
    norm = normalization_for(store, split["train"], split_key={"seed": 0})
    sampler = WindowSampler(store, *usable_episodes(store, split["train"], 64), window=64, batch_size=64)
    batch = next(iter(sampler))                               # a Batch of (64, 64, …) windows

The samplers read whole chunks (every step variable a Batch needs) into a `ChunkCache` of fixed slots
under a byte budget, gather many windows from the resident chunks with one vectorized index, then rotate
which chunks are resident. docs/windows.md explains the scheme and its guarantees.

| module | job |
| --- | --- |
| `batch.py` | `Batch` (what models receive), `Normalization`, `to_batch` (store rows → Batch) |
| `split.py` | the deterministic train / val / test split by episode; the window fitted to the episodes; data used |
| `normalization.py` | per-channel statistics of the train split, cached in the store's attrs |
| `cache.py` | `ChunkCache`: whole chunks in fixed slots under a byte budget, windows gathered in one index |
| `sampler.py` | `WindowSampler`: random training windows, rotating through a store larger than the cache |
| `fixed.py` | evaluation windows, the one home of the rule: `eval_starts`, `FixedWindows`, `eval_windows` |
| `dataset.py` | the IterableDataset per (rank, worker) shard and its resumable DataLoader |
| `datamodule.py` | `WindowDataModule`, the epoch size (`epoch_batches`), `split_eval_windows`, `test_store_windows` |
"""

from data_pipeline.windows.batch import Batch, Normalization, to_batch
from data_pipeline.windows.cache import LOCAL_RUN_CHUNKS, REMOTE_RUN_CHUNKS, WINDOW_VARS, ChunkCache, chunk_span
from data_pipeline.windows.datamodule import WindowDataModule, epoch_batches, split_eval_windows, test_store_windows
from data_pipeline.windows.dataset import EpochDataLoader, LoaderShard, TrainPosition, WindowDataset
from data_pipeline.windows.fixed import FixedWindows, eval_starts, eval_windows
from data_pipeline.windows.normalization import normalization_for
from data_pipeline.windows.sampler import WindowSampler
from data_pipeline.windows.split import SPLITS, DataUsage, fitting_window, split_episodes, usable_episodes

__all__ = [
    "LOCAL_RUN_CHUNKS",
    "REMOTE_RUN_CHUNKS",
    "SPLITS",
    "WINDOW_VARS",
    "Batch",
    "ChunkCache",
    "DataUsage",
    "EpochDataLoader",
    "FixedWindows",
    "LoaderShard",
    "Normalization",
    "TrainPosition",
    "WindowDataModule",
    "WindowDataset",
    "WindowSampler",
    "chunk_span",
    "epoch_batches",
    "eval_starts",
    "eval_windows",
    "fitting_window",
    "normalization_for",
    "split_episodes",
    "split_eval_windows",
    "test_store_windows",
    "to_batch",
    "usable_episodes",
]
