"""Reading a trajectory store: rows with corruption detection, the committed part as an xarray Dataset,
and the dataset fingerprint. Readers see only committed episodes, also while a writer appends."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr.core.sync import sync

from data_pipeline.schema import EPISODE_VARS, StoreSchema
from data_pipeline.store.layout import CHANNEL_COORDS, StoreCorruptionError, array_of
from data_pipeline.store.paths import zarr_path

__all__ = ["StoreCorruptionError", "chunk_file", "missing_chunks", "open_committed", "read_checked"]


def chunk_file(arr: zarr.Array, c: int) -> str:
    """The key of chunk `c` (along the first dim) of `arr` within the store, e.g. `obs/c/3/0`."""
    return f"{arr.path}/{arr.metadata.encode_chunk_key((c, *(0,) * (arr.ndim - 1)))}"


def missing_chunks(arr: zarr.Array, start: int, stop: int) -> list[int]:
    """Chunks (along the first dim) holding rows [start, stop) that have no stored object.

    Every writer stores chunks that hold only fill values too (`write_empty_chunks`), so a missing
    chunk is damage; zarr would read it as the fill value (NaN, False, 0) without a word.
    """
    if stop <= start:
        return []
    chunk = arr.chunks[0]
    store = arr.store_path.store
    return [c for c in range(start // chunk, (stop - 1) // chunk + 1) if not sync(store.exists(chunk_file(arr, c)))]


def read_checked(arr: zarr.Array, name: str, start: int, stop: int, *, where: str, dim: str = "step") -> np.ndarray:
    """Rows [start, stop) of the array `name` along its first dim `dim` (`step` or `episode`).

    A chunk that is missing, fails its crc32c checksum or cannot be decoded, and an array shorter than
    the rows asked for (its zarr.json damaged), raise StoreCorruptionError naming the array and the
    chunk, never plausible-looking numbers.
    """
    chunk = arr.chunks[0]
    if stop > arr.shape[0]:
        raise StoreCorruptionError(
            f"{where}: array '{name}' has {arr.shape[0]} rows along '{dim}' but row {stop - 1} is committed; "
            f"its metadata file {name}/zarr.json is damaged"
        )
    try:
        data = np.asarray(arr[start:stop])
    except Exception as err:  # a flipped byte fails the crc32c check or the decompressor
        bad = start // chunk
        for c in range(start // chunk, max(stop - 1, start) // chunk + 1):
            try:
                arr[c * chunk : min((c + 1) * chunk, arr.shape[0])]
            except Exception:
                bad = c
                break
        raise StoreCorruptionError(
            f"{where}: array '{name}' chunk {bad} along '{dim}' "
            f"(rows {bad * chunk}..{(bad + 1) * chunk - 1}) cannot be read "
            f"(file {chunk_file(arr, bad)}: {type(err).__name__}: {err}); the store is corrupted there"
        ) from err
    missing = missing_chunks(arr, start, stop)
    if missing:
        bad = missing[0]
        raise StoreCorruptionError(
            f"{where}: array '{name}' chunk {bad} along '{dim}' holds committed rows but its file is missing "
            f"({chunk_file(arr, bad)}, rows {bad * chunk}..{(bad + 1) * chunk - 1}); the store is corrupted there"
        )
    return data


def open_committed(path: str, group: zarr.Group, step_vars: list[str], n: int, end: int,
                   storage_options: dict[str, Any] | None) -> xr.Dataset:
    """The first `n` episodes and `end` rows of the store as a lazy xarray Dataset (no dask).

    Works while a writer appends or after a crash, when variables disagree in length: then each
    group of variables of one length is opened apart, cut to the committed end, and merged.
    """

    def open_zarr(drop: list[str] | None = None) -> xr.Dataset:
        return xr.open_zarr(zarr_path(path), consolidated=False, chunks=None, zarr_format=3,
                            storage_options=storage_options, drop_variables=drop)

    try:
        ds = open_zarr()
    except ValueError:  # "conflicting sizes": an unfinished write
        everything = [*step_vars, *EPISODE_VARS]
        by_length: dict[int, list[str]] = {}
        for name in everything:
            by_length.setdefault(array_of(group, name).shape[0], []).append(name)
        parts = []
        for names in by_length.values():
            part = open_zarr(drop=[v for v in everything if v not in names])
            part = part.set_coords([c for c in CHANNEL_COORDS if c in part])
            parts.append(part.isel({d: slice(0, end if d == "step" else n) for d in ("step", "episode")
                                    if d in part.dims}))
        return xr.merge(parts, join="exact", compat="override", combine_attrs="override")
    return ds.isel(step=slice(0, end), episode=slice(0, n))


def select_rows(table: pd.DataFrame, positions: list[int]) -> np.ndarray:
    """The `step` rows of the episodes at `positions`, concatenated in that order."""
    starts, lengths = table["start"].to_numpy(np.int64), table["length"].to_numpy(np.int64)
    if not positions:
        return np.zeros(0, np.int64)
    return np.concatenate([np.arange(starts[i], starts[i] + lengths[i], dtype=np.int64) for i in positions])


def fingerprint(schema: StoreSchema, table: pd.DataFrame) -> str:
    """A short hash of the schema and the committed episodes (ids and lengths): dataset lineage."""
    h = hashlib.sha256(json.dumps(schema.to_attrs(), sort_keys=True, default=str).encode())
    h.update(table["id"].str.cat(sep=",").encode())
    h.update(np.ascontiguousarray(table["length"].to_numpy(np.int64)).tobytes())
    return h.hexdigest()[:16]
