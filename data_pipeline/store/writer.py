"""The write side of a trajectory store: uncommitted data rows, the commit, and cutting an uncommitted
tail back off (docs/data-format.md, "Commit protocol").

A commit (`TrajectoryStore.commit_episodes`) is `StoreWriter.write_table` (every table column but the
status), then `StoreWriter.write_status` (the commit point), then `publish` (the consolidated metadata).
tests/data_pipeline/test_store_writers.py kills a writer inside each step to prove that committed episodes
survive any crash; keep the two steps apart.
"""

from __future__ import annotations

import time as _time
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import zarr

from data_pipeline.schema import EPISODE_VARS, Episode, StoreSchema
from data_pipeline.store.codecs import consolidate
from data_pipeline.store.layout import PARTIAL_FILE, array_of, episode_rows
from data_pipeline.store.table import TableRow
from data_pipeline.validate import validate_episode


class StoreWriter:
    """Appends to the arrays of one store opened for writing (the caller holds the writer lock)."""

    def __init__(self, group: zarr.Group) -> None:
        self._group = group
        # Write handles, kept open: looking an array up reloads its metadata (~1 ms each).
        self._handles: dict[str, zarr.Array] = {}
        self.dirty = True
        """Rows may lie past the committed end (a write failed or was aborted in this process)."""

    def _writable(self, name: str) -> zarr.Array:
        # Chunks that hold only fill values are written too, so a missing chunk file always means
        # damage (`validate` checks) rather than "all False / all NaN here".
        if name not in self._handles:
            self._handles[name] = array_of(self._group, name).with_config({"write_empty_chunks": True})
        return self._handles[name]

    def write_rows(self, rows: dict[str, np.ndarray]) -> None:
        """Append data rows along `step` (uncommitted: readers do not see them yet)."""
        self.dirty = True  # until the commit succeeds
        for name, data in rows.items():
            self._writable(name).append(data, axis=0)

    def write_table(self, columns: dict[str, np.ndarray]) -> None:
        """Append every table column but `episode_status` (still uncommitted)."""
        self.dirty = True
        for name in EPISODE_VARS[:-1]:
            self._writable(name).append(columns[name])

    def write_status(self, columns: dict[str, np.ndarray]) -> None:
        """Append the `episode_status` column: the commit point of the rows written before."""
        self._writable("episode_status").append(columns["episode_status"])
        self.dirty = False

    def truncate(self, step_vars: Sequence[str], n_episodes: int, end: int) -> int:
        """Cut the step arrays back to `end` rows and the table to `n_episodes`; return the rows dropped."""
        dropped = 0
        changed = False
        self._handles.clear()  # after a failure their metadata may be stale: reload once
        for name in step_vars:
            arr = self._writable(name)
            if arr.shape[0] != end:
                dropped = max(dropped, arr.shape[0] - end)
                arr.resize((end, *arr.shape[1:]))
                changed = True
        for name in EPISODE_VARS:
            arr = self._writable(name)
            if arr.shape[0] != n_episodes:
                arr.resize((n_episodes,))
                changed = True
        self.dirty = False
        if changed:
            self.publish()
        return dropped

    def publish(self) -> None:
        """Consolidate the metadata: plain `xarray.open_zarr(path)` then sees this committed snapshot.

        Written once per commit in one atomic file write, so the snapshot never shows a partial append.
        """
        consolidate(self._group)


def remove_partial_files(local: Path) -> None:
    """Delete the temporary files of writes killed between zarr's write and its rename."""
    for partial in [p for p in local.rglob("*.partial") if PARTIAL_FILE.search(p.name)]:
        partial.unlink(missing_ok=True)


def validated_ids(schema: StoreSchema, episodes: Sequence[Episode], existing_ids: set[str], *,
                  source: str | None, min_transitions: int) -> list[str]:
    """Validate every episode before any is written; return their ids (given, or new random ones)."""
    existing = set(existing_ids)
    ids = []
    for ep in episodes:
        validate_episode(ep, schema, source=source, min_transitions=min_transitions, existing_ids=existing)
        ids.append(ep.episode_id if ep.episode_id is not None else uuid.uuid4().hex[:12])
        existing.add(ids[-1])
    return ids


def pack_episodes(schema: StoreSchema, episodes: Sequence[Episode], ids: Sequence[str], step_vars: Sequence[str],
                  start: int) -> tuple[dict[str, np.ndarray], list[TableRow]]:
    """The data rows and table rows of whole (validated) episodes appended from row `start` on.

    Without `time`, rows are `dt` apart from `start_time` (default: now).
    """
    dt_ns = round(schema.dt * 1e9)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in step_vars}
    table = []
    for ep, ep_id in zip(episodes, ids, strict=True):
        n = ep.num_rows
        if ep.time is None:
            t0 = ep.start_time if ep.start_time is not None else _time.time_ns()
            time = t0 + dt_ns * np.arange(n, dtype=np.int64)
        else:
            time = np.asarray(ep.time, np.int64)
        rows = episode_rows(schema, action=ep.action, reward=ep.reward, obs=ep.obs, image=ep.image, time=time,
                            first=True, last=True, terminated=bool(ep.terminated[-1]),
                            truncated=bool(ep.truncated[-1]))
        for name in parts:
            parts[name].append(rows[name])
        start_time = ep.start_time if ep.start_time is not None else int(time[0])
        table.append(TableRow(id=ep_id, start=start, length=n, source=ep.source, seed=ep.seed,
                              start_time=start_time))
        start += n
    return {name: np.concatenate(p) for name, p in parts.items()}, table
