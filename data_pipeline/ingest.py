"""Ingest sensor logs (CSV or Parquet, one file or a glob) into a trajectory store.

    python -m data_pipeline ingest csv "logs/*.csv" --spec configs/ingest/example_spec.yaml --out plant.zarr

A YAML spec (docs/ingest.md, parsed by `data_pipeline.ingest_spec`) maps columns to observation /
action / reward channels and says how to put irregular, multi-rate samples onto the fixed step
`dt`. In the raw log an empty cell (Parquet: null) means "this sensor did not report in this row";
a written NaN or Inf is a bad reading, handled by the spec's `nan_policy`.

Everything is read, resampled and validated before the store is created or opened for writing, so
a bad input leaves the store untouched. All episodes go to the store in one `append` call.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import os
import time as _time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import xarray as xr

from data_pipeline.ingest_spec import GROUPS, TIME_UNITS, IngestSpec, SpecError
from data_pipeline.schema import DISCRETE_FILL, Episode, StoreSchema
from data_pipeline.store import TrajectoryStore
from data_pipeline.validate import DataValidationError, check_schema_matches, validate_episode

__all__ = ["IngestSpec", "SpecError", "episodes_of", "expand_inputs", "ingest_file", "read_log"]

FORMATS = ("csv", "parquet")


# ---------------------------------------------------------------------- reading
@dataclass
class RawLog:
    """The mapped columns of one file, checked, sorted by (episode, time), bad readings handled."""

    path: str
    fmt: str
    row: np.ndarray
    """(R,) int64: each row's 0-based data row in the file (for messages)."""
    time_ns: np.ndarray
    """(R,) int64 timestamps."""
    episode: np.ndarray
    """(R,) int64 episode codes 0…E-1 in order of first appearance."""
    episode_names: list[str]
    data: np.ndarray
    """(K, R) float64, one row per channel in `IngestSpec.channels()` order; NaN where the sensor did
    not report. Channel-major, so each channel's readings are contiguous for resampling."""

    def where(self, i: int) -> str:
        """A data row as a user finds it: CSV line numbers count the header and start at 1."""
        return f"row {i} (line {i + 2})" if self.fmt == "csv" else f"row {i}"

    def take(self, rows: np.ndarray) -> None:
        """Keep (or reorder to) `rows`."""
        self.row, self.time_ns, self.episode = self.row[rows], self.time_ns[rows], self.episode[rows]
        self.data = self.data[:, rows]


def _columns_of(path: str, fmt: str) -> list[str]:
    if fmt == "parquet":
        return list(pq.read_schema(path).names)
    with open(path, newline="") as f:
        return next(csv.reader(f), [])


def _read_table(path: str, fmt: str, spec: IngestSpec) -> pa.Table:
    wanted = spec.columns()
    have = _columns_of(path, fmt)
    missing = [c for c in wanted if c not in have]
    if missing:
        raise DataValidationError(
            f"{path}: column '{missing[0]}' named in the spec is missing; the file has columns {have}"
        )
    if fmt == "parquet":
        return pq.read_table(path, columns=wanted)
    types = {spec.timestamp.column: pa.string()} if spec.timestamp.format else {}
    if spec.episode_column:
        types[spec.episode_column] = pa.string()  # "007" stays "007"
    # Only an empty cell is "no reading": a written NaN/Inf must reach nan_policy as a bad value.
    convert = pacsv.ConvertOptions(include_columns=wanted, null_values=[""], strings_can_be_null=True,
                                   column_types=types)
    return pacsv.read_csv(path, convert_options=convert)


def _first_non_numeric(col: pa.ChunkedArray) -> tuple[int, str]:
    text = pd.Series(col.to_numpy(zero_copy_only=False), dtype=object)
    parsed = pd.to_numeric(text, errors="coerce")
    bad = parsed.isna().to_numpy() & text.notna().to_numpy()
    bad &= ~text.astype(str).str.strip().str.lower().isin(["nan", "inf", "-inf", "+inf"]).to_numpy()
    i = int(np.flatnonzero(bad)[0]) if bad.any() else 0
    return i, str(text.iloc[i])


