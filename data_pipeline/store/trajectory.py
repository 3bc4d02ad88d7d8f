"""The trajectory store (DESIGN contract 1): a Zarr v3 group that plain `xarray.open_zarr` can read.

    store = TrajectoryStore.create("p.zarr", schema)
    store.append([episode, ...])                       # data rows first, the table rows last (the commit)
    with store.episode_writer(source="plc-3") as w:    # or row by row into an open episode
        w.add(obs=..., action=..., reward=...)
    ds = TrajectoryStore.open("p.zarr").to_xarray()

One writer per store, enforced with an OS file lock beside a local store. Every write starts from
the committed end, and opening a store for writing after a crash truncates the uncommitted tail, so
committed episodes are never damaged. The format is written up in docs/data-format.md; the layout,
table, reader and writer modules beside this one hold the parts this class puts together.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from data_pipeline.schema import Episode, StoreSchema
from data_pipeline.store import layout, reader, table
from data_pipeline.store.episode_writer import EpisodeWriter
from data_pipeline.store.lock import WriterLock, acquire_writer_lock, release_writer_lock
from data_pipeline.store.paths import local_path
from data_pipeline.store.table import TableRow
from data_pipeline.store.writer import StoreWriter, pack_episodes, remove_partial_files, validated_ids
from data_pipeline.validate import DataValidationError

StorageOptions = dict[str, Any] | None


class TrajectoryStore:
    """Create, open, append to and read a trajectory store. See docs/data-format.md."""

    def __init__(self, path: str, group: zarr.Group, mode: str, storage_options: StorageOptions) -> None:
        self.path = path
        self.mode = mode
        self.storage_options = storage_options
        self._group = group
        self.schema = layout.read_schema(group, path)
        # Every array the schema implies, each metadata file read once: a missing or damaged one is named now.
        self._members = {name for name in layout.array_names(self.schema) if layout.array_of(group, name) is not None}
        self._arrays: dict[str, zarr.Array] = {}  # for reads; refreshed when a read goes past its shape
        self._table_cache: pd.DataFrame | None = None
        self._writer = StoreWriter(group) if mode == "a" else None
        self._writer_lock: WriterLock | None = None
        self._open_episode: EpisodeWriter | None = None
        self._closed = False

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        schema: StoreSchema,
        *,
        chunk_bytes: int = layout.DEFAULT_CHUNK_BYTES,
        chunk_steps: int | None = None,
        overwrite: bool = False,
        storage_options: StorageOptions = None,
    ) -> TrajectoryStore:
        """Create an empty store for `schema` and open it for writing (the writer lock is taken first).

        `chunk_steps` overrides the rows per chunk that `chunk_bytes` implies (tests use tiny chunks).
        """
        path = str(path)
        writer_lock = acquire_writer_lock(path)
        try:
            group = layout.create_store_group(path, schema, chunk_steps or layout.chunk_steps_for(schema, chunk_bytes),
                                       overwrite=overwrite, storage_options=storage_options)
        except BaseException:
            release_writer_lock(writer_lock)
            raise
        store = cls(path, group, "a", storage_options)
        store._writer_lock = writer_lock
        store._require_writer().publish()
        return store

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], mode: str = "r", storage_options: StorageOptions = None
    ) -> TrajectoryStore:
        """Open a store for reading (`mode="r"`) or appending (`mode="a"`, takes the writer lock).

        Opening for appending truncates an uncommitted tail left by a crashed writer. A reader sees
        only committed episodes, also while a writer is appending.
        """
        path = str(path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        local = local_path(path)
        # No zarr.json and no table either: nothing of ours here (a missing group zarr.json beside the
        # arrays is damage, named by open_store_group).
        if local is not None and not (local / "zarr.json").exists() and not (local / "episode_status").exists():
            raise FileNotFoundError(f"{path}: no trajectory store here (no zarr.json)")
        writer_lock = acquire_writer_lock(path) if mode == "a" else None
        try:
            group = layout.open_store_group(path, mode, storage_options)
            store = cls(path, group, mode, storage_options)
        except FileNotFoundError as err:
            release_writer_lock(writer_lock)
            raise FileNotFoundError(f"{path}: no trajectory store here ({err})") from err
        except reader.StoreCorruptionError as err:
            release_writer_lock(writer_lock)
            if local is not None and layout.unfinished_store(local):
                raise reader.StoreCorruptionError(
                    f"{path}: this twinworld store's creation did not finish ({err}); it holds no data. Create "
                    "it again: `record` / `ingest` to the same --out (without --append), or TrajectoryStore.create"
                ) from err
            raise
        except BaseException:
            release_writer_lock(writer_lock)
            raise
        if mode == "a":
            store._writer_lock = writer_lock
            try:
                store.recover()
            except BaseException:
                store.close()
                raise
        return store

    def close(self) -> None:
        """Drop an unfinished episode of `episode_writer()` and release the writer lock (if held)."""
        if self._open_episode is not None and not self._closed:
            with contextlib.suppress(Exception):
                self._open_episode.abort()
        release_writer_lock(self._writer_lock)
        self._writer_lock = None
        self._closed = True

    def __enter__(self) -> TrajectoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            release_writer_lock(self._writer_lock)

    # ------------------------------------------------------------------ what the store holds
    def array(self, name: str) -> zarr.Array:
        """The raw zarr array of a variable (reads past the committed end are the caller's concern)."""
        return layout.array_of(self._group, name)

    def has(self, name: str) -> bool:
        return name in self._members or name in self._group

    @property
    def step_vars(self) -> list[str]:
        return layout.step_vars_of(self._members)

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._group.attrs)

    def episodes(self) -> pd.DataFrame:
        """The committed episode table: id, start, length (rows), source, seed, start_time.

        A reader checks the status column on every call (a writer may have committed more); a writer
        caches the table.
        """
        if self._table_cache is not None and self.mode == "a":
            return self._table_cache
        n = table.committed_count(self._group, self.path)
        if self._table_cache is None or len(self._table_cache) != n:  # committed rows never change
            self._table_cache = table.read_table(self._group, n, self.path)
        return self._table_cache

    @property
    def num_episodes(self) -> int:
        return len(self.episodes())

    @property
    def num_steps(self) -> int:
        """Committed rows along `step`."""
        return table.end_of(self.episodes())

    def num_steps_for(self, n_episodes: int) -> int:
        """Rows along `step` taken by the first `n_episodes` table rows."""
        return table.rows_of(self._group, n_episodes, self.path)

    def episode_index(self, key: int | str) -> int:
        """The table position of a committed episode given by position (0..n-1) or id.

        The one home of episode lookup: KeyError names an unknown id, IndexError a position out of range.
        """
        return table.episode_index(self.episodes()["id"].to_numpy(), key, where=self.path)

    def episode_rows(self, keys: Sequence[int | str]) -> list[tuple[int, int]]:
        """Rows [start, stop) along `step` of committed episodes given by position or id, in the order given."""
        committed = self.episodes()
        ids = committed["id"].to_numpy()
        starts = committed["start"].to_numpy(np.int64)
        stops = starts + committed["length"].to_numpy(np.int64)
        positions = [table.episode_index(ids, key, where=self.path) for key in keys]
        return [(int(starts[i]), int(stops[i])) for i in positions]

    def fingerprint(self) -> str:
        """A short hash of the schema and the committed episodes (ids and lengths): dataset lineage."""
        return reader.fingerprint(self.schema, self.episodes())

    # ------------------------------------------------------------------ writing
    def append(
        self,
        episodes: Episode | Sequence[Episode],
        *,
        source: str | None = None,
        min_transitions: int = 1,
    ) -> list[str]:
        """Validate then append whole episodes in one write; return their ids.

        All episodes are validated before anything is written; the Episode objects are not modified.
        Episodes without an id get a random one; without `time`, rows are `dt` apart from
        `start_time` (default: now). Data rows are written first and the table rows last, the status
        column last of all, so a crash leaves only an uncommitted tail.
        """
        writer = self._require_writer()
        if self._open_episode is not None and not self._open_episode.finished:
            raise RuntimeError(f"{self.path}: an episode is being written (episode_writer()); "
                               "commit it before append()")
        if isinstance(episodes, Episode):
            episodes = [episodes]
        if not episodes:
            return []
        if writer.dirty:
            self.discard_uncommitted()  # leftovers of a write that failed in this process
        ids = validated_ids(self.schema, episodes, set(self.episodes()["id"]), source=source,
                            min_transitions=min_transitions)
        rows, table_rows = pack_episodes(self.schema, episodes, ids, self.step_vars, self.num_steps)
        self.write_rows(rows)
        self.commit_episodes(table_rows)
        return ids

    def episode_writer(
        self,
        *,
        episode_id: str | None = None,
        source: str = "",
        seed: int = -1,
        start_time: int | None = None,
        flush_rows: int = 4096,
        min_transitions: int = 1,
    ) -> EpisodeWriter:
        """Open an episode to add rows to one at a time; committed on `commit()` or leaving the `with`.

        At most `flush_rows` rows stay in memory; older ones are written (uncommitted) as they come.
        """
        writer = self._require_writer()
        if self._open_episode is not None and not self._open_episode.finished:
            raise RuntimeError(f"{self.path}: an episode is already being written")
        if writer.dirty:
            self.discard_uncommitted()
        if episode_id is not None and episode_id in set(self.episodes()["id"]):
            raise DataValidationError(
                f"{source or '<stream>'}: episode_id {episode_id!r} is already in the store; expected a new id"
            )
        self._open_episode = EpisodeWriter(self, episode_id=episode_id, source=source, seed=seed,
                                           start_time=start_time, flush_rows=flush_rows,
                                           min_transitions=min_transitions)
        return self._open_episode


    def set_attr(self, key: str, value: Any) -> None:
        """Set a group attribute (JSON-able), e.g. normalization statistics."""
        writer = self._require_writer()
        self._group.attrs[key] = value
        writer.publish()

    # --------------------------------------------- the writer API (append and EpisodeWriter use it)
    def write_rows(self, rows: dict[str, np.ndarray]) -> None:
        """Append encoded data rows (`layout.episode_rows`) along `step`: uncommitted, unseen by readers,
        until `commit_episodes` writes their table rows. Rows are not validated here."""
        self._require_writer().write_rows(rows)

    def commit_episodes(self, rows: Sequence[TableRow]) -> None:
        """Commit table rows for data rows already written: every column, then `episode_status` (the
        commit point), then the consolidated metadata that plain xarray readers see."""
        writer = self._require_writer()
        columns = table.table_columns(rows)
        writer.write_table(columns)
        writer.write_status(columns)
        if self._table_cache is not None:  # committed rows never change: extend the cached table
            self._table_cache = pd.concat([self._table_cache, table.table_frame(columns)], ignore_index=True)
        writer.publish()

    def discard_uncommitted(self) -> int:
        """Cut every array back to the committed end, so the next write starts there; return the rows dropped."""
        writer = self._require_writer()
        self._table_cache = None
        n = table.committed_count(self._group, self.path)
        return writer.truncate(self.step_vars, n, self.num_steps_for(n))

    def recover(self) -> int:
        """Truncate an uncommitted tail left by a crashed writer; return the rows dropped.

        Also removes the temporary files a write killed mid-flight leaves behind and republishes
        the consolidated metadata. Runs on every open for writing.
        """
        dropped = self.discard_uncommitted()
        local = local_path(self.path)
        if local is not None:
            remove_partial_files(local)
        self._require_writer().publish()  # a writer killed between its commit and its publish left an older one
        return dropped

    def _require_writer(self) -> StoreWriter:
        if self._writer is None:
            raise PermissionError(f"{self.path} is open read-only; open it with mode='a' to write")
        if self._closed:
            raise PermissionError(f"{self.path}: this store handle is closed; open it again with mode='a'")
        return self._writer

    # ------------------------------------------------------------------ reading
    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of one step variable.

        A chunk that fails its crc32c checksum or cannot be decoded raises StoreCorruptionError
        naming the array and the chunk, never plausible-looking numbers.
        """
        arr = self._arrays.get(name)
        if arr is None or arr.shape[0] < stop:
            arr = self._arrays[name] = layout.array_of(self._group, name)
        return reader.read_checked(arr, name, start, stop, where=self.path)

    def read_episode(self, which: int | str) -> Episode:
        """One committed episode by position or id (its last row holds the NaN / -1 fill)."""
        committed = self.episodes()
        row = committed.iloc[table.episode_index(committed["id"].to_numpy(), which, where=self.path)]
        a, b = int(row["start"]), int(row["start"] + row["length"])

        rows = {name: self.read_rows(name, a, b) for name in ("obs", "image", "action", "reward", "terminated",
                                                               "truncated", "time") if self.has(name)}
        return Episode(
            **rows,
            episode_id=str(row["id"]),
            source=str(row["source"]),
            seed=int(row["seed"]),
            start_time=int(row["start_time"]),
        )

    def iter_episodes(self) -> Iterator[Episode]:
        for i in range(self.num_episodes):
            yield self.read_episode(i)

    def to_xarray(self) -> xr.Dataset:
        """The committed part of the store as a lazy xarray Dataset (no dask).

        Works while a writer appends or after a crash, when variables disagree in length.
        """
        committed = self.episodes()
        return reader.open_committed(self.path, self._group, self.step_vars, len(committed),
                                     table.end_of(committed), self.storage_options)

    def select(self, episodes: Sequence[int | str]) -> xr.Dataset:
        """Committed episodes by position or id, concatenated along `step` with their table rows.

        `episode_start` keeps counting rows of the whole store.
        """
        committed = self.episodes()
        ids = committed["id"].to_numpy()
        positions = [table.episode_index(ids, e, where=self.path) for e in episodes]
        return self.to_xarray().isel(step=reader.select_rows(committed, positions), episode=positions)
