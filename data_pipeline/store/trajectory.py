"""The trajectory store (DESIGN contract 1): a Zarr v3 group that plain `xarray.open_zarr` can read.

    store = TrajectoryStore.create("p.zarr", schema)
    store.append([episode, ...])            # data rows first, the table rows last (the commit)
    with store.stream(source="plc-3") as s:  # or step by step into an open episode
        s.add(obs=..., action=..., reward=...)
    ds = TrajectoryStore.open("p.zarr").to_xarray()

One writer per store, enforced with an OS file lock beside a local store. Every write starts from
the committed end, and opening a store for writing after a crash truncates the uncommitted tail, so
committed episodes are never damaged. The format is written up in docs/data-format.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import time as _time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr

from data_pipeline.schema import (
    COMMITTED,
    DISCRETE_FILL,
    EPISODE_VARS,
    SCHEMA_VERSION,
    Episode,
    StoreSchema,
)
from data_pipeline.store.codecs import compressors, consolidate
from data_pipeline.store.lock import WriterLock, acquire_writer_lock, release_writer_lock
from data_pipeline.store.paths import local_path, zarr_path
from data_pipeline.validate import DataValidationError, validate_episode, validate_rows

DEFAULT_CHUNK_BYTES = 1 << 20  # ≥ 1 MiB per chunk along `step` (contract 1)
TABLE_CHUNK = 4096
STEP_ORDER = ("obs", "image", "action", "reward", "terminated", "truncated", "is_first", "is_last", "time")
CHANNEL_COORDS = ("obs_channel", "obs_unit", "action_channel", "action_unit")
# zarr's LocalStore writes each file to `<name>.<uuid hex>.partial` and renames it into place; a
# SIGKILL between the two leaves the temporary file behind.
_PARTIAL = re.compile(r"\.[0-9a-f]{32}\.partial$")

_LONG_NAMES = {
    "obs": "vector observation o_t",
    "image": "image observation o_t (uint8, height x width x color)",
    "action": "action a_t taken at o_t (NaN on an episode's last row)",
    "reward": "reward r_t that followed a_t (NaN on an episode's last row)",
    "terminated": "the episode ended in a terminal state (last row only)",
    "truncated": "the episode was cut short, e.g. by a time limit (last row only)",
    "is_first": "first row of an episode",
    "is_last": "last row of an episode (its final observation)",
    "time": "time of the row",
    "episode_id": "unique episode id",
    "episode_start": "first row of the episode along step",
    "episode_length": "rows of the episode (transitions + 1)",
    "episode_source": "where the episode came from (env id, file, stream)",
    "episode_seed": "reset seed, -1 when unknown",
    "episode_start_time": "start time, ns since 1970-01-01T00:00:00Z",
    "episode_status": "1 = committed; anything else is an unfinished write",
}


class StoreCorruptionError(RuntimeError):
    """A chunk failed its checksum or could not be decoded."""


def _step_var_dims(name: str) -> list[str]:
    return {
        "obs": ["step", "obs_channel"],
        "image": ["step", "height", "width", "color"],
        "action": ["step", "action_channel"],
    }.get(name, ["step"])


def _chunk_steps_for(schema: StoreSchema, chunk_bytes: int) -> int:
    """Rows per chunk: the widest step variable gets ≥ chunk_bytes per chunk (one length for all)."""
    image = int(np.prod(schema.image_shape)) if schema.image_shape else 0
    widest = max(image, 4 * schema.obs_dim, 8 * schema.action_dim, 8)
    return max(64 if image else 256, math.ceil(chunk_bytes / widest))


def _episode_rows(
    schema: StoreSchema,
    *,
    action: np.ndarray,
    reward: np.ndarray,
    obs: np.ndarray | None,
    image: np.ndarray | None,
    time: np.ndarray,
    first: bool,
    last: bool,
    terminated: bool = False,
    truncated: bool = False,
) -> dict[str, np.ndarray]:
    """The stored rows of a block of one episode (a whole episode when `first` and `last`)."""
    n = reward.shape[0]
    action = np.asarray(action).astype(np.int64 if schema.discrete else np.float32, copy=True)
    reward = np.asarray(reward).astype(np.float32, copy=True)
    flags = {name: np.zeros(n, bool) for name in ("terminated", "truncated", "is_first", "is_last")}
    flags["is_first"][0] = first
    if last:  # the final observation has no action and no reward (RLDS convention)
        action[-1] = DISCRETE_FILL if schema.discrete else np.nan
        reward[-1] = np.nan
        flags["is_last"][-1] = True
        flags["terminated"][-1] = terminated
        flags["truncated"][-1] = truncated
    rows = {
        "obs": None if obs is None else np.asarray(obs).astype(np.float32, copy=False),
        "image": image,
        "action": action,
        "reward": reward,
        "time": np.asarray(time).astype(np.int64, copy=False),
        **flags,
    }
    return {k: v for k, v in rows.items() if v is not None}


class TrajectoryStore:
    """Create, open, append to and read a trajectory store. See docs/data-format.md."""

    def __init__(self, path: str, group: zarr.Group, mode: str, storage_options: dict | None) -> None:
        self.path = path
        self.mode = mode
        self.storage_options = storage_options
        self._group = group
        self.schema = StoreSchema.from_attrs(dict(group.attrs["schema"]))
        self._writer_lock: WriterLock | None = None
        self._closed = False
        self._stream: EpisodeStream | None = None
        self._table_cache: pd.DataFrame | None = None
        self._members = set(group.array_keys())
        self._arrays: dict[str, zarr.Array] = {}  # for reads; refreshed when a read goes past its shape
        # Write handles, kept open: looking an array up reloads its metadata (~1 ms each).
        self._handles: dict[str, zarr.Array] = {}
        # Rows may lie past the committed end (a write failed or was aborted in this process).
        self._dirty = True

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        schema: StoreSchema,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        chunk_steps: int | None = None,
        overwrite: bool = False,
        storage_options: dict | None = None,
    ) -> TrajectoryStore:
        """Create an empty store for `schema` and open it for writing (the writer lock is taken first).

        `chunk_steps` overrides the rows per chunk that `chunk_bytes` implies (tests use tiny chunks).
        """
        path = str(path)
        writer_lock = acquire_writer_lock(path)
        try:
            local = local_path(path)
            if local is not None and local.exists() and any(local.iterdir()) and not overwrite:
                raise FileExistsError(
                    f"{path} already exists; pass overwrite=True (--overwrite) or choose another path"
                )
            group = zarr.open_group(zarr_path(path), mode="w" if overwrite else "w-", zarr_format=3,
                                    storage_options=storage_options)
            _create_arrays(group, schema, chunk_steps or _chunk_steps_for(schema, chunk_bytes))
        except BaseException:
            release_writer_lock(writer_lock)
            raise
        store = cls(path, group, "a", storage_options)
        store._writer_lock = writer_lock
        store._publish()
        return store

    @classmethod
    def open(
        cls, path: str | os.PathLike, mode: str = "r", storage_options: dict | None = None
    ) -> TrajectoryStore:
        """Open a store for reading (`mode="r"`) or appending (`mode="a"`, takes the writer lock).

        Opening for appending truncates an uncommitted tail left by a crashed writer. A reader sees
        only committed episodes, also while a writer is appending.
        """
        path = str(path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        local = local_path(path)
        if local is not None and not (local / "zarr.json").exists():
            raise FileNotFoundError(f"{path}: no trajectory store here (no zarr.json)")
        writer_lock = acquire_writer_lock(path) if mode == "a" else None
        try:
            # Not the consolidated metadata: it is a snapshot for plain xarray readers, and a writer
            # or a live reader needs the current array shapes.
            group = zarr.open_group(zarr_path(path), mode="r" if mode == "r" else "r+", zarr_format=3,
                                    storage_options=storage_options, use_consolidated=False)
            if "schema" not in group.attrs:
                raise DataValidationError(
                    f"{path}: zarr group has no 'schema' attribute; not a twinworld store"
                )
            version = str(group.attrs.get("schema_version", "?"))
            if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
                raise DataValidationError(
                    f"{path}: schema_version {version}; this twinworld reads {SCHEMA_VERSION}"
                )
            store = cls(path, group, mode, storage_options)
        except FileNotFoundError as err:
            release_writer_lock(writer_lock)
            raise FileNotFoundError(f"{path}: no trajectory store here ({err})") from err
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
        """Drop an unfinished streamed episode and release the writer lock (if held)."""
        if self._stream is not None and not self._closed:
            with contextlib.suppress(Exception):
                self._stream.abort()
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

    # ------------------------------------------------------------------ table
    def array(self, name: str) -> zarr.Array:
        """The raw zarr array of a variable (reads past the committed end are the caller's concern)."""
        return self._group[name]

    def has(self, name: str) -> bool:
        return name in self._members or name in self._group

    @property
    def step_vars(self) -> list[str]:
        return [n for n in STEP_ORDER if n in self._members]

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._group.attrs)

    def _committed_count(self) -> int:
        """Leading table rows whose status is COMMITTED.

        The status column is written last, so every other column of a committed row is complete.
        """
        status = self._group["episode_status"][:]
        bad = np.flatnonzero(status != COMMITTED)
        return int(bad[0]) if bad.size else len(status)

    def episodes(self) -> pd.DataFrame:
        """The committed episode table: id, start, length (rows), source, seed, start_time.

        A reader checks the status column on every call (a writer may have committed more); a writer
        caches the table.
        """
        if self._table_cache is not None and self.mode == "a":
            return self._table_cache
        n = self._committed_count()
        if self._table_cache is None or len(self._table_cache) != n:  # committed rows never change
            cols = {name.removeprefix("episode_"): self._group[name][:n] for name in EPISODE_VARS[:-1]}
            table = pd.DataFrame(cols)
            table["id"] = table["id"].astype(str)
            table["source"] = table["source"].astype(str)
            self._table_cache = table
        return self._table_cache

    @property
    def num_episodes(self) -> int:
        return len(self.episodes())

    @property
    def num_steps(self) -> int:
        """Committed rows along `step`."""
        return _end_of(self.episodes())

    def num_steps_for(self, n_episodes: int) -> int:
        """Rows along `step` taken by the first `n_episodes` table rows."""
        if n_episodes == 0:
            return 0
        start = int(self._group["episode_start"][n_episodes - 1])
        return start + int(self._group["episode_length"][n_episodes - 1])

    def fingerprint(self) -> str:
        """A short hash of the schema and the committed episodes (ids and lengths): dataset lineage."""
        table = self.episodes()
        h = hashlib.sha256(json.dumps(self.schema.to_attrs(), sort_keys=True, default=str).encode())
        h.update(table["id"].str.cat(sep=",").encode())
        h.update(np.ascontiguousarray(table["length"].to_numpy(np.int64)).tobytes())
        return h.hexdigest()[:16]

    def recover(self) -> int:
        """Truncate an uncommitted tail left by a crashed writer; return the rows dropped.

        Also removes the temporary files a write killed mid-flight leaves behind and republishes
        the consolidated metadata. Runs on every open for writing.
        """
        dropped = self._truncate_tail()
        local = local_path(self.path)
        if local is not None:
            for partial in [p for p in local.rglob("*.partial") if _PARTIAL.search(p.name)]:
                partial.unlink(missing_ok=True)
        self._publish()  # a writer killed between its commit and its publish left an older snapshot
        return dropped

    def _truncate_tail(self) -> int:
        """Cut every array back to the committed end, so the next write starts there."""
        self._require_writer()
        n = self._committed_count()
        end = self.num_steps_for(n)
        dropped = 0
        changed = False
        self._handles.clear()  # after a failure their metadata may be stale: reload once
        for name in self.step_vars:
            arr = self._writable(name)
            if arr.shape[0] != end:
                dropped = max(dropped, arr.shape[0] - end)
                arr.resize((end, *arr.shape[1:]))
                changed = True
        for name in EPISODE_VARS:
            arr = self._writable(name)
            if arr.shape[0] != n:
                arr.resize((n,))
                changed = True
        self._table_cache = None
        self._dirty = False
        if changed:
            self._publish()
        return dropped

    def _require_writer(self) -> None:
        if self.mode != "a":
            raise PermissionError(f"{self.path} is open read-only; open it with mode='a' to write")
        if self._closed:
            raise PermissionError(f"{self.path}: this store handle is closed; open it again with mode='a'")

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
        self._require_writer()
        if self._stream is not None:
            raise RuntimeError(f"{self.path}: an episode is being streamed; commit it before append()")
        if isinstance(episodes, Episode):
            episodes = [episodes]
        if not episodes:
            return []
        if self._dirty:
            self._truncate_tail()  # leftovers of a write that failed in this process
        existing = set(self.episodes()["id"])
        ids = []
        for ep in episodes:
            validate_episode(ep, self.schema, source=source, min_transitions=min_transitions,
                             existing_ids=existing)
            ids.append(ep.episode_id if ep.episode_id is not None else uuid.uuid4().hex[:12])
            existing.add(ids[-1])
        dt_ns = round(self.schema.dt * 1e9)
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self.step_vars}
        entries = []
        start = self.num_steps
        for ep, ep_id in zip(episodes, ids, strict=True):
            n = ep.num_rows
            if ep.time is None:
                t0 = ep.start_time if ep.start_time is not None else _time.time_ns()
                time = t0 + dt_ns * np.arange(n, dtype=np.int64)
            else:
                time = np.asarray(ep.time, np.int64)
            rows = _episode_rows(self.schema, action=ep.action, reward=ep.reward, obs=ep.obs, image=ep.image,
                                 time=time, first=True, last=True, terminated=bool(ep.terminated[-1]),
                                 truncated=bool(ep.truncated[-1]))
            for name in parts:
                parts[name].append(rows[name])
            start_time = ep.start_time if ep.start_time is not None else int(time[0])
            entries.append(dict(id=ep_id, start=start, length=n, source=ep.source, seed=ep.seed,
                                start_time=start_time))
            start += n
        self._write_rows({name: np.concatenate(p) for name, p in parts.items()})
        self._commit_table(entries)
        return ids

    def _writable(self, name: str) -> zarr.Array:
        # Chunks that hold only fill values are written too, so a missing chunk file always means
        # damage (`validate` checks) rather than "all False / all NaN here".
        if name not in self._handles:
            self._handles[name] = self._group[name].with_config({"write_empty_chunks": True})
        return self._handles[name]

    def _write_rows(self, rows: dict[str, np.ndarray]) -> None:
        self._dirty = True  # until the commit succeeds
        for name, data in rows.items():
            self._writable(name).append(data, axis=0)

    def _commit_table(self, entries: Sequence[dict[str, Any]]) -> None:
        """Append table rows; `episode_status` last, so its write is the commit point."""
        columns = {
            "episode_id": np.array([e["id"] for e in entries], dtype=object),
            "episode_start": np.array([e["start"] for e in entries], np.int64),
            "episode_length": np.array([e["length"] for e in entries], np.int64),
            "episode_source": np.array([e["source"] for e in entries], dtype=object),
            "episode_seed": np.array([e["seed"] for e in entries], np.int64),
            "episode_start_time": np.array([e["start_time"] for e in entries], np.int64),
            "episode_status": np.full(len(entries), COMMITTED, np.int8),
        }
        self._dirty = True
        for name in EPISODE_VARS:
            self._writable(name).append(columns[name])
        if self._table_cache is not None:  # committed rows never change: extend the cached table
            added = pd.DataFrame({name.removeprefix("episode_"): columns[name] for name in EPISODE_VARS[:-1]})
            added["id"] = added["id"].astype(str)
            added["source"] = added["source"].astype(str)
            self._table_cache = pd.concat([self._table_cache, added], ignore_index=True)
        self._dirty = False
        self._publish()

    def _publish(self) -> None:
        """Consolidate the metadata: plain `xarray.open_zarr(path)` then sees this committed snapshot.

        Written once per commit in one atomic file write, so the snapshot never shows a partial append.
        """
        consolidate(self._group)

    def stream(
        self,
        *,
        episode_id: str | None = None,
        source: str = "",
        seed: int = -1,
        start_time: int | None = None,
        flush_rows: int = 4096,
        min_transitions: int = 1,
    ) -> EpisodeStream:
        """Open an episode to add rows to one at a time; committed on `commit()` or leaving the `with`.

        At most `flush_rows` rows stay in memory; older ones are written (uncommitted) as they come.
        """
        self._require_writer()
        if self._stream is not None:
            raise RuntimeError(f"{self.path}: an episode is already being streamed")
        if self._dirty:
            self._truncate_tail()
        if episode_id is not None and episode_id in set(self.episodes()["id"]):
            raise DataValidationError(
                f"{source or '<stream>'}: episode_id {episode_id!r} is already in the store; "
                "expected a new id"
            )
        self._stream = EpisodeStream(self, episode_id=episode_id, source=source, seed=seed,
                                     start_time=start_time, flush_rows=flush_rows,
                                     min_transitions=min_transitions)
        return self._stream

    def set_attr(self, key: str, value: Any) -> None:
        """Set a group attribute (JSON-able), e.g. normalization statistics."""
        self._require_writer()
        self._group.attrs[key] = value
        self._publish()

    # ------------------------------------------------------------------ reading
    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of one step variable.

        A chunk that fails its crc32c checksum or cannot be decoded raises StoreCorruptionError
        naming the array and the chunk, never plausible-looking numbers.
        """
        arr = self._arrays.get(name)
        if arr is None or arr.shape[0] < stop:
            arr = self._arrays[name] = self._group[name]
        try:
            return arr[start:stop]
        except Exception as err:  # a flipped byte fails the crc32c check or the decompressor
            chunk = arr.chunks[0]
            bad = start // chunk
            for c in range(start // chunk, max(stop - 1, start) // chunk + 1):
                try:
                    arr[c * chunk : min((c + 1) * chunk, arr.shape[0])]
                except Exception:
                    bad = c
                    break
            raise StoreCorruptionError(
                f"{self.path}: array '{name}' chunk {bad} along 'step' "
                f"(rows {bad * chunk}..{(bad + 1) * chunk - 1}) cannot be read "
                f"({type(err).__name__}: {err}); the store is corrupted there"
            ) from err

    def read_episode(self, which: int | str) -> Episode:
        """One committed episode by position or id (its last row holds the NaN / -1 fill)."""
        table = self.episodes()
        i = self._position(table, which)
        row = table.iloc[i]
        a, b = int(row["start"]), int(row["start"] + row["length"])

        def get(name: str) -> np.ndarray | None:
            return self.read_rows(name, a, b) if self.has(name) else None

        return Episode(
            obs=get("obs"),
            image=get("image"),
            action=get("action"),
            reward=get("reward"),
            terminated=get("terminated"),
            truncated=get("truncated"),
            time=get("time"),
            episode_id=str(row["id"]),
            source=str(row["source"]),
            seed=int(row["seed"]),
            start_time=int(row["start_time"]),
        )

    def _position(self, table: pd.DataFrame, which: int | str | np.integer) -> int:
        if isinstance(which, str):
            match = np.flatnonzero(table["id"].to_numpy() == which)
            if not match.size:
                raise KeyError(f"{self.path}: no committed episode with id {which!r}")
            return int(match[0])
        if not -len(table) <= int(which) < len(table):
            raise IndexError(f"{self.path}: episode {which} out of range (store has {len(table)} committed)")
        return int(which) % len(table)

    def iter_episodes(self) -> Iterator[Episode]:
        for i in range(self.num_episodes):
            yield self.read_episode(i)

    def to_xarray(self) -> xr.Dataset:
        """The committed part of the store as a lazy xarray Dataset (no dask).

        Works while a writer appends or after a crash, when variables disagree in length.
        """
        table = self.episodes()
        n, end = len(table), _end_of(table)
        kwargs = dict(consolidated=False, chunks=None, zarr_format=3, storage_options=self.storage_options)
        try:
            ds = xr.open_zarr(zarr_path(self.path), **kwargs)
        except ValueError:  # "conflicting sizes": an unfinished write; open each length group apart
            return self._open_by_length(kwargs, n, end)
        return ds.isel(step=slice(0, end), episode=slice(0, n))

    def _open_by_length(self, kwargs: dict[str, Any], n: int, end: int) -> xr.Dataset:
        everything = [*self.step_vars, *EPISODE_VARS]
        groups: dict[int, list[str]] = {}
        for name in everything:
            groups.setdefault(self._group[name].shape[0], []).append(name)
        parts = []
        for names in groups.values():
            drop = [v for v in everything if v not in names]
            part = xr.open_zarr(zarr_path(self.path), drop_variables=drop, **kwargs)
            part = part.set_coords([c for c in CHANNEL_COORDS if c in part])
            parts.append(part.isel({d: slice(0, end if d == "step" else n) for d in ("step", "episode")
                                    if d in part.dims}))
        return xr.merge(parts, join="exact", compat="override", combine_attrs="override")

    def select(self, episodes: Sequence[int | str]) -> xr.Dataset:
        """Committed episodes by position or id, concatenated along `step` with their table rows.

        `episode_start` keeps counting rows of the whole store.
        """
        table = self.episodes()
        idx = [self._position(table, e) for e in episodes]
        ds = self.to_xarray()
        starts, lengths = table["start"].to_numpy(), table["length"].to_numpy()
        steps = np.concatenate([np.arange(starts[i], starts[i] + lengths[i]) for i in idx]) if idx else []
        return ds.isel(step=np.asarray(steps, np.int64), episode=idx)


def _end_of(table: pd.DataFrame) -> int:
    return int(table["start"].iloc[-1] + table["length"].iloc[-1]) if len(table) else 0


def _create_arrays(group: zarr.Group, schema: StoreSchema, chunk_steps: int) -> None:
    """The empty arrays and attrs of a new store (layout: docs/data-format.md)."""
    codecs = compressors(3)

    def make(name: str, shape: tuple, dtype: Any, fill: Any, **attrs: Any) -> None:
        arr = group.create_array(name, shape=(0, *shape), chunks=(chunk_steps, *shape), dtype=dtype,
                                 dimension_names=_step_var_dims(name), fill_value=fill, **codecs)
        arr.attrs.update({"long_name": _LONG_NAMES[name], **attrs})

    if schema.obs_dim:
        make("obs", (schema.obs_dim,), "float32", np.nan, coordinates="obs_unit")
    if schema.image_shape:
        make("image", tuple(schema.image_shape), "uint8", 0)
    if schema.discrete:
        make("action", (1,), "int64", DISCRETE_FILL, coordinates="action_unit",
             fill_on_last_row=DISCRETE_FILL)
    else:
        make("action", (schema.action_dim,), "float32", np.nan, coordinates="action_unit")
    make("reward", (), "float32", np.nan, unit=schema.reward_unit)
    for flag in ("terminated", "truncated", "is_first", "is_last"):
        make(flag, (), "bool", False)
    make("time", (), "int64", 0, unit="ns since 1970-01-01T00:00:00Z (int64, no datetime encoding)")

    for name, values in zip(CHANNEL_COORDS, (schema.obs_channels, schema.obs_units, schema.action_channels,
                                             schema.action_units), strict=True):
        arr = group.create_array(name, shape=(len(values),), chunks=(max(len(values), 1),), dtype=str,
                                 dimension_names=[name.replace("_unit", "_channel")])
        if values:
            arr[:] = np.array(values, dtype=object)

    for name in EPISODE_VARS:
        dtype = {"episode_id": str, "episode_source": str, "episode_status": "int8"}.get(name, "int64")
        arr = group.create_array(name, shape=(0,), chunks=(TABLE_CHUNK,), dtype=dtype,
                                 dimension_names=["episode"], fill_value="" if dtype is str else 0, **codecs)
        arr.attrs["long_name"] = _LONG_NAMES[name]
    group.attrs.update(
        {
            "schema_version": SCHEMA_VERSION,
            "schema": schema.to_attrs(),
            "dt": schema.dt,
            "observation_space": json.dumps(schema.observation_space),
            "action_space": json.dumps(schema.action_space),
            "obs_units": dict(zip(schema.obs_channels, schema.obs_units, strict=True)),
            "action_units": dict(zip(schema.action_channels, schema.action_units, strict=True)),
            "chunk_steps": chunk_steps,
            "created": _time.strftime("%Y-%m-%dT%H:%M:%SZ", _time.gmtime()),
            "provenance": schema.provenance,
            "title": "twinworld trajectory store",
            # Units are coordinates along the channel dims, also in a store without `obs` (image only).
            "coordinates": "obs_unit action_unit",
        }
    )


class EpisodeStream:
    """Rows of one open episode, added one at a time; written in blocks, committed at the end.

    Made by `TrajectoryStore.stream()`. A row of the wrong shape is refused by `add()` (the episode
    goes on); every block is validated before it is written (rows numbered within the episode, time
    increasing across blocks), and a block that fails drops the whole episode. The newest row always
    stays in memory, so the episode's final row is written once, by `commit()`, with its end flags
    and its NaN / -1 action and reward. Only `commit()` makes the episode visible to readers;
    `abort()` (or an exception inside `with`) drops the rows already written.
    """

    def __init__(self, store: TrajectoryStore, *, episode_id: str | None, source: str, seed: int,
                 start_time: int | None, flush_rows: int, min_transitions: int) -> None:
        if flush_rows < 1:
            raise ValueError(f"flush_rows must be ≥ 1, got {flush_rows}")
        self.store = store
        self.episode_id = episode_id if episode_id is not None else uuid.uuid4().hex[:12]
        self.source = source
        self.seed = seed
        self.start_time = start_time
        self.flush_rows = flush_rows
        self.min_transitions = min_transitions
        self.written = 0  # rows already in the store (uncommitted)
        self._start_row = store.num_steps
        self._rows: list[dict[str, Any]] = []
        self._timed: bool | None = None  # whether rows carry their own time
        self._last_time: int | None = None
        self._done = False

    def add(
        self,
        *,
        obs: np.ndarray | None = None,
        image: np.ndarray | None = None,
        action: np.ndarray | float | int | None = None,
        reward: float | None = None,
        time: int | None = None,
    ) -> None:
        """Add the next row: the observation, the action taken at it and the reward that followed.

        The final row carries no action or reward (pass None). Give `time` (int64 ns) on every row
        or on none; without it rows are `dt` apart from `start_time` (default: the first add).
        """
        if self._done:
            raise RuntimeError(f"{self.store.path}: episode {self.episode_id} is already finished")
        row = len(self._rows) + self.written
        schema = self.store.schema
        where = f"{self.source or '<stream>'} (episode {self.episode_id})"
        if schema.obs_dim and np.shape(obs) != (schema.obs_dim,):
            raise DataValidationError(
                f"{where}: field 'obs' has shape {np.shape(obs) if obs is not None else None} at row {row}; "
                f"expected ({schema.obs_dim},) for channels {schema.obs_channels}"
            )
        if schema.image_shape and np.shape(image) != tuple(schema.image_shape):
            raise DataValidationError(
                f"{where}: field 'image' has shape {np.shape(image) if image is not None else None} "
                f"at row {row}; expected {tuple(schema.image_shape)} uint8"
            )
        if self._timed is None:
            self._timed = time is not None
            if not self._timed and self.start_time is None:
                self.start_time = _time.time_ns()
        if self._timed != (time is not None):
            raise DataValidationError(
                f"{where}: field 'time' is {'missing' if time is None else 'given'} at row {row}; "
                "expected it on every row or on none"
            )
        self._rows.append({"obs": obs, "image": image, "action": action, "reward": reward, "time": time})
        if len(self._rows) > self.flush_rows:
            try:
                self._write(self._rows[:-1], last=False)
            except BaseException:  # the episode cannot be completed correctly: drop it
                self.abort()
                raise
            self._rows = self._rows[-1:]

    @property
    def num_rows(self) -> int:
        return self.written + len(self._rows)

    def _write(self, rows: list[dict[str, Any]], last: bool, terminated: bool = False,
               truncated: bool = False) -> None:
        """Validate then write a block of rows (uncommitted)."""
        schema = self.store.schema
        n = len(rows)
        fill = DISCRETE_FILL if schema.discrete else np.nan
        action = np.stack([np.full(schema.action_dim, fill) if r["action"] is None
                           else np.atleast_1d(np.asarray(r["action"])) for r in rows])
        reward = np.array([np.nan if r["reward"] is None else r["reward"] for r in rows], np.float64)
        obs = np.asarray([r["obs"] for r in rows]) if schema.obs_dim else None
        image = np.asarray([r["image"] for r in rows]) if schema.image_shape else None
        if self._timed:
            time = np.asarray([r["time"] for r in rows], np.int64)
        else:
            dt_ns = round(schema.dt * 1e9)
            time = self.start_time + dt_ns * (self.written + np.arange(n, dtype=np.int64))
        validate_rows(schema, where=f"{self.source or '<stream>'} (episode {self.episode_id})", obs=obs,
                      image=image, action=action, reward=reward, time=time, row0=self.written,
                      ends_episode=last, prev_time=self._last_time)
        block = _episode_rows(schema, action=action, reward=reward, obs=obs, image=image, time=time,
                              first=self.written == 0, last=last, terminated=terminated, truncated=truncated)
        self.store._write_rows(block)
        if self.start_time is None:
            self.start_time = int(time[0])
        self.written += n
        self._last_time = int(time[-1])

    def commit(self, terminated: bool = False, truncated: bool = False) -> str:
        """Write the remaining rows and commit the episode; return its id."""
        if self._done:
            raise RuntimeError(f"{self.store.path}: episode {self.episode_id} is already finished")
        if self.num_rows - 1 < self.min_transitions:
            n = self.num_rows
            self.abort()
            raise DataValidationError(
                f"{self.source or '<stream>'} (episode {self.episode_id}): episode has {max(n - 1, 0)} "
                f"transitions ({n} rows); expected at least {self.min_transitions} (min_transitions)"
            )
        try:
            self._write(self._rows, last=True, terminated=terminated, truncated=truncated)
            self.store._commit_table([dict(id=self.episode_id, start=self._start_row, length=self.written,
                                           source=self.source, seed=self.seed, start_time=self.start_time)])
        except BaseException:
            self.abort()
            raise
        self._finish()
        return self.episode_id

    def abort(self) -> None:
        """Drop this episode: rows already written are truncated; the store is as before `stream()`."""
        if self._done:
            return
        self._finish()
        self.store._truncate_tail()

    def _finish(self) -> None:
        self._done = True
        self._rows = []
        self.store._stream = None

    def __enter__(self) -> EpisodeStream:
        return self

    def __exit__(self, exc_type: type | None, *rest: object) -> None:
        if exc_type is None:
            if not self._done:
                self.commit()
        else:
            self.abort()
