"""The trajectory store (DESIGN contract 1) and the storage primitives every Zarr writer shares.

| module | job |
| --- | --- |
| `trajectory` | `TrajectoryStore`: create / open / append / read a store (puts the parts below together) |
| `layout` | the arrays, dims, chunk sizes and attrs of a store; how an episode's rows are encoded |
| `table` | the episode table: its rows, the commit status, episode lookup by position or id |
| `writer` | uncommitted data rows, the two-step commit, cutting an uncommitted tail off |
| `reader` | rows with damage detection (missing chunk, checksum), the committed part as xarray, the fingerprint |
| `damage` | every damaged metadata file and chunk of a store, listed (`validate`) |
| `episode_writer` | `EpisodeWriter`: one episode written row by row (live sources) |
| `paths` | the local-path test (file:// and local:// are local), a store's real location, the lock file's name |
| `lock` | the one-writer lock (`filelock`) |
| `overwrite` | what a writer may replace: only a twinworld store of the same kind, and only with `--overwrite` |
| `codecs` | Zarr compressors and metadata consolidation |
| `files` | the atomic file write |
"""

from data_pipeline.store.episode_writer import EpisodeWriter
from data_pipeline.store.layout import CHANNEL_COORDS
from data_pipeline.store.lock import StoreLockedError
from data_pipeline.store.overwrite import OutputExistsError, check_output
from data_pipeline.store.paths import lock_path_of
from data_pipeline.store.reader import StoreCorruptionError
from data_pipeline.store.table import TableRow, episode_index
from data_pipeline.store.trajectory import TrajectoryStore

__all__ = ["CHANNEL_COORDS", "EpisodeWriter", "OutputExistsError", "StoreCorruptionError", "StoreLockedError",
           "TableRow", "TrajectoryStore", "check_output", "episode_index", "lock_path_of"]
