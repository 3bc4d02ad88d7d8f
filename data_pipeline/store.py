"""The trajectory store (DESIGN contract 1): a Zarr v3 group that plain `xarray.open_zarr` can read.

    store = TrajectoryStore.create("p.zarr", schema)
    store.append([episode, ...])            # data rows first, the table rows last (the commit)
    with store.stream(source="plc-3") as s:  # or step by step into an open episode
        s.add(obs=..., action=..., reward=...)
    ds = TrajectoryStore.open("p.zarr").to_xarray()

One writer per store, enforced with an OS file lock on local stores. Opening a store for writing
after a crash truncates the uncommitted tail, so committed episodes are never damaged.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import time as _time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from data_pipeline.schema import (
    COMMITTED,
    DISCRETE_FILL,
    EPISODE_VARS,
    SCHEMA_VERSION,
    Episode,
    StoreSchema,
)
from data_pipeline.validate import DataValidationError, check_schema_matches, validate_episode

DEFAULT_CHUNK_BYTES = 1 << 20  # ≥ 1 MiB per chunk along `step` (contract 1)
TABLE_CHUNK = 4096


class StoreLockedError(RuntimeError):
    """Another process holds the store's writer lock."""


class StoreCorruptionError(RuntimeError):
    """A chunk failed its checksum or could not be decoded."""


