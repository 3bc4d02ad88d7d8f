"""The episode table (dimension `episode`): its rows, the commit status, and the one home of episode
lookup by position or id.

A table row is committed when its `episode_status` is COMMITTED; the status column is written last,
so every other column of a committed row is complete. Committed rows never change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import zarr

from data_pipeline.schema import COMMITTED, EPISODE_VARS
from data_pipeline.store.layout import array_of


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


def committed_count(group: zarr.Group) -> int:
    """Leading table rows whose status is COMMITTED."""
    status = np.asarray(array_of(group, "episode_status")[:])
    bad = np.flatnonzero(status != COMMITTED)
    return int(bad[0]) if bad.size else len(status)


def read_table(group: zarr.Group, n: int) -> pd.DataFrame:
    """The first `n` table rows (the committed ones, when `n` is `committed_count`)."""
    return table_frame({name: np.asarray(array_of(group, name)[:n]) for name in EPISODE_VARS[:-1]})


def rows_of(group: zarr.Group, n_episodes: int) -> int:
    """Rows along `step` taken by the first `n_episodes` table rows."""
    if n_episodes == 0:
        return 0
    start = array_of(group, "episode_start")[n_episodes - 1]
    length = array_of(group, "episode_length")[n_episodes - 1]
    return int(np.asarray(start)) + int(np.asarray(length))


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
