"""Irregular readings onto the fixed step: the log's time axis and `resample_group`, the one resampling
rule of the file ingest and the live stream (docs/ingest.md, "From irregular samples to a fixed step").

`interpolate` is linear in time (numpy.interp through xarray.apply_ufunc); `hold` keeps the last
reading at or before each grid instant, never longer than max_gap (DataArray.reindex with ffill).
"""

from __future__ import annotations

import numpy as np
import xarray as xr


def episode_starts(time_ns: np.ndarray, episode: np.ndarray, n_episodes: int) -> np.ndarray:
    """(E,) int64: the first timestamp of each episode (rows sorted by episode, then time)."""
    t0 = np.zeros(n_episodes, np.int64)
    first = np.r_[0, np.flatnonzero(np.diff(episode)) + 1] if episode.size else np.zeros(0, np.int64)
    t0[episode[first]] = time_ns[first]
    return t0


def time_axis(time_ns: np.ndarray, episode: np.ndarray, n_episodes: int,
              margin: float = 0.0) -> tuple[np.ndarray, float]:
    """Seconds since each episode's first row, episode e shifted by e * offset (offset: the longest
    episode + margin + 1 s): one increasing axis for the whole file, so every channel is resampled
    in a single xarray call and no interpolation reaches across episodes. Returns (axis, offset)."""
    rel = (time_ns - episode_starts(time_ns, episode, n_episodes)[episode]) / 1e9
    offset = float(rel.max(initial=0.0)) + margin + 1.0
    return episode * offset + rel, offset


def _interp_rows(values: np.ndarray, *, time: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """np.interp of each row of `values` (..., time) at `grid`: the numpy kernel xarray's own
    interpolate_na uses (DataArray.interp goes through scipy's interp1d, 5-10x slower on long logs)."""
    flat = values.reshape(-1, time.size)
    out = np.empty((flat.shape[0], grid.size), np.float32)
    for i, row in enumerate(flat):  # over channels; each np.interp covers the whole log
        out[i] = np.interp(grid, time, row)
    return out.reshape(*values.shape[:-1], grid.size)


def resample_group(data: np.ndarray, resample: str, max_gap: float, axis: np.ndarray, keep: np.ndarray,
                   grid: np.ndarray) -> np.ndarray:
    """One channel group on the grid: (len(grid), channels) float32.

    `data` (channels, rows) holds the readings (NaN: not reported) at times `axis` (rows,) in
    seconds, `keep` (rows,) masks the rows that take part (rows inside a gap do not), `grid` holds
    the instants on the same axis. Gaps longer than `max_gap` must have been split off before; a
    held value never lasts longer than `max_gap`.
    """
    masks = keep & np.isfinite(data)
    # Channels that report in the same rows share one xarray call; multi-rate channels get their own.
    batches: list[list[int]] = []
    for j in range(len(data)):
        same = next((b for b in batches if np.array_equal(masks[b[0]], masks[j])), None)
        if same is None:
            batches.append([j])
        else:
            same.append(j)
    out = np.empty((len(data), grid.size), np.float32)
    for b in batches:
        m = masks[b[0]]
        rows = slice(None) if m.all() else m
        sel = slice(b[0], b[-1] + 1) if b == list(range(b[0], b[-1] + 1)) else b
        da = xr.DataArray(data[sel][:, rows], dims=("channel", "time"), coords={"time": axis[rows]})
        if resample == "interpolate":  # gaps longer than max_gap were split off before
            res = xr.apply_ufunc(_interp_rows, da, input_core_dims=[["time"]], output_core_dims=[["grid"]],
                                 exclude_dims={"time"}, kwargs={"time": axis[rows], "grid": grid})
        else:  # hold the last reading, never longer than max_gap
            res = da.reindex(time=grid, method="ffill", tolerance=max_gap * (1 + 1e-9) + 1e-12)
            res = res.rename(time="grid")
        out[b] = res.transpose("channel", "grid").values
    return out.T