def _numeric(table: pa.Table, column: str, raw: RawLog, out: np.ndarray) -> np.ndarray:
    """Write a numeric column into `out` (float64); return its missing-cell (null) mask."""
    col = table[column]
    if pa.types.is_boolean(col.type):
        col = pc.cast(col, pa.int8())
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_null(col.type)):
        i, text = _first_non_numeric(col)
        raise DataValidationError(
            f"{raw.path}: column '{column}' holds the non-numeric value {text!r} at {raw.where(i)} "
            f"(column type {col.type}); expected a number"
        )
    if pa.types.is_null(col.type):  # every cell empty
        out[:] = np.nan
        return np.ones(len(col), bool)
    out[:] = col.to_numpy(zero_copy_only=False)
    return pc.is_null(col).to_numpy(zero_copy_only=False)


def _time_ns(table: pa.Table, raw: RawLog, spec: IngestSpec) -> np.ndarray:
    ts = spec.timestamp
    col = table[ts.column]
    nulls = pc.is_null(col).to_numpy(zero_copy_only=False)
    if nulls.any():
        i = int(np.flatnonzero(nulls)[0])
        raise DataValidationError(f"{raw.path}: timestamp column '{ts.column}' is empty at {raw.where(i)}")
    if ts.unit == "datetime":
        if pa.types.is_timestamp(col.type):
            return pc.cast(pc.cast(col, pa.timestamp("ns")), pa.int64()).to_numpy()
        if not pa.types.is_string(col.type):
            raise DataValidationError(
                f"{raw.path}: timestamp column '{ts.column}' holds {col.type} values ({col[0]} at "
                f"{raw.where(0)}); expected date-time text (timestamp.unit: datetime), or set "
                "timestamp.unit to s, ms, us or ns for numbers"
            )
        text = pd.Series(col.to_numpy(zero_copy_only=False), dtype=object)
        stamps = pd.to_datetime(text, format=ts.format or "ISO8601", utc=True, errors="coerce")
        if stamps.isna().any():
            i = int(np.flatnonzero(stamps.isna().to_numpy())[0])
            raise DataValidationError(
                f"{raw.path}: timestamp column '{ts.column}' has {text.iloc[i]!r} at {raw.where(i)}; "
                f"expected a date-time in format {ts.format or 'ISO 8601'} (timestamp.format)"
            )
        return stamps.dt.tz_convert(None).to_numpy("datetime64[ns]").view(np.int64)
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        i, text = _first_non_numeric(col) if pa.types.is_string(col.type) else (0, str(col[0]))
        raise DataValidationError(
            f"{raw.path}: timestamp column '{ts.column}' holds {text!r} at {raw.where(i)}; expected a number "
            f"in {ts.unit} (timestamp.unit), or set timestamp.unit: datetime"
        )
    scale = TIME_UNITS[ts.unit]
    if pa.types.is_integer(col.type):
        return col.to_numpy().astype(np.int64) * scale
    seconds = col.to_numpy()
    bad = ~np.isfinite(seconds)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataValidationError(
            f"{raw.path}: timestamp column '{ts.column}' is {seconds[i]} at {raw.where(i)}; "
            "expected a finite number"
        )
    return np.round(seconds * scale).astype(np.int64)


def _fmt_time(ns: int, spec: IngestSpec) -> str:
    if spec.timestamp.unit == "datetime":
        return str(pd.Timestamp(int(ns), unit="ns"))
    return f"{ns / TIME_UNITS[spec.timestamp.unit]:g} {spec.timestamp.unit}"


