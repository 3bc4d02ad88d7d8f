"""Every damaged part of a store, listed: what `python -m data_pipeline validate` reports.

A reader stops at the first damaged chunk (StoreCorruptionError). `validate` wants the whole list, and
must also work when the group's own zarr.json or the episode table is what is damaged, so this scan
opens each array on its own and checks every chunk that holds committed rows: present, checksum and
decoding intact. An array's zarr.json is also compared with the copy each commit publishes in the
consolidated metadata, so a flipped byte that still parses (a dtype, a chunk size) is caught too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import zarr

from data_pipeline.schema import EPISODE_VARS, STEP_VARS
from data_pipeline.store import layout, table
from data_pipeline.store.layout import CHANNEL_COORDS, StoreCorruptionError
from data_pipeline.store.paths import local_path, zarr_path
from data_pipeline.store.reader import chunk_file, missing_chunks, read_checked


@dataclass(frozen=True)
class Damage:
    """One damaged part: `array` ("" for the group), `part` ("zarr.json" or "chunk 3") and the full message."""

    array: str
    part: str
    message: str

    def __str__(self) -> str:
        return f"{self.array or 'group'} {self.part}"


@dataclass
class Scan:
    damage: list[Damage]
    episodes: int | None
    """Committed episodes, when the table could be read."""
    steps: int | None
    """Committed rows along `step`, when the table could be read."""


def scan(path: str, storage_options: dict[str, Any] | None = None) -> Scan:
    """Every damaged metadata file and chunk of the store at `path`."""
    found: list[Damage] = []
    group: zarr.Group | None = None
    blank_units: set[str] = set()  # unit arrays whose every unit is "" (stores before 2026-12 kept no chunk)
    try:
        group = layout.open_store_group(path, "r", storage_options)
        schema = layout.read_schema(group, path)
        names = layout.array_names(schema)
        blank_units = {name for name, units in (("obs_unit", schema.obs_units), ("action_unit", schema.action_units))
                       if not any(units)}
    except StoreCorruptionError as err:
        found.append(Damage("", "zarr.json", str(err)))
        local = local_path(path)
        known = (*STEP_VARS, *EPISODE_VARS, *CHANNEL_COORDS)
        names = [n for n in known if local is not None and (local / n).exists()]

    arrays: dict[str, zarr.Array] = {}
    for name in names:
        try:
            arrays[name] = _open_array(path, group, name, storage_options)
        except StoreCorruptionError as err:
            found.append(Damage(name, "zarr.json", str(err)))
    if group is not None:
        found += _differs_from_published(path, group, arrays)

    n = end = None
    if group is not None and "episode_status" in arrays:
        try:
            n = table.committed_count(group, path)
            end = table.rows_of(group, n, path) if {"episode_start", "episode_length"} <= arrays.keys() else None
        except StoreCorruptionError:
            n = end = None  # the chunk is listed below
    for name, arr in arrays.items():
        dim = "step" if name in STEP_VARS else "episode" if name in EPISODE_VARS else name
        stop = {"step": end, "episode": n}.get(dim)
        stop = arr.shape[0] if stop is None else min(stop, arr.shape[0])
        if name in blank_units and missing_chunks(arr, 0, stop):
            continue  # all fill values, and stores written before units were always stored keep no chunk
        found += _chunks(path, name, arr, stop, dim)
    return Scan(found, n, end)


def _open_array(path: str, group: zarr.Group | None, name: str, storage_options: dict[str, Any] | None
                ) -> zarr.Array:
    if group is not None:
        return layout.array_of(group, name)
    try:
        return zarr.open_array(zarr_path(path), path=name, mode="r", zarr_format=3, storage_options=storage_options)
    except Exception as err:
        raise StoreCorruptionError(f"{path}: array '{name}' metadata file {name}/zarr.json cannot be read "
                                   f"({type(err).__name__}: {err})") from err


def _chunks(path: str, name: str, arr: zarr.Array, stop: int, dim: str) -> list[Damage]:
    """Each chunk holding rows [0, stop) that is missing or fails its checksum or decoding."""
    found = []
    chunk = arr.chunks[0]
    for c0 in range(0, stop, chunk):
        try:
            read_checked(arr, name, c0, min(c0 + chunk, stop), where=path, dim=dim)
        except StoreCorruptionError as err:
            found.append(Damage(name, f"chunk {c0 // chunk} ({chunk_file(arr, c0 // chunk)})", str(err)))
    return found


def _differs_from_published(path: str, group: zarr.Group, arrays: dict[str, zarr.Array]) -> list[Damage]:
    """Arrays whose zarr.json (all but the shape, which grows with each append) differs from the copy in the
    consolidated metadata of the last commit."""
    try:
        published = zarr.open_group(group.store, mode="r", zarr_format=3, use_consolidated=True).metadata
    except Exception:
        return []  # the group's own zarr.json is checked when it is opened
    copies = published.consolidated_metadata.metadata if published.consolidated_metadata else {}
    found = []
    for name, arr in arrays.items():
        copy = copies.get(name)
        if copy is None:
            continue
        now, then = arr.metadata.to_dict(), copy.to_dict()
        fields = sorted(k for k in now.keys() | then.keys() if k != "shape" and now.get(k) != then.get(k))
        if fields:
            found.append(Damage(name, "zarr.json", f"{path}: array '{name}' metadata file {name}/zarr.json differs "
                                f"from the copy published at the last commit in field(s) {', '.join(fields)}; "
                                "the store is damaged"))
    return found
