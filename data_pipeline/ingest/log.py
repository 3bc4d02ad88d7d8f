"""Reading one CSV or Parquet file into a `RawLog`: the spec's columns, checked and sorted by time.

In the raw log an empty cell (Parquet: null) means "this sensor did not report in this row"; a
written NaN or Inf is a bad reading, handled by the spec's `nan_policy` (`readings`). Every error is
a `DataValidationError` naming the file, the column and the row (CSV: also the line in the file).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from data_pipeline.ingest.readings import (
    TIME_UNITS,
    ChannelRanges,
    ReadingError,
    apply_nan_policy,
    datetime64_to_ns,
    datetimes_to_ns,
    expected_time,
    first_true,
    numbers_to_ns,
    refuse_bad_readings,
)
from data_pipeline.ingest.resample import time_axis
from data_pipeline.ingest.spec import IngestSpec
from data_pipeline.ingest.timeline import ConflictError, OrderError, merge_instants, sort_order
from data_pipeline.validate import DataValidationError


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

    def axis(self, margin: float = 0.0) -> tuple[np.ndarray, float]:
        """The log's one increasing time axis in seconds (`resample.time_axis`) and its episode offset."""
        return time_axis(self.time_ns, self.episode, len(self.episode_names), margin)


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


_NUMBER_WORDS = ["nan", "+nan", "-nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"]
"""Cells pyarrow reads as NaN / Inf (which pandas' parser also turns into NaN)."""


def _non_numeric_at(raw: RawLog, col: pa.ChunkedArray) -> str:
    """Where a column that should hold numbers first holds text: "'TEXT' at row I (line L)"."""
    text = pd.Series(col.to_numpy(zero_copy_only=False), dtype=object)
    words = text.astype(str).str.strip(" \t")
    bad = pd.to_numeric(text, errors="coerce").isna().to_numpy() & text.notna().to_numpy()
    bad &= ~words.str.lower().isin(_NUMBER_WORDS).to_numpy()
    bad |= words.str.contains(r"\s").to_numpy()  # a quoted line break or carriage return inside a number
    if not bad.any():  # pyarrow refused a cell that pandas reads: name the column, never a wrong row
        return "text that is not a number in some row"
    i = first_true(bad)
    return f"{str(text.iloc[i])!r} at {raw.where(i)}"


def _numeric(table: pa.Table, column: str, raw: RawLog, out: np.ndarray) -> np.ndarray:
    """Write a numeric column into `out` (float64); return its missing-cell (null) mask."""
    col = table[column]
    if pa.types.is_boolean(col.type):
        col = pc.cast(col, pa.int8())
    if not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type) or pa.types.is_null(col.type)):
        raise DataValidationError(f"{raw.path}: column '{column}' holds {_non_numeric_at(raw, col)} (column type "
                                  f"{col.type}); expected a number")
    if pa.types.is_null(col.type):  # every cell empty
        out[:] = np.nan
        return np.ones(len(col), bool)
    out[:] = col.to_numpy(zero_copy_only=False)
    return pc.is_null(col).to_numpy(zero_copy_only=False)


def _timestamps(table: pa.Table, raw: RawLog, spec: IngestSpec) -> np.ndarray:
    """(R,) int64 ns of the timestamp column: a Parquet timestamp, date-time text or numbers in the unit."""
    ts = spec.timestamp
    col = table[ts.column]
    nulls = pc.is_null(col).to_numpy(zero_copy_only=False)
    if nulls.any():
        raise DataValidationError(f"{raw.path}: timestamp column '{ts.column}' is empty at "
                                  f"{raw.where(first_true(nulls))}; expected {expected_time(ts)} in every row")
    if ts.unit == "datetime":
        if pa.types.is_timestamp(col.type):  # UTC instants in the column's unit (s, ms, us or ns)
            stamps = pc.cast(col, pa.timestamp(col.type.unit)).to_numpy(zero_copy_only=False)
            try:
                return datetime64_to_ns(stamps, ts)
            except ReadingError as err:
                raise DataValidationError(f"{raw.path}: timestamp column '{ts.column}' is {err.value} at "
                                          f"{raw.where(err.index)}; expected {err.expected}") from None
        if not pa.types.is_string(col.type):
            raise DataValidationError(
                f"{raw.path}: timestamp column '{ts.column}' holds {col.type} values ({col[0]} at "
                f"{raw.where(0)}); expected date-time text (timestamp.unit: datetime), or set "
                "timestamp.unit to s, ms, us or ns for numbers"
            )
    elif not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
        found = _non_numeric_at(raw, col) if pa.types.is_string(col.type) else f"{str(col[0])!r} at {raw.where(0)}"
        raise DataValidationError(
            f"{raw.path}: timestamp column '{ts.column}' holds {found}; expected a number "
            f"in {ts.unit} (timestamp.unit), or set timestamp.unit: datetime"
        )
    values = col.to_numpy(zero_copy_only=False)
    try:
        return datetimes_to_ns(values, ts) if ts.unit == "datetime" else numbers_to_ns(values, ts)
    except ReadingError as err:
        raise DataValidationError(f"{raw.path}: timestamp column '{ts.column}' is {err.value!r} at "
                                  f"{raw.where(err.index)}; expected {err.expected}") from None