def read_log(path: str, fmt: str, spec: IngestSpec) -> RawLog:
    """Read and check one file: columns, types, timestamp order, bad readings (nan_policy), bounds."""
    table = _read_table(path, fmt, spec)
    n, channels = table.num_rows, spec.channels()
    raw = RawLog(path=path, fmt=fmt, row=np.arange(n, dtype=np.int64), time_ns=np.zeros(n, np.int64),
                 episode=np.zeros(n, np.int64), episode_names=[""], data=np.empty((len(channels), n)))
    bad = np.zeros((len(channels), n), bool)  # written NaN/Inf readings (not empty cells)
    for k, (_group, ch) in enumerate(channels):
        missing = _numeric(table, ch.column, raw, raw.data[k])
        if missing.all():
            raise DataValidationError(
                f"{path}: column '{ch.column}' is empty in every row; "
                f"expected readings of channel '{ch.name}'"
            )
        bad[k] = ~np.isfinite(raw.data[k]) & ~missing
        if spec.nan_policy == "error" and bad[k].any():
            i = int(np.flatnonzero(bad[k])[0])
            raise DataValidationError(
                f"{path}: column '{ch.column}' is {raw.data[k, i]} at {raw.where(i)}; expected a finite "
                "number (leave the cell empty where the sensor did not report, or choose a nan_policy: "
                "drop, fill, interpolate)"
            )
        raw.data[k, missing] = np.nan
    raw.time_ns = _time_ns(table, raw, spec)
    if spec.episode_column:
        col = table[spec.episode_column]
        nulls = pc.is_null(col).to_numpy(zero_copy_only=False)
        if nulls.any():
            i = int(np.flatnonzero(nulls)[0])
            raise DataValidationError(
                f"{path}: episode column '{spec.episode_column}' is empty at {raw.where(i)}; "
                "expected an episode id"
            )
        codes, names = pd.factorize(col.to_numpy(zero_copy_only=False))
        raw.episode = codes.astype(np.int64)
        raw.episode_names = [str(v) for v in names]
    order = _check_time_order(raw, spec)
    if order is not None:
        raw.take(order)
        bad = bad[:, order]
    if bad.any():
        _apply_nan_policy(raw, spec, bad)
    _check_ranges(raw, spec)
    return raw


def _check_time_order(raw: RawLog, spec: IngestSpec) -> np.ndarray | None:
    """Check timestamps strictly increase within each episode in file order; return the permutation
    that sorts rows by (episode, time), or None when they already are."""
    order = np.argsort(raw.episode, kind="stable")
    ep, t = raw.episode[order], raw.time_ns[order]
    wrong = (np.diff(t) <= 0) & (ep[1:] == ep[:-1])
    if wrong.any():
        k = int(np.flatnonzero(wrong)[0])
        i = int(order[k + 1])
        kind = "duplicate" if t[k + 1] == t[k] else "decreasing"
        episode = f" in episode {raw.episode_names[ep[k]]!r}" if spec.episode_column else ""
        raise DataValidationError(
            f"{raw.path}: timestamp column '{spec.timestamp.column}' is {kind} at {raw.where(i)}{episode} "
            f"({_fmt_time(t[k], spec)} at {raw.where(int(order[k]))}, then {_fmt_time(t[k + 1], spec)}); "
            "expected strictly increasing timestamps"
        )
    return None if (np.diff(order) == 1).all() else order


def _apply_nan_policy(raw: RawLog, spec: IngestSpec, bad: np.ndarray) -> None:
    if spec.nan_policy == "fill":
        raw.data[bad] = spec.fill_value
    elif spec.nan_policy == "drop":  # the whole row goes, other sensors' readings in it too
        raw.take(np.flatnonzero(~bad.any(axis=0)))
    elif spec.nan_policy == "interpolate":  # linear in time between the channel's good readings
        t, _ = _axis(raw)
        for k in np.flatnonzero(bad.any(axis=1)):
            v, m = raw.data[k], bad[k]
            good = np.isfinite(v)
            v[m] = np.interp(t[m], t[good], v[good]) if good.any() else np.nan


