"""Checks shared by the trajectory store's tests: what a store must read back as, built without it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import xarray as xr

from data_pipeline.schema import COMMITTED, Episode, StoreSchema


def expected_dataset(schema: StoreSchema, episodes: list[Episode]) -> xr.Dataset:
    """What a store holding `episodes` must read back as, built without the store."""
    n_rows = [ep.num_rows for ep in episodes]
    starts = np.cumsum([0, *n_rows[:-1]])
    flag = {name: [] for name in ("is_first", "is_last")}
    for n in n_rows:
        flag["is_first"].append(np.r_[True, np.zeros(n - 1, bool)])
        flag["is_last"].append(np.r_[np.zeros(n - 1, bool), True])

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(ep, name) for ep in episodes])

    data = {
        "action": (("step", "action_channel"), cat("action")),
        "reward": ("step", cat("reward")),
        "terminated": ("step", cat("terminated")),
        "truncated": ("step", cat("truncated")),
        "is_first": ("step", np.concatenate(flag["is_first"])),
        "is_last": ("step", np.concatenate(flag["is_last"])),
        "time": ("step", cat("time")),
        "episode_id": ("episode", np.array([ep.episode_id for ep in episodes])),
        "episode_start": ("episode", starts.astype(np.int64)),
        "episode_length": ("episode", np.array(n_rows, np.int64)),
        "episode_source": ("episode", np.array([ep.source for ep in episodes])),
        "episode_seed": ("episode", np.array([ep.seed for ep in episodes], np.int64)),
        "episode_start_time": ("episode", np.array([ep.start_time for ep in episodes], np.int64)),
        "episode_status": ("episode", np.full(len(episodes), COMMITTED, np.int8)),
    }
    if schema.obs_dim:
        data["obs"] = (("step", "obs_channel"), cat("obs"))
    if schema.image_shape:
        data["image"] = (("step", "height", "width", "color"), cat("image"))
    coords = {
        "obs_channel": schema.obs_channels,
        "obs_unit": ("obs_channel", schema.obs_units),
        "action_channel": schema.action_channels,
        "action_unit": ("action_channel", schema.action_units),
    }
    return xr.Dataset(data, coords=coords)


def assert_store_holds(ds: xr.Dataset, schema: StoreSchema, episodes: list[Episode]) -> None:
    """`ds` (read from a store) has exactly the episodes' data, channels and units."""
    expected = expected_dataset(schema, episodes)
    actual = ds.drop_vars([v for v in ds.data_vars if v not in expected.data_vars]).load()
    for name in list(expected.variables):  # attrs (long names, units) are checked elsewhere
        expected[name].attrs = dict(actual[name].attrs)
    expected.attrs = dict(actual.attrs)
    xr.testing.assert_identical(actual, expected)


def store_digest(path: str) -> dict[str, str]:
    """Every file of a store (and its lock file's existence) with the hash of its bytes."""
    root = Path(path)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def episode_equal(got: Episode, want: Episode) -> None:
    for name in ("obs", "image", "action", "reward", "terminated", "truncated", "time"):
        a, b = getattr(got, name), getattr(want, name)
        if b is None:
            assert a is None, name
            continue
        np.testing.assert_array_equal(a, b, err_msg=name)
        assert a.dtype == b.dtype, name
    assert (got.episode_id, got.source, got.seed, got.start_time) == (
        want.episode_id, want.source, want.seed, want.start_time)
