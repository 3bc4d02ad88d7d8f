"""The scenario store (DESIGN contract 6) that generate.py writes: layout, creation, block writes.

Layout (read with `xarray.open_zarr(path)`; docs/scenarios.md):

    obs          (scenario, sample, time, obs_channel)      imagined observations, physical units
    action       (scenario, sample, time, action_channel)   actions applied (int64 for Discrete)
    reward       (scenario, sample, time)                   imagined reward of each step
    terminated   (scenario, sample, time)                   predicted probability of a terminal state
    uncertainty  (scenario, sample, time)                   epistemic uncertainty (in channel stds)
    factual_obs  (scenario, time, obs_channel)              recorded future, NaN past the recorded end
    start_obs    (scenario, obs_channel)                    observation at the start (after sensor offsets)
    coordinates  scenario, start, intervention, start_episode (position), start_episode_id, start_t,
                 start_time (ns), sample, time (steps 1..H), time_s, obs_channel, action_channel, units
    attrs        title ("twinworld scenario store"), layout_version, model, model_type, store, store_fingerprint,
                 spec (YAML), seed, horizon, samples, ...

`start_episode` is the position in the source store's episode table, as in the env's reset info;
`start_episode_id` is the episode's id. Time step k holds the state after k imagined steps from the
start row t (the recorded row t + k). Arrays are chunked by blocks of scenarios, so ranks write
disjoint chunks of one store.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from data_pipeline.schema import StoreSchema
from data_pipeline.store.codecs import compressors, consolidate
from data_pipeline.store.overwrite import TITLES, check_output
from data_pipeline.store.paths import zarr_path

LAYOUT_VERSION = "1.1"
"""1.1: `start_episode` is the episode's position (1.0: its id, with the position in `start_episode_index`)."""
_LONG_NAMES = {
    "obs": "imagined observation after `time` steps",
    "action": "action applied at step time-1 -> time",
    "reward": "imagined reward of the step into `time`",
    "terminated": "predicted probability that the state at `time` is terminal",
    "uncertainty": "epistemic uncertainty of the step (ensemble disagreement, in channel stds)",
    "factual_obs": "recorded observation at start_t + time (NaN past the recorded end)",
    "start_obs": "observation at the start row (with the intervention's sensor offset)",
}
_SCENARIO_COORDS = ("start", "intervention", "start_episode", "start_episode_id", "start_t", "start_time")
_INTEGER_COORDS = ("start_episode", "start_t", "start_time")


@dataclass
class ScenarioIndex:
    """One entry per scenario (start-major: all interventions of a start are neighbours)."""

    name: list[str]
    start: list[str]
    intervention: list[str]
    start_episode: list[int]
    """Position in the source store's episode table (-1 for a history file)."""
    start_episode_id: list[str]
    """Episode id in the source store ('' for a history file)."""
    start_t: list[int]
    """Row of the episode the scenario starts from (its last assimilated observation)."""
    start_time: list[int]
    """Time of the start row, ns since the epoch (-1 when unknown)."""

    def __len__(self) -> int:
        return len(self.name)


def block_ranges(n: int, block: int) -> list[tuple[int, int]]:
    """Scenario slices [a, b) of at most `block` scenarios: the unit of work and of chunking."""
    return [(a, min(a + block, n)) for a in range(0, n, block)]


def open_scenarios(path: str | Path, mode: str = "r") -> zarr.Group:
    """The scenario store's root group (metadata read unconsolidated: a store may still be written)."""
    return zarr.open_group(str(path), mode=mode, zarr_format=3, use_consolidated=False)  # type: ignore[arg-type]


def member(group: zarr.Group, name: str) -> zarr.Array:
    """An array of the store; a group or a missing name is an error naming the store."""
    arr = group.get(name)
    if not isinstance(arr, zarr.Array):
        raise KeyError(f"{group.store}: no array {name!r} in the scenario store")
    return arr


def read(group: zarr.Group, name: str, rows: slice = slice(None)) -> np.ndarray:
    """Rows of an array as numpy (the first dimension is the scenario for data, the coordinate's own)."""
    return np.asarray(member(group, name)[rows])