def _is_url(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _local_path(path: str) -> Path | None:
    if path.startswith("file://"):
        return Path(path[len("file://") :])
    return None if _is_url(path) else Path(path)


def _step_var_dims(name: str) -> list[str]:
    return {
        "obs": ["step", "obs_channel"],
        "image": ["step", "height", "width", "color"],
        "action": ["step", "action_channel"],
    }.get(name, ["step"])


class TrajectoryStore:
    """Create, open, append to and read a trajectory store. See docs/data-format.md."""

    def __init__(self, path: str, group: zarr.Group, mode: str, storage_options: dict | None) -> None:
        self.path = path
        self.mode = mode
        self.storage_options = storage_options
        self._group = group
        self.schema = StoreSchema.from_attrs(dict(group.attrs["schema"]))
        self._lock_fd: int | None = None
        self._streaming = False
        self._table_cache: pd.DataFrame | None = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        schema: StoreSchema,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        overwrite: bool = False,
        storage_options: dict | None = None,
    ) -> TrajectoryStore:
        """Create an empty store for `schema` and open it for writing."""
        path = str(path)
        local = _local_path(path)
        if local is not None and local.exists() and any(local.iterdir()) and not overwrite:
            raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) or choose another path")
        group = zarr.open_group(
            path, mode="w" if overwrite else "w-", zarr_format=3, storage_options=storage_options
        )
        obs_bytes = 4 * max(schema.obs_dim, 1)
        row_bytes = {
            "obs": obs_bytes,
            "image": int(np.prod(schema.image_shape)) if schema.image_shape else 0,
            "action": 8 * schema.action_dim,
            "reward": 4,
            "terminated": 1,
            "truncated": 1,
            "is_first": 1,
            "is_last": 1,
            "time": 8,
        }
        # One chunk length for every step variable, sized from the widest row so the largest variable
        # gets ≥ chunk_bytes per chunk and a window spans at most two chunks of every variable.
        widest = max(row_bytes.values())
        chunk_steps = max(256, int(math.ceil(chunk_bytes / widest)))
        if schema.image_shape:
            chunk_steps = max(64, int(math.ceil(chunk_bytes / row_bytes["image"])))
        codecs: dict[str, Any] = {"compressors": [ZstdCodec(level=3), Crc32cCodec()]}

        def make(name: str, shape: tuple, chunks: tuple, dtype: Any, dims: list[str], fill: Any, **attrs: Any) -> None:
            arr = group.create_array(
                name, shape=shape, chunks=chunks, dtype=dtype, dimension_names=dims, fill_value=fill, **codecs
            )
            if attrs:
                arr.attrs.update(attrs)

        if schema.obs_dim:
            make("obs", (0, schema.obs_dim), (chunk_steps, schema.obs_dim), "float32", _step_var_dims("obs"),
                 np.nan, long_name="observation", coordinates="obs_unit")
        if schema.image_shape:
            make("image", (0, *schema.image_shape), (chunk_steps, *schema.image_shape), "uint8",
                 _step_var_dims("image"), 0, long_name="image observation")
        if schema.discrete:
            make("action", (0, 1), (chunk_steps, 1), "int64", _step_var_dims("action"), DISCRETE_FILL,
                 long_name="action (Discrete index)", fill_on_last_row=DISCRETE_FILL, coordinates="action_unit")
        else:
            make("action", (0, schema.action_dim), (chunk_steps, schema.action_dim), "float32",
                 _step_var_dims("action"), np.nan, long_name="action", coordinates="action_unit")
        make("reward", (0,), (chunk_steps,), "float32", ["step"], np.nan, long_name="reward", unit=schema.reward_unit)
        for flag in ("terminated", "truncated", "is_first", "is_last"):
            make(flag, (0,), (chunk_steps,), "bool", ["step"], False)
        make("time", (0,), (chunk_steps,), "int64", ["step"], 0,
             long_name="time", unit="ns since 1970-01-01T00:00:00Z (int64, no datetime encoding)")

        def coord(name: str, values: list[str]) -> None:
            arr = group.create_array(name, shape=(len(values),), chunks=(max(len(values), 1),), dtype=str,
                                     dimension_names=[name.replace("_unit", "_channel")])
            if values:
                arr[:] = np.array(values, dtype=object)

        coord("obs_channel", schema.obs_channels)
        coord("obs_unit", schema.obs_units)
        coord("action_channel", schema.action_channels)
        coord("action_unit", schema.action_units)

        for name in EPISODE_VARS:
            dtype = {"episode_id": str, "episode_source": str, "episode_status": "int8"}.get(name, "int64")
            fill = 0 if dtype != str else ""
            group.create_array(name, shape=(0,), chunks=(TABLE_CHUNK,), dtype=dtype,
                               dimension_names=["episode"], fill_value=fill)
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
            }
        )
        store = cls(path, group, "a", storage_options)
        store._acquire_lock()
        return store

    @classmethod
    def open(cls, path: str | os.PathLike, mode: str = "r", storage_options: dict | None = None) -> TrajectoryStore:
        """Open a store for reading (`mode="r"`) or appending (`mode="a"`, takes the writer lock).

        Opening for appending truncates an uncommitted tail left by a crashed writer.
        """
        path = str(path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        local = _local_path(path)
        if local is not None and not (local / "zarr.json").exists():
            raise FileNotFoundError(f"{path}: no trajectory store here (no zarr.json)")
        try:
            group = zarr.open_group(path, mode="r" if mode == "r" else "r+", zarr_format=3,
                                    storage_options=storage_options)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{path}: no trajectory store here ({err})") from err
        if "schema" not in group.attrs:
            raise DataValidationError(f"{path}: zarr group has no 'schema' attribute; not a twinworld store")
        version = str(group.attrs.get("schema_version", "?"))
        if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
            raise DataValidationError(f"{path}: schema_version {version}; this twinworld reads {SCHEMA_VERSION}")
        store = cls(path, group, mode, storage_options)
        if mode == "a":
            store._acquire_lock()
            store.recover()
        return store

    def _acquire_lock(self) -> None:
        local = _local_path(self.path)
        if local is None:
            return  # object storage: one writer by convention, see docs/cluster.md
        # The lock file sits beside the store, not inside it, so the Zarr hierarchy stays clean.
        lock_path = local.parent / f".{local.name}.writer-lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreLockedError(
                f"{self.path} is open for writing by another process (pid {holder}); a store has one writer"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def close(self) -> None:
        """Release the writer lock (if held)."""
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> TrajectoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    # ------------------------------------------------------------------ table
    def array(self, name: str) -> zarr.Array:
        """The raw zarr array of a variable (reads past the committed end are the caller's concern)."""
        return self._group[name]

    def has(self, name: str) -> bool:
        return name in self._group

    @property
    def step_vars(self) -> list[str]:
        names = ["obs", "image", "action", "reward", "terminated", "truncated", "is_first", "is_last", "time"]
        return [n for n in names if n in self._group]

    def _committed_count(self) -> int:
        lengths = [self._group[name].shape[0] for name in EPISODE_VARS]
        n = min(lengths)
        if n == 0:
            return 0
        status = self._group["episode_status"][:n]
        bad = np.flatnonzero(status != COMMITTED)
        return int(bad[0]) if bad.size else n

    def episodes(self) -> pd.DataFrame:
        """The committed episode table: id, start, length (rows), source, seed, start_time."""
        if self._table_cache is None or self.mode == "r":
            n = self._committed_count()
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
        table = self.episodes()
        return int(table["start"].iloc[-1] + table["length"].iloc[-1]) if len(table) else 0

    def fingerprint(self) -> str:
        """A short hash of the schema and the committed episodes (ids and lengths): dataset lineage."""
        table = self.episodes()
        h = hashlib.sha256(json.dumps(self.schema.to_attrs(), sort_keys=True, default=str).encode())
        h.update(table["id"].str.cat(sep=",").encode())
        h.update(np.ascontiguousarray(table["length"].to_numpy(np.int64)).tobytes())
        return h.hexdigest()[:16]

    def recover(self) -> int:
        """Truncate an uncommitted tail (from a crashed writer); return the number of rows dropped."""
        self._require_writer()
        n = self._committed_count()
        end = self.num_steps_for(n)
        dropped = 0
        for name in self.step_vars:
            arr = self._group[name]
            if arr.shape[0] != end:
                dropped = max(dropped, arr.shape[0] - end)
                arr.resize((end, *arr.shape[1:]))
        for name in EPISODE_VARS:
            arr = self._group[name]
            if arr.shape[0] != n:
                arr.resize((n,))
        self._table_cache = None
        return dropped

    def num_steps_for(self, n_episodes: int) -> int:
        if n_episodes == 0:
            return 0
        start = int(self._group["episode_start"][n_episodes - 1])
        length = int(self._group["episode_length"][n_episodes - 1])
        return start + length

    def _require_writer(self) -> None:
        if self.mode != "a":
            raise PermissionError(f"{self.path} is open read-only; open it with mode='a' to write")

    # ------------------------------------------------------------------ writing
    def append(
        self,
        episodes: Episode | Sequence[Episode],
        *,
        source: str | None = None,
        min_transitions: int = 1,
    ) -> list[str]:
        """Validate then append whole episodes in one write; return their ids.

        All episodes are validated before anything is written. Data rows are written first and the
        table rows last, the status column last of all, so a crash leaves only an uncommitted tail.
        """
        self._require_writer()
        if self._streaming:
            raise RuntimeError(f"{self.path}: an episode is being streamed; commit it before append()")
        if isinstance(episodes, Episode):
            episodes = [episodes]
        if not episodes:
            return []
        existing = set(self.episodes()["id"])
        for ep in episodes:
            if ep.episode_id is None:
                ep.episode_id = uuid.uuid4().hex[:12]
            validate_episode(ep, self.schema, source=source, min_transitions=min_transitions, existing_ids=existing)
            existing.add(ep.episode_id)
        self._write_rows(self._rows_of(episodes))
        self._commit_table(episodes)
        return [ep.episode_id for ep in episodes]

    def _rows_of(self, episodes: Sequence[Episode]) -> dict[str, np.ndarray]:
        rows: dict[str, list[np.ndarray]] = {name: [] for name in self.step_vars}
        dt_ns = int(round(self.schema.dt * 1e9))
        for ep in episodes:
            n = ep.num_rows
            if ep.time is None:
                start = ep.start_time if ep.start_time is not None else _time.time_ns()
                ep.time = start + dt_ns * np.arange(n, dtype=np.int64)
            if ep.start_time is None:
                ep.start_time = int(ep.time[0])
            first = np.zeros(n, bool)
            first[0] = True
            last = np.zeros(n, bool)
            last[-1] = True
            action = ep.action.astype(np.int64 if self.schema.discrete else np.float32, copy=True)
            action[-1] = DISCRETE_FILL if self.schema.discrete else np.nan
            reward = ep.reward.astype(np.float32, copy=True)
            reward[-1] = np.nan
            values = {
                "obs": None if ep.obs is None else ep.obs.astype(np.float32, copy=False),
                "image": ep.image,
                "action": action,
                "reward": reward,
                "terminated": ep.terminated.astype(bool),
                "truncated": ep.truncated.astype(bool),
                "is_first": first,
                "is_last": last,
                "time": ep.time.astype(np.int64),
            }
            for name in rows:
                rows[name].append(values[name])
        return {name: np.concatenate(parts) for name, parts in rows.items()}

    def _write_rows(self, rows: dict[str, np.ndarray]) -> None:
        for name, data in rows.items():
            self._group[name].append(data, axis=0)

    def _commit_table(self, episodes: Sequence[Episode]) -> None:
        start = self.num_steps
        starts, lengths = [], []
        for ep in episodes:
            starts.append(start)
            lengths.append(ep.num_rows)
            start += ep.num_rows
        columns = {
            "episode_id": np.array([ep.episode_id for ep in episodes], dtype=object),
            "episode_start": np.array(starts, np.int64),
            "episode_length": np.array(lengths, np.int64),
            "episode_source": np.array([ep.source for ep in episodes], dtype=object),
            "episode_seed": np.array([ep.seed for ep in episodes], np.int64),
            "episode_start_time": np.array([ep.start_time for ep in episodes], np.int64),
            "episode_status": np.full(len(episodes), COMMITTED, np.int8),
        }
        for name in EPISODE_VARS:  # episode_status is last: the commit point
            self._group[name].append(columns[name])
        self._table_cache = None

    def stream(self, **episode_fields: Any) -> EpisodeStream:
        """Open an episode to add rows to one at a time; committed on `commit()` or leaving the `with`."""
        self._require_writer()
        if self._streaming:
            raise RuntimeError(f"{self.path}: an episode is already being streamed")
        return EpisodeStream(self, **episode_fields)

    def set_attr(self, key: str, value: Any) -> None:
        self._require_writer()
        self._group.attrs[key] = value

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._group.attrs)

    # ------------------------------------------------------------------ reading
    def read_rows(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows [start, stop) of one step variable, with decoding failures reported clearly."""
        arr = self._group[name]
        try:
            return arr[start:stop]
        except Exception as err:  # a flipped byte fails the crc32c check or the decompressor
            chunk = arr.chunks[0]
            raise StoreCorruptionError(
                f"{self.path}: array '{name}' chunks {start // chunk}..{max(stop - 1, start) // chunk} along "
                f"'step' cannot be read ({type(err).__name__}: {err}); the store is corrupted there"
            ) from err

    def read_episode(self, which: int | str) -> Episode:
        """One committed episode by position or id."""
        table = self.episodes()
        if isinstance(which, str):
            match = np.flatnonzero(table["id"].to_numpy() == which)
            if not match.size:
                raise KeyError(f"{self.path}: no committed episode with id {which!r}")
            which = int(match[0])
        if not 0 <= which < len(table):
            raise IndexError(f"{self.path}: episode {which} out of range (store has {len(table)})")
        row = table.iloc[which]
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

    def iter_episodes(self) -> Iterator[Episode]:
        for i in range(self.num_episodes):
            yield self.read_episode(i)

    def to_xarray(self) -> xr.Dataset:
        """The committed part of the store as a lazy xarray Dataset (no dask)."""
        try:
            ds = xr.open_zarr(self.path, consolidated=False, chunks=None, zarr_format=3,
                              storage_options=self.storage_options)
        except ValueError as err:
            raise RuntimeError(
                f"{self.path}: variables along 'step' disagree in length ({err}); a writer crashed or is "
                "writing now. Open the store with mode='a' (or run `python -m data_pipeline validate`) to recover."
            ) from err
        n = self.num_episodes
        return ds.isel(step=slice(0, self.num_steps), episode=slice(0, n))

    def select(self, episodes: Sequence[int | str]) -> xr.Dataset:
        """Committed episodes by position or id, concatenated along `step` with their table rows."""
        table = self.episodes()
        idx = []
        for e in episodes:
            if isinstance(e, str):
                hits = np.flatnonzero(table["id"].to_numpy() == e)
                if not hits.size:
                    raise KeyError(f"{self.path}: no committed episode with id {e!r}")
                idx.append(int(hits[0]))
            else:
                idx.append(int(e))
        ds = self.to_xarray()
        steps = np.concatenate(
            [np.arange(table["start"].iloc[i], table["start"].iloc[i] + table["length"].iloc[i]) for i in idx]
        )
        return ds.isel(step=steps, episode=idx)


class EpisodeStream:
    """Rows of one open episode, added one at a time; flushed in blocks, committed at the end.

    Rows are buffered in memory and written to the store (uncommitted) every `flush_rows` rows, so a
    long episode does not grow memory. Only `commit()` makes the episode visible to readers.
    """

    def __init__(self, store: TrajectoryStore, flush_rows: int = 4096, **episode_fields: Any) -> None:
        self.store = store
        self.flush_rows = flush_rows
        self.fields = episode_fields
        self.buffer: dict[str, list[Any]] = {k: [] for k in ("obs", "image", "action", "reward", "time")}
        self.written = 0
        self.flags = {"terminated": False, "truncated": False}
        self._prefix: dict[str, np.ndarray] = {}
        store._streaming = True
        self._start_rows = store.num_steps

    def add(
        self,
        *,
        obs: np.ndarray | None = None,
        image: np.ndarray | None = None,
        action: np.ndarray | float | int | None = None,
        reward: float | None = None,
        time: int | None = None,
    ) -> None:
        """Add the next row: the observation, then the action taken at it and the reward that followed.

        The final row carries no action or reward (pass None).
        """
        schema = self.store.schema
        fill = DISCRETE_FILL if schema.discrete else np.nan
        self.buffer["obs"].append(obs)
        self.buffer["image"].append(image)
        act = np.full(schema.action_dim, fill) if action is None else np.atleast_1d(np.asarray(action))
        self.buffer["action"].append(act)
        self.buffer["reward"].append(np.nan if reward is None else float(reward))
        self.buffer["time"].append(time)
        if len(self.buffer["reward"]) >= self.flush_rows:
            self.flush()

    def _episode(self, rows: int, last: bool) -> Episode:
        schema = self.store.schema
        b = self.buffer
        n = len(b["reward"])
        term = np.zeros(n, bool)
        trunc = np.zeros(n, bool)
        if last and n:
            term[-1] = self.flags["terminated"]
            trunc[-1] = self.flags["truncated"]
        times = None
        if n and all(t is not None for t in b["time"]):
            times = np.asarray(b["time"], np.int64)
        return Episode(
            obs=np.asarray(b["obs"], np.float32) if schema.obs_dim else None,
            image=np.asarray(b["image"], np.uint8) if schema.image_shape else None,
            action=np.asarray(b["action"]).reshape(n, schema.action_dim),
            reward=np.asarray(b["reward"], np.float32),
            terminated=term,
            truncated=trunc,
            time=times,
            **self.fields,
        )

    def flush(self, final: bool = False) -> None:
        """Write buffered rows (uncommitted) to free memory; validated like whole episodes."""
        n = len(self.buffer["reward"])
        if not n:
            return
        ep = self._episode(n, last=final)
        # A block that is not the episode's end is validated as if one more row followed it.
        pad = ep if final else Episode(
            obs=None if ep.obs is None else np.concatenate([ep.obs, ep.obs[-1:]]),
            image=None if ep.image is None else np.concatenate([ep.image, ep.image[-1:]]),
            action=np.concatenate([ep.action, ep.action[-1:]]),
            reward=np.concatenate([ep.reward, ep.reward[-1:]]),
            terminated=np.zeros(n + 1, bool),
            truncated=np.zeros(n + 1, bool),
            source=ep.source,
        )
        validate_episode(pad, self.store.schema, min_transitions=0)
        if self.written == 0 and ep.time is None and ep.start_time is None:
            self.fields["start_time"] = _time.time_ns()
        if ep.time is None:
            dt_ns = int(round(self.store.schema.dt * 1e9))
            ep.time = int(self.fields.get("start_time") or 0) + dt_ns * (self.written + np.arange(n, dtype=np.int64))
        rows = self.store._rows_of([ep])
        rows["is_first"][:] = False
        rows["is_first"][0] = self.written == 0
        rows["is_last"][:] = False
        rows["reward"][-1] = ep.reward[-1]
        rows["action"][-1] = ep.action[-1]
        self._prefix.setdefault("time0", rows["time"][:1])
        self.store._write_rows(rows)
        self.written += n
        for k in self.buffer:
            self.buffer[k].clear()

    def commit(self, terminated: bool = False, truncated: bool = False) -> str:
        """Write the remaining rows and commit the episode; return its id."""
        self.flags = {"terminated": terminated, "truncated": truncated}
        self.flush(final=True)
        store = self.store
        n = self.written
        if n < 2:
            store._streaming = False
            store.recover()
            raise DataValidationError(f"{store.path}: streamed episode has {n} rows; expected at least 2")
        a = self._start_rows
        last = a + n - 1
        # Fix up the final row: no action / reward, the end flags.
        fill = DISCRETE_FILL if store.schema.discrete else np.nan
        store.array("action")[last] = fill
        store.array("reward")[last] = np.nan
        store.array("is_last")[last] = True
        store.array("terminated")[last] = terminated
        store.array("truncated")[last] = truncated
        ep = Episode(
            action=np.zeros((n, 1)), reward=np.zeros(n), terminated=np.zeros(n, bool), truncated=np.zeros(n, bool),
            **{k: v for k, v in self.fields.items() if k in ("episode_id", "source", "seed", "start_time")},
        )
        if ep.episode_id is None:
            ep.episode_id = uuid.uuid4().hex[:12]
        if ep.episode_id in set(store.episodes()["id"]):
            store._streaming = False
            store.recover()
            raise DataValidationError(f"{store.path}: episode_id {ep.episode_id!r} is already in the store")
        if ep.start_time is None:
            ep.start_time = int(self._prefix["time0"][0])
        store._commit_table([ep])
        store._streaming = False
        return ep.episode_id

    def __enter__(self) -> EpisodeStream:
        return self

    def __exit__(self, exc_type: type | None, *rest: object) -> None:
        if exc_type is None:
            self.commit()
        else:  # leave the rows uncommitted; the next open for writing drops them
            self.store._streaming = False
