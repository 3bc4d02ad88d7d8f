"""The on-disk layout of a trajectory store: which arrays exist, their dims, chunks and attrs, and how
the rows of an episode are encoded into them (docs/data-format.md, "Layout" and "Chunks and codecs").

Creation writes the group's `zarr.json` with every attr first, so even a store whose creation was cut
short (a full disk, a kill) is recognizably a twinworld store; `unfinished_store` recognizes one that
holds no data yet, and `create` finishes it instead of refusing the path.
"""

from __future__ import annotations

import json
import math
import re
import time as _time
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.errors import GroupNotFoundError

from data_pipeline.errors import UserError
from data_pipeline.schema import DISCRETE_FILL, EPISODE_VARS, SCHEMA_VERSION, STEP_VARS, StoreSchema
from data_pipeline.store.codecs import compressors
from data_pipeline.store.overwrite import check_output
from data_pipeline.store.paths import local_path, zarr_path
from data_pipeline.validate import DataValidationError

TITLE = "twinworld trajectory store"

# zarr's LocalStore writes each file to `<name>.<uuid hex>.partial` and renames it into place; a
# SIGKILL (or a full disk) between the two leaves the temporary file behind.
PARTIAL_FILE = re.compile(r"\.[0-9a-f]{32}\.partial$")


class StoreCorruptionError(UserError, RuntimeError):
    """Part of a store cannot be read: a chunk failed its checksum, could not be decoded or is missing,
    or an array's or the group's `zarr.json` is missing or cannot be parsed. The message names the array
    and the chunk (or metadata file)."""

DEFAULT_CHUNK_BYTES = 1 << 20  # ≥ 1 MiB per chunk along `step` (contract 1)
TABLE_CHUNK = 4096
CHANNEL_COORDS = ("obs_channel", "obs_unit", "action_channel", "action_unit")

