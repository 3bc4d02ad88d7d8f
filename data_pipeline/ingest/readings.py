"""The rules a timestamp and a reading obey, shared by the file ingest and the live stream.

One home for: timestamps in the spec's unit (or date-time text) as int64 ns, each channel's valid
range (low / high, or a Discrete action's integers), and what a written NaN / Inf becomes under the
spec's `nan_policy`. The file ingest calls these with whole columns, the stream with one message's
values, so both refuse and repair exactly the same readings.

These functions say *what* is wrong (`ReadingError`: the position of the first bad value and what
was expected); the caller says *where* (file, column and row, or message and key).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import numpy.typing as npt
import pandas as pd

from data_pipeline.errors import UserError
from data_pipeline.ingest.spec import IngestSpec, TimestampSpec

TIME_UNITS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
"""Nanoseconds per unit of a numeric timestamp (`timestamp.unit`)."""


class ReadingError(UserError, ValueError):
    """A value that breaks a rule: `index` is its position in what was checked, `expected` what is right."""

    def __init__(self, index: int, value: Any, expected: str) -> None:
        value = value.item() if isinstance(value, np.generic) else value  # 'nan', not 'np.float64(nan)'
        super().__init__(f"{value!r} at position {index}; expected {expected}")
        self.index = index
        self.value = value
        self.expected = expected


def first_true(mask: npt.ArrayLike) -> int:
    """Flat position of the first True of a non-empty selection."""
    return int(np.flatnonzero(mask)[0])


# ---------------------------------------------------------------------- time
def expected_time(ts: TimestampSpec) -> str:
    """What a timestamp must look like under the spec, for error messages."""
    if ts.unit == "datetime":
        return f"a date-time in format {ts.format or 'ISO 8601'} (timestamp.format)"
    return f"a finite number in {ts.unit} (timestamp.unit)"


@overload
def numbers_to_ns(values: int | float, ts: TimestampSpec) -> int: ...
@overload
def numbers_to_ns(values: np.ndarray, ts: TimestampSpec) -> np.ndarray: ...
def numbers_to_ns(values: int | float | np.ndarray, ts: TimestampSpec) -> int | np.ndarray:
    """Numeric timestamps in `ts.unit` as int64 ns: integers exactly, floats rounded to the nearest ns
    (half to even). A column (R,) gives (R,) int64; one number (a stream message's) gives an int, by
    the same rule without numpy's per-call cost. Raises ReadingError at the first NaN / Inf."""
    scale = TIME_UNITS[ts.unit]
    if isinstance(values, int):
        return values * scale
    if isinstance(values, float):
        if not math.isfinite(values):
            raise ReadingError(0, values, expected_time(ts))
        return round(values * scale)
    if np.issubdtype(values.dtype, np.integer):
        return values.astype(np.int64) * scale
    bad = ~np.isfinite(values)
    if bad.any():
        i = first_true(bad)
        raise ReadingError(i, values[i], expected_time(ts))
    return np.round(values * scale).astype(np.int64)


@overload
def datetimes_to_ns(text: str, ts: TimestampSpec) -> int: ...
@overload
def datetimes_to_ns(text: Sequence[Any] | np.ndarray, ts: TimestampSpec) -> np.ndarray: ...
def datetimes_to_ns(text: str | Sequence[Any] | np.ndarray, ts: TimestampSpec) -> int | np.ndarray:
    """Date-time text as int64 ns since the epoch; naive times are UTC. A column (R,) gives (R,) int64,
    one text an int (pandas' same parser). Raises ReadingError at the first text that does not parse
    with `timestamp.format` (ISO 8601 when unset)."""
    if isinstance(text, str):
        try:
            return int(pd.to_datetime(text, format=ts.format or "ISO8601", utc=True).value)
        except (ValueError, TypeError):
            raise ReadingError(0, text, expected_time(ts)) from None
    series = pd.Series(text, dtype=object)
    stamps = pd.to_datetime(series, format=ts.format or "ISO8601", utc=True, errors="coerce")
    if stamps.isna().any():
        i = first_true(stamps.isna().to_numpy())
        raise ReadingError(i, series.iloc[i], expected_time(ts))
    return stamps.dt.tz_convert(None).to_numpy("datetime64[ns]").view(np.int64)


# ---------------------------------------------------------------------- ranges
@dataclass(frozen=True)
class ChannelRanges:
    """Valid readings of every channel, in `IngestSpec.channels()` order."""

    low: np.ndarray
    """(K, 1) float64, -inf where unbounded."""
    high: np.ndarray
    """(K, 1) float64, +inf where unbounded."""
    integer: np.ndarray
    """(K, 1) bool: a Discrete action channel, whose readings must be whole numbers."""
    any_integer: bool
    expected: list[str]
    """Per channel, what a valid reading is (for error messages)."""

    @classmethod
    def of(cls, spec: IngestSpec) -> ChannelRanges:
        low, high, integer, expected = [], [], [], []
        for group, ch in spec.channels():
            lo: float = -np.inf if ch.low is None else ch.low
            hi: float = np.inf if ch.high is None else ch.high
            discrete = group == "action" and spec.action.type == "discrete"
            if discrete:
                lo, hi = spec.action.start, spec.action.start + (spec.action.n or 0) - 1
            what = "an integer" if discrete else "a number"
            source = "action.n/start" if discrete else "low/high"
            low.append(lo)
            high.append(hi)
            integer.append(discrete)
            expected.append(f"{what} in [{lo}, {hi}] ({source} of channel '{ch.name}')")
        return cls(low=np.array(low, np.float64)[:, None], high=np.array(high, np.float64)[:, None],
                   integer=np.array(integer, bool)[:, None], any_integer=any(integer), expected=expected)

    def first_violation(self, data: np.ndarray) -> tuple[int, int] | None:
        """(channel, row) of the first reading outside its range in `data` (K, R), channels in order;
        None when all are valid. Missing readings (NaN) are never out of range."""
        bad = (data < self.low) | (data > self.high)
        if self.any_integer:
            bad |= self.integer & np.isfinite(data) & (data != np.round(data))
        if not bad.any():
            return None
        k = first_true(bad.any(axis=1))
        return k, first_true(bad[k])


# ---------------------------------------------------------------------- NaN rules
def refuse_bad_readings(values: np.ndarray, bad: np.ndarray, nan_policy: str, how_to_skip: str) -> None:
    """Under `nan_policy: error`, raise ReadingError at the first written NaN / Inf (`bad`, same shape as
    `values`). `how_to_skip` tells the user how to say "not reported" instead ("leave the cell empty")."""
    if nan_policy == "error" and bad.any():
        i = first_true(bad)
        raise ReadingError(i, values.flat[i], f"a finite number ({how_to_skip} where the sensor did not "
                                              "report, or choose a nan_policy: drop, fill, interpolate)")


def apply_nan_policy(data: np.ndarray, bad: np.ndarray, spec: IngestSpec,
                     time_s: np.ndarray | None = None) -> np.ndarray | None:
    """Repair written NaN / Inf readings `bad` of `data` (K, R) in place as `spec.nan_policy` says.

    `fill` writes fill_value; `interpolate` is linear in time between the channel's good readings
    when `time_s` (R,) is given (a whole log), else the reading counts as not reported and the
    resampling fills it (a live sample, whose later neighbours have not arrived). Returns the (R,)
    mask of rows to keep (`drop` removes the whole row, other sensors' readings in it too), or None
    when every row stays. `error` was refused before (`refuse_bad_readings`).
    """
    if not bad.any():
        return None
    if spec.nan_policy == "fill":
        data[bad] = spec.fill_value
    elif spec.nan_policy == "drop":
        return np.asarray(~bad.any(axis=0))
    elif spec.nan_policy == "interpolate":
        if time_s is None:
            data[bad] = np.nan
            return None
        for k in np.flatnonzero(bad.any(axis=1)):
            v, m = data[k], bad[k]
            good = np.isfinite(v)
            v[m] = np.interp(time_s[m], time_s[good], v[good]) if good.any() else np.nan
    return None
