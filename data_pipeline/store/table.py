"""The episode table (dimension `episode`): its rows, the commit status, and the one home of episode
lookup by position or id.

A table row is committed when its `episode_status` is COMMITTED; the status column is written last,
so every other column of a committed row is complete. Committed rows never change.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import zarr
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from data_pipeline.schema import COMMITTED, EPISODE_VARS
from data_pipeline.store.layout import array_of
from data_pipeline.store.reader import read_checked


@dataclass(frozen=True)
class TableRow:
    """One row of the episode table, as a writer commits it."""

    id: str
    start: int
    """First row of the episode along `step`."""
    length: int
    """Rows of the episode (transitions + 1)."""
    source: str
    seed: int
    start_time: int
    """ns since the epoch."""


def table_columns(rows: Sequence[TableRow]) -> dict[str, np.ndarray]:
    """The table arrays' new values for `rows`, by variable name (status: committed)."""
    return {
        "episode_id": np.array([r.id for r in rows], dtype=object),
        "episode_start": np.array([r.start for r in rows], np.int64),
        "episode_length": np.array([r.length for r in rows], np.int64),
        "episode_source": np.array([r.source for r in rows], dtype=object),
        "episode_seed": np.array([r.seed for r in rows], np.int64),
        "episode_start_time": np.array([r.start_time for r in rows], np.int64),
        "episode_status": np.full(len(rows), COMMITTED, np.int8),
    }


def table_frame(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """The table as `TrajectoryStore.episodes()` returns it: id, start, length, source, seed, start_time."""
    table = pd.DataFrame({name.removeprefix("episode_"): columns[name] for name in EPISODE_VARS[:-1]})
    table["id"] = table["id"].astype(str)
    table["source"] = table["source"].astype(str)
    return table


def published_count(group: zarr.Group) -> int:
    """Table rows in the consolidated metadata, which each commit publishes after its status write: these
    rows were committed, so their status chunks must exist (0 when nothing was published)."""
    raw = sync(group.store.get(f"{group.path}/zarr.json".lstrip("/"), prototype=default_buffer_prototype()))
    try:
        meta = json.loads(raw.to_bytes()) if raw is not None else {}
        return int(meta["consolidated_metadata"]["metadata"]["episode_status"]["shape"][0])
    except (ValueError, KeyError, TypeError, IndexError):
        return 0  # never published, or a store written before publishing: nothing to hold against it


def committed_count(group: zarr.Group, where: str) -> int:
    """Leading table rows whose status is COMMITTED.

    Status chunks of published rows must exist (a missing one is damage, StoreCorruptionError); past
    them, a status chunk missing after a crash mid-commit reads as uncommitted.
    """
    arr = array_of(group, "episode_status")
    published = min(published_count(group), arr.shape[0])
    status = read_checked(arr, "episode_status", 0, published, where=where, dim="episode")
    if arr.shape[0] > published:
        try:
            status = np.r_[status, np.asarray(arr[published:])]
        except Exception:  # a chunk that fails its checksum is damage wherever it lies
            read_checked(arr, "episode_status", published, arr.shape[0], where=where, dim="episode")
            raise
    bad = np.flatnonzero(status != COMMITTED)
    return int(bad[0]) if bad.size else len(status)


def read_table(group: zarr.Group, n: int, where: str) -> pd.DataFrame:
    """The first `n` table rows (the committed ones, when `n` is `committed_count`)."""
    return table_frame({name: read_checked(array_of(group, name), name, 0, n, where=where, dim="episode")
                        for name in EPISODE_VARS[:-1]})


def rows_of(group: zarr.Group, n_episodes: int, where: str) -> int:
    """Rows along `step` taken by the first `n_episodes` table rows."""
    if n_episodes == 0:
        return 0
    start, length = (read_checked(array_of(group, name), name, n_episodes - 1, n_episodes, where=where,
                                  dim="episode")[0] for name in ("episode_start", "episode_length"))
    return int(start) + int(length)


def end_of(table: pd.DataFrame) -> int:
    """The committed end along `step`: the row after the table's last episode."""
    return int(table["start"].iloc[-1] + table["length"].iloc[-1]) if len(table) else 0


def episode_index(ids: np.ndarray | Sequence[str], key: int | str | np.integer, *, where: str) -> int:
    """The table position of a committed episode given by position (0..n-1) or by id.

    `ids` are the committed episode ids in table order and `where` names the store in messages.
    Raises KeyError for an unknown id and IndexError for a position outside 0..n-1 (no Python-style
    negative positions: a position names one row of the table, whatever its length).
    """
    ids = np.asarray(ids)
    n = len(ids)
    if isinstance(key, str):
        match = np.flatnonzero(ids == key)
        if not match.size:
            raise KeyError(f"{where} has no committed episode with id {key!r}")
        return int(match[0])
    position = int(key)
    if not 0 <= position < n:
        held = f"{n} committed episodes (0..{n - 1})" if n else "no committed episodes"
        raise IndexError(f"episode {position} out of range; {where} has {held}")
    return position