def _check_ranges(raw: RawLog, spec: IngestSpec) -> None:
    for k, (group, ch) in enumerate(spec.channels()):
        v = raw.data[k]
        low = -np.inf if ch.low is None else ch.low
        high = np.inf if ch.high is None else ch.high
        discrete = group == "action" and spec.action.type == "discrete"
        if discrete:
            low, high = spec.action.start, spec.action.start + spec.action.n - 1
        bad = (v < low) | (v > high)
        if discrete:
            bad |= (v != np.round(v)) & np.isfinite(v)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            what = "an integer" if discrete else "a number"
            raise DataValidationError(
                f"{raw.path}: column '{ch.column}' is {v[i]} at {raw.where(int(raw.row[i]))}; "
                f"expected {what} in [{low}, {high}] ({'action.n/start' if discrete else 'low/high'} of "
                f"channel '{ch.name}')"
            )


# ---------------------------------------------------------------------- resampling
def _episode_t0(raw: RawLog) -> np.ndarray:
    """(E,) int64: the first timestamp of each episode (rows are sorted by episode, then time)."""
    t0 = np.zeros(len(raw.episode_names), np.int64)
    first = np.r_[0, np.flatnonzero(np.diff(raw.episode)) + 1] if raw.episode.size else np.zeros(0, np.int64)
    t0[raw.episode[first]] = raw.time_ns[first]
    return t0


def _axis(raw: RawLog, margin: float = 0.0) -> tuple[np.ndarray, float]:
    """Seconds since each episode's first row, episode e shifted by e * offset (offset: the longest
    episode + margin + 1 s): one increasing axis for the whole file, so every channel is resampled
    in a single xarray call and no interpolation reaches across episodes. Returns (axis, offset)."""
    rel = (raw.time_ns - _episode_t0(raw)[raw.episode]) / 1e9
    offset = float(rel.max(initial=0.0)) + margin + 1.0
    return raw.episode * offset + rel, offset


