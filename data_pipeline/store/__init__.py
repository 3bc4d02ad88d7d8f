"""The trajectory store (DESIGN contract 1) and the storage primitives every Zarr writer shares.

| module | job |
| --- | --- |
| `trajectory` | `TrajectoryStore`: create / open / append / read a Zarr v3 trajectory store |
| `paths` | the local-path test, the lock file's name |
| `lock` | the one-writer lock (`filelock`) |
| `codecs` | Zarr compressors and metadata consolidation |
| `files` | the atomic file write |
"""

from data_pipeline.store.lock import StoreLockedError
from data_pipeline.store.paths import lock_path_of
from data_pipeline.store.trajectory import CHANNEL_COORDS, EpisodeStream, StoreCorruptionError, TrajectoryStore

__all__ = ["CHANNEL_COORDS", "EpisodeStream", "StoreCorruptionError", "StoreLockedError", "TrajectoryStore",
           "lock_path_of"]