LONG_NAMES = {
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


def create_store_group(path: str, schema: StoreSchema, chunk_steps: int, *, overwrite: bool,
                       storage_options: dict[str, Any] | None) -> zarr.Group:
    """The root group of a new, empty store. Only a trajectory store is replaced, and only with
    `overwrite` (data_pipeline/store/overwrite.py); a twinworld store whose creation did not finish (no
    data) is finished without it."""
    local = local_path(path)
    if local is not None and local.is_dir() and not local.is_symlink() and unfinished_store(local):
        replace = True
    else:
        replace = check_output(path, "trajectory", overwrite=overwrite, storage_options=storage_options)
    # The group's attrs go into its first write, so a store cut short is still recognizably ours.
    group = zarr.open_group(zarr_path(path), mode="w" if replace else "w-", zarr_format=3,
                            storage_options=storage_options, attributes=store_attrs(schema, chunk_steps))
    create_arrays(group, schema, chunk_steps)
    return group


def unfinished_store(local: Path) -> bool:
    """Whether the directory `local` is a twinworld store whose creation was cut short or that never
    received data: its group `zarr.json` is ours (or only zarr's temporary files are there), every entry
    is one a store holds, and no array of rows or of the episode table holds a chunk. Replacing it loses
    nothing."""
    entries = {p.name for p in local.iterdir() if not PARTIAL_FILE.search(p.name)}
    if "zarr.json" in entries:
        try:
            attrs = json.loads((local / "zarr.json").read_bytes()).get("attributes", {})
        except (OSError, ValueError, AttributeError):
            return False
        if not isinstance(attrs, dict) or attrs.get("title") != TITLE or "schema" not in attrs:
            return False
    elif entries:
        return False
    known = {"zarr.json", *STEP_VARS, *EPISODE_VARS, *CHANNEL_COORDS}
    if not entries <= known:
        return False
    return not any((local / name / "c").exists() for name in (*STEP_VARS, *EPISODE_VARS))


def open_store_group(path: str, mode: str, storage_options: dict[str, Any] | None) -> zarr.Group:
    """The root group of an existing store (`mode` "r" or "a"), refusing a group that is no twinworld
    store or whose schema major version this code does not read."""
    # Not the consolidated metadata: it is a snapshot for plain xarray readers, and a writer or a live
    # reader needs the current array shapes.
    try:
        group = zarr.open_group(zarr_path(path), mode="r" if mode == "r" else "r+", zarr_format=3,
                                storage_options=storage_options, use_consolidated=False)
    except GroupNotFoundError:
        local = local_path(path)
        if local is not None and (local / "episode_status" / "zarr.json").exists():
            raise StoreCorruptionError(f"{path}: the group's metadata file zarr.json is missing, but the store's "
                                       "arrays are there; the store is damaged") from None
        raise
    except (ValueError, TypeError, KeyError) as err:  # JSONDecodeError is a ValueError
        raise StoreCorruptionError(f"{path}: the group's metadata file zarr.json cannot be read "
                                   f"({type(err).__name__}: {err}); the store is damaged") from err
    if "schema" not in group.attrs:
        raise DataValidationError(f"{path}: zarr group has no 'schema' attribute; not a twinworld store")
    version = str(group.attrs.get("schema_version", "?"))
    if version.split(".")[0] != SCHEMA_VERSION.split(".")[0]:
        raise DataValidationError(f"{path}: schema_version {version}; this twinworld reads {SCHEMA_VERSION}")
    return group


def read_schema(group: zarr.Group, path: str) -> StoreSchema:
    """The StoreSchema in the group's `schema` attribute."""
    schema = group.attrs["schema"]
    if not isinstance(schema, dict):
        raise DataValidationError(f"{path}: attribute 'schema' is {type(schema).__name__}; expected a mapping")
    try:
        return StoreSchema.from_attrs(dict(schema))
    except (ValueError, TypeError, KeyError) as err:
        raise StoreCorruptionError(f"{path}: attribute 'schema' of the group's zarr.json cannot be read "
                                   f"({type(err).__name__}: {err}); the store is damaged") from err


def array_names(schema: StoreSchema) -> list[str]:
    """Every array a store of `schema` holds: step variables, the episode table, channel coordinates."""
    steps = [n for n in STEP_VARS if (n != "obs" or schema.obs_dim) and (n != "image" or schema.image_shape)]
    return [*steps, *EPISODE_VARS, *CHANNEL_COORDS]


def array_of(group: zarr.Group, name: str) -> zarr.Array:
    """The array `name` of a store's group (a group there means this is no trajectory store).

    A missing or unreadable `NAME/zarr.json` raises StoreCorruptionError naming the array.
    """
    try:
        arr = group[name]
    except KeyError:
        raise StoreCorruptionError(f"{group.store}: array '{name}' is missing (no {name}/zarr.json); "
                                   "the store is damaged") from None
    except (ValueError, TypeError) as err:  # JSONDecodeError is a ValueError; zarr's metadata checks too
        raise StoreCorruptionError(f"{group.store}: array '{name}' metadata file {name}/zarr.json cannot be read "
                                   f"({type(err).__name__}: {err}); the store is damaged") from err
    if not isinstance(arr, zarr.Array):
        raise TypeError(f"{group.store}: '{name}' is a zarr group; a trajectory store holds an array there")
    return arr


def step_vars_of(members: set[str]) -> list[str]:
    """The step variables a store holds, in the canonical order (`obs` and `image` are optional)."""
    return [name for name in STEP_VARS if name in members]


def step_var_dims(name: str) -> list[str]:
    return {
        "obs": ["step", "obs_channel"],
        "image": ["step", "height", "width", "color"],
        "action": ["step", "action_channel"],
    }.get(name, ["step"])


def chunk_steps_for(schema: StoreSchema, chunk_bytes: int) -> int:
    """Rows per chunk: the widest step variable gets ≥ chunk_bytes per chunk (one length for all)."""
    image = int(np.prod(schema.image_shape)) if schema.image_shape else 0
    widest = max(image, 4 * schema.obs_dim, 8 * schema.action_dim, 8)
    return max(64 if image else 256, math.ceil(chunk_bytes / widest))


def create_arrays(group: zarr.Group, schema: StoreSchema, chunk_steps: int) -> None:
    """The empty arrays and attrs of a new store (layout: docs/data-format.md)."""
    codecs = compressors(3)

    def make(name: str, shape: tuple[int, ...], dtype: str, fill: Any, **attrs: Any) -> None:
        arr = group.create_array(name, shape=(0, *shape), chunks=(chunk_steps, *shape), dtype=dtype,
                                 dimension_names=step_var_dims(name), fill_value=fill, **codecs)
        arr.attrs.update({"long_name": LONG_NAMES[name], **attrs})

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
        # Stored even when every unit is "" (the fill value), so a missing chunk always means damage.
        arr = group.create_array(name, shape=(len(values),), chunks=(max(len(values), 1),), dtype=str,
                                 dimension_names=[name.replace("_unit", "_channel")],
                                 config={"write_empty_chunks": True})
        if values:
            arr[:] = np.array(values, dtype=object)

    for name in EPISODE_VARS:
        is_text = name in ("episode_id", "episode_source")
        arr = group.create_array(name, shape=(0,), chunks=(TABLE_CHUNK,),
                                 dtype=str if is_text else "int8" if name == "episode_status" else "int64",
                                 dimension_names=["episode"], fill_value="" if is_text else 0, **codecs)
        arr.attrs["long_name"] = LONG_NAMES[name]


def store_attrs(schema: StoreSchema, chunk_steps: int) -> dict[str, Any]:
    """The group attrs of a new store."""
    return {
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
        "title": TITLE,
        # Units are coordinates along the channel dims, also in a store without `obs` (image only).
        "coordinates": "obs_unit action_unit",
    }


def episode_rows(
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
    """The stored rows of a block of one episode (a whole episode when `first` and `last`), by step variable."""
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