def _gap_intervals(raw: RawLog, spec: IngestSpec, axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merged open intervals (start, end) on `axis` where some channel went silent for > max_gap."""
    starts, ends = [], []
    for k, (group, _ch) in enumerate(spec.channels()):
        ok = np.isfinite(raw.data[k])
        t, ep = axis[ok], raw.episode[ok]
        gap = (np.diff(t) > spec.max_gap_of(group) * (1 + 1e-9)) & (ep[1:] == ep[:-1])
        starts.append(t[:-1][gap])
        ends.append(t[1:][gap])
    a, b = np.concatenate(starts), np.concatenate(ends)
    if not a.size:
        return a, b
    order = np.argsort(a, kind="stable")
    a, b = a[order], b[order]
    new = np.r_[True, a[1:] >= np.maximum.accumulate(b)[:-1]]
    heads = np.flatnonzero(new)
    return a[heads], np.maximum.reduceat(b, heads)


def _interp_rows(values: np.ndarray, *, time: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """np.interp of each row of `values` (..., time) at `grid`: the numpy kernel xarray's own
    interpolate_na uses (DataArray.interp goes through scipy's interp1d, 5-10x slower on long logs)."""
    flat = values.reshape(-1, time.size)
    out = np.empty((flat.shape[0], grid.size), np.float32)
    for i, row in enumerate(flat):  # over channels; each np.interp covers the whole log
        out[i] = np.interp(grid, time, row)
    return out.reshape(*values.shape[:-1], grid.size)


def _resample_group(data: np.ndarray, resample: str, max_gap: float, axis: np.ndarray, keep: np.ndarray,
                    grid: np.ndarray) -> np.ndarray:
    """(len(grid), channels) float32: the channels `data` (channels, rows) on the grid, with xarray."""
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


def episodes_of(raw: RawLog, spec: IngestSpec, schema: StoreSchema) -> list[Episode]:
    """Split `raw` at gaps longer than max_gap, resample each piece onto dt, return the episodes."""
    axis, offset = _axis(raw, margin=max(spec.max_gap_of(g) for g in GROUPS))  # episodes > max_gap apart
    gap_a, gap_b = _gap_intervals(raw, spec, axis)
    ended = np.searchsorted(gap_b, axis, side="right")
    keep = np.searchsorted(gap_a, axis, side="left") <= ended  # rows strictly inside a gap: no episode
    cut = np.r_[True, (np.diff(raw.episode) != 0) | (np.diff(ended) != 0)]
    piece = np.cumsum(cut) - 1  # piece index of each row, nondecreasing
    n_pieces = int(piece[-1]) + 1 if piece.size else 0

    # A piece's grid spans the time where every channel has readings: from the latest first reading
    # to the earliest last one, starting on a whole multiple of dt so that files line up.
    start = np.full(n_pieces, np.iinfo(np.int64).min)
    stop = np.full(n_pieces, np.iinfo(np.int64).max)
    for k in range(len(raw.data)):
        ok = keep & np.isfinite(raw.data[k])
        p, t = piece[ok], raw.time_ns[ok]
        heads = np.r_[0, np.flatnonzero(np.diff(p)) + 1] if p.size else np.zeros(0, np.int64)
        present = p[heads]
        absent = np.ones(n_pieces, bool)
        absent[present] = False
        start[present] = np.maximum(start[present], t[heads])
        stop[present] = np.minimum(stop[present], t[np.r_[heads[1:] - 1, p.size - 1]])
        start[absent], stop[absent] = 0, -1
    dt_ns = round(spec.dt * 1e9)
    start = -(-start // dt_ns) * dt_ns
    transitions = np.where(stop >= start, (stop - start) // dt_ns, -1)
    too_short = transitions < spec.min_transitions
    if too_short.any() and spec.short_episodes == "error":
        _raise_short(raw, spec, piece, int(np.flatnonzero(too_short)[0]), int(transitions[too_short][0]))

    good = np.flatnonzero(~too_short)
    lengths = transitions[good] + 1
    offsets = np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64)
    k = np.arange(int(lengths.sum())) - np.repeat(offsets, lengths)
    grid_ns = np.repeat(start[good], lengths) + dt_ns * k
    ep_of_piece = raw.episode[np.searchsorted(piece, good)]
    e = np.repeat(ep_of_piece, lengths)
    grid = e * offset + (grid_ns - _episode_t0(raw)[e]) / 1e9  # ns differences first: exact epoch times

    n_obs, n_act = len(spec.observation.channels), len(spec.action.channels)
    obs = _resample_group(raw.data[:n_obs], spec.observation.resample, spec.max_gap_of("observation"),
                          axis, keep, grid)
    act = _resample_group(raw.data[n_obs:n_obs + n_act], spec.action.resample, spec.max_gap_of("action"),
                          axis, keep, grid)
    if spec.reward is not None:
        rew = _resample_group(raw.data[n_obs + n_act:], spec.reward.resample, spec.max_gap_of("reward"),
                              axis, keep, grid)[:, 0]
    else:
        rew = np.zeros(grid.size, np.float32)
    if schema.discrete:
        act = np.where(np.isfinite(act), np.round(act), DISCRETE_FILL).astype(np.int64)

    episodes = []
    stem = Path(raw.path).name
    n_split = np.bincount(ep_of_piece, minlength=len(raw.episode_names))
    split_index = np.zeros(len(raw.episode_names), np.int64)
    for j, (a, n) in enumerate(zip(offsets.tolist(), lengths.tolist(), strict=True)):
        b, e = a + n, int(ep_of_piece[j])
        name = f"{stem}:{raw.episode_names[e]}" if spec.episode_column else stem
        if n_split[e] > 1:  # a gap split this episode: number its pieces
            name += f"/{split_index[e]}"
        split_index[e] += 1
        action, reward = act[a:b], rew[a:b]  # views, but their last rows belong to this episode only
        action[-1] = DISCRETE_FILL if schema.discrete else np.nan
        reward[-1] = np.nan
        truncated = np.zeros(n, bool)
        truncated[-1] = True  # a log ends (or a gap cuts it) without the system reaching a terminal state
        episodes.append(Episode(
            obs=obs[a:b], action=action, reward=reward, terminated=np.zeros(n, bool), truncated=truncated,
            time=grid_ns[a:b], episode_id=name, source=raw.path, start_time=int(grid_ns[a]),
        ))
    return episodes


def _raise_short(raw: RawLog, spec: IngestSpec, piece: np.ndarray, k: int, transitions: int) -> None:
    rows = raw.row[piece == k]
    e = raw.episode[np.searchsorted(piece, k)]
    name = f"episode {raw.episode_names[e]!r}, " if spec.episode_column else ""
    raise DataValidationError(
        f"{raw.path}: {name}{raw.where(int(rows.min()))} to {raw.where(int(rows.max()))} give "
        f"{max(transitions, 0)} transitions on the dt={spec.dt} s grid (episodes are split at gaps longer "
        "than max_gap and cover the time where every channel has readings); expected at least "
        f"{spec.min_transitions} (min_transitions), or set short_episodes: drop"
    )


# ---------------------------------------------------------------------- entry point
def _sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def expand_inputs(pattern: str) -> list[str]:
    """The files a path or glob names, sorted; raise if there are none."""
    files = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
    files = [f for f in files if os.path.isfile(f)]
    if not files:
        raise FileNotFoundError(f"{pattern}: no such file (or the glob matches no files)")
    return files


def ingest_file(
    fmt: str,
    input: str,
    spec_path: str | os.PathLike | None,
    out: str,
    *,
    overwrite: bool = False,
    append: bool = False,
) -> TrajectoryStore:
    """Ingest the CSV/Parquet file(s) `input` (a path or glob) into the store `out`, as `spec_path` says.

    Returns the store, open for writing (close it when done). Raises `DataValidationError` (bad
    data) or `SpecError` (bad spec) before anything is written, so `out` is untouched on error.
    With `append=True` the store must exist and have the same schema (channels, units, spaces, dt).
    """
    if fmt not in FORMATS:
        raise ValueError(f"ingest format {fmt!r}; expected one of {FORMATS}")
    if spec_path is None:
        raise ValueError(f"ingest {fmt} needs a spec: --spec SPEC.yaml (see docs/ingest.md)")
    if overwrite and append:
        raise ValueError("choose either overwrite or append, not both")
    spec = IngestSpec.from_yaml(spec_path)
    files = expand_inputs(input)
    provenance: dict[str, Any] = {
        "source": "ingest",
        "format": fmt,
        "files": [{"path": f, "sha256": _sha256(f)} for f in files],
        "spec_path": str(spec_path),
        "spec_sha256": _sha256(str(spec_path)),
        "spec": spec.raw,
        "ingested_at_ns": _time.time_ns(),
        "versions": {"pandas": pd.__version__, "xarray": xr.__version__, "pyarrow": pa.__version__},
    }
    if spec.reward is None:
        provenance["reward"] = "no reward column in the spec: reward stored as 0"
    schema = spec.schema(provenance)

    episodes: list[Episode] = []
    for f in files:
        episodes.extend(episodes_of(read_log(f, fmt, spec), spec, schema))
    if not episodes:
        raise DataValidationError(
            f"{input}: no episode of at least {spec.min_transitions} transitions (min_transitions) "
            "in the input"
        )

    existing: set[str] = set()
    if append:
        with TrajectoryStore.open(out, mode="r") as stored:
            check_schema_matches(stored.schema, schema, source=f"{input} (spec {spec_path})")
            existing = set(stored.episodes()["id"])
    for ep in episodes:
        validate_episode(ep, schema, min_transitions=spec.min_transitions, existing_ids=existing)
        existing.add(ep.episode_id)

    if append:
        store = TrajectoryStore.open(out, mode="a")
    else:
        store = TrajectoryStore.create(out, schema, overwrite=overwrite)
    store.append(episodes, min_transitions=spec.min_transitions)
    if append:
        history = list(store.attrs.get("ingest_appends", []))
        store.set_attr("ingest_appends", [*history, {k: provenance[k] for k in ("files", "spec_sha256",
                                                                                 "ingested_at_ns")}])
    return store