def labels(group: zarr.Group, name: str) -> list[str]:
    """A string coordinate as a list of str."""
    return [str(x) for x in read(group, name)]


def create_scenario_store(
    path: str | Path,
    index: ScenarioIndex,
    schema: StoreSchema,
    *,
    samples: int,
    horizon: int,
    block: int,
    attrs: dict[str, Any],
    overwrite: bool = False,
) -> None:
    """Create the empty store (arrays filled with NaN) with its coordinates and attrs.

    Only a scenario store is replaced, and only with `overwrite` (data_pipeline/store/overwrite.py); the
    caller holds the store's writer lock (scenarios.run.generate does).
    """
    path = str(path)
    replace = check_output(path, "scenario", overwrite=overwrite)
    group = zarr.open_group(zarr_path(path), mode="w" if replace else "w-", zarr_format=3)
    n, d, a = len(index), schema.obs_dim, schema.action_dim
    codecs = compressors(1)
    coord_names = " ".join([*_SCENARIO_COORDS, "time_s", "obs_unit", "action_unit"])

    def data(name: str, dims: list[str], shape: tuple[int, ...], dtype: str, fill: Any) -> None:
        chunks = (min(block, max(n, 1)), *shape[1:])
        arr = group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill,
                                 dimension_names=dims, **codecs)
        arr.attrs.update({"long_name": _LONG_NAMES[name], "coordinates": coord_names})

    def coord(name: str, dim: str, values: Any, dtype: Any) -> None:
        array = np.asarray(values, dtype=object if dtype is str else dtype)
        arr = group.create_array(name, shape=array.shape, chunks=(max(len(array), 1),), dtype=dtype,
                                 dimension_names=[dim])
        if len(array):
            arr[:] = array

    act_dtype, act_fill = ("int64", -1) if schema.discrete else ("float32", np.nan)
    data("obs", ["scenario", "sample", "time", "obs_channel"], (n, samples, horizon, d), "float32", np.nan)
    data("action", ["scenario", "sample", "time", "action_channel"], (n, samples, horizon, a), act_dtype,
         act_fill)
    for name in ("reward", "terminated", "uncertainty"):
        data(name, ["scenario", "sample", "time"], (n, samples, horizon), "float32", np.nan)
    data("factual_obs", ["scenario", "time", "obs_channel"], (n, horizon, d), "float32", np.nan)
    data("start_obs", ["scenario", "obs_channel"], (n, d), "float32", np.nan)
    coord("scenario", "scenario", index.name, str)
    for name in _SCENARIO_COORDS:
        coord(name, "scenario", getattr(index, name), "int64" if name in _INTEGER_COORDS else str)
    coord("sample", "sample", np.arange(samples), "int64")
    coord("time", "time", np.arange(1, horizon + 1), "int64")
    coord("time_s", "time", np.arange(1, horizon + 1) * schema.dt, "float64")
    coord("obs_channel", "obs_channel", schema.obs_channels, str)
    coord("obs_unit", "obs_channel", schema.obs_units, str)
    coord("action_channel", "action_channel", schema.action_channels, str)
    coord("action_unit", "action_channel", schema.action_units, str)
    group.attrs.update({"layout_version": LAYOUT_VERSION, "complete": False, "dt": schema.dt,
                        "block_scenarios": block, **attrs, "title": TITLES["scenario"]})


class ScenarioWriter:
    """Writes blocks of scenarios into an existing scenario store (one writer per block)."""

    def __init__(self, path: str | Path) -> None:
        self.group = open_scenarios(path, mode="r+")

    def write(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Write arrays whose first dimension covers scenarios [start, start + n)."""
        for name, values in arrays.items():
            arr = member(self.group, name)
            arr[start : start + values.shape[0]] = values.astype(arr.dtype, copy=False)


def finish_scenario_store(path: str | Path) -> None:
    """Mark the store complete and consolidate its metadata (after every block is written)."""
    group = open_scenarios(path, mode="r+")
    group.attrs["complete"] = True
    consolidate(group)