def format_time(ns: int, spec: IngestSpec) -> str:
    """A timestamp as the log writes it: date-time, or a number in `timestamp.unit`."""
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
        try:
            refuse_bad_readings(raw.data[k], bad[k], spec.nan_policy, "leave the cell empty")
        except ReadingError as err:
            raise DataValidationError(f"{path}: column '{ch.column}' is {err.value} at {raw.where(err.index)}; "
                                      f"expected {err.expected}") from None
        raw.data[k, missing] = np.nan
    raw.time_ns = _timestamps(table, raw, spec)
    if spec.episode_column:
        col = table[spec.episode_column]
        nulls = pc.is_null(col).to_numpy(zero_copy_only=False)
        if nulls.any():
            raise DataValidationError(
                f"{path}: episode column '{spec.episode_column}' is empty at {raw.where(first_true(nulls))}; "
                "expected an episode id"
            )
        codes, names = pd.factorize(col.to_numpy(zero_copy_only=False))
        raw.episode = codes.astype(np.int64)
        raw.episode_names = [str(v) for v in names]
    order = _time_order(raw, spec)
    if order is not None:
        raw.take(order)
        bad = bad[:, order]
    bad = _merge_instants(raw, spec, bad)
    if bad.any():
        keep = apply_nan_policy(raw.data, bad, spec, time_s=raw.axis()[0])
        if keep is not None:
            raw.take(np.flatnonzero(keep))
    _check_ranges(raw, spec)
    return raw


def _episode_of(raw: RawLog, spec: IngestSpec, i: int) -> str:
    return f" in episode {raw.episode_names[raw.episode[i]]!r}" if spec.episode_column else ""


def _time_order(raw: RawLog, spec: IngestSpec) -> np.ndarray | None:
    """The permutation that sorts rows by (episode, time), or None when they already are; a row out of order
    by more than `jitter` is refused unless `sort: true` (`timeline.sort_order`)."""
    try:
        return sort_order(raw.time_ns, raw.episode, spec.jitter_ns, spec.sort)
    except OrderError as err:
        i, j = err.index, err.before
        raise DataValidationError(
            f"{raw.path}: timestamp column '{spec.timestamp.column}' is decreasing at {raw.where(i)}"
            f"{_episode_of(raw, spec, i)} ({format_time(raw.time_ns[j], spec)} at {raw.where(j)}, then "
            f"{format_time(raw.time_ns[i], spec)}, {(raw.time_ns[j] - raw.time_ns[i]) / 1e9:g} s earlier); expected "
            f"increasing timestamps (out of order by at most jitter: {spec.jitter:g} s), or set sort: true to "
            "sort the rows by time"
        ) from None


def _merge_instants(raw: RawLog, spec: IngestSpec, bad: np.ndarray) -> np.ndarray:
    """Rows at one instant (the same time) merged into one by the `duplicates` rule (`timeline`); returns
    the merged rows' written-NaN/Inf mask. Rows are sorted by (episode, time)."""
    try:
        merged = merge_instants(raw.time_ns, raw.episode, raw.data, bad, spec.duplicates)
    except ConflictError as err:
        i, j = int(raw.row[err.index]), int(raw.row[err.first])
        column = spec.channels()[err.channel][1].column
        raise DataValidationError(
            f"{raw.path}: timestamp column '{spec.timestamp.column}' is duplicate at {raw.where(i)}"
            f"{_episode_of(raw, spec, err.index)} (the same time as {raw.where(j)}, "
            f"{format_time(raw.time_ns[err.first], spec)}), and both report column '{column}'; expected one reading "
            "per channel and instant, or set duplicates: first, last or mean"
        ) from None
    if merged is None:
        return bad
    raw.take(merged.rows)
    raw.data = merged.data
    return merged.bad


def _check_ranges(raw: RawLog, spec: IngestSpec) -> None:
    ranges = ChannelRanges.of(spec)
    found = ranges.first_violation(raw.data)
    if found is not None:
        k, i = found
        column = spec.channels()[k][1].column
        raise DataValidationError(f"{raw.path}: column '{column}' is {raw.data[k, i]} at "
                                  f"{raw.where(int(raw.row[i]))}; expected {ranges.expected[k]}")
