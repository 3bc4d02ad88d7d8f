"""The rules a timestamp and a reading obey, shared by the file ingest and the live stream.

One home for: timestamps in the spec's unit (or date-time text) as int64 ns, each channel's valid
range (low / high, or a Discrete action's integers), and what a written NaN / Inf becomes under the
spec's `nan_policy`. The file ingest calls these with whole columns, the stream with one message's
values, so both refuse and repair exactly the same readings.

These functions say *what* is wrong (`ReadingError`: the position of the first bad value and what
was expected); the caller says *where* (file, column and row, or message and key).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, overload

import numpy as np
import numpy.typing as npt
import pandas as pd

from data_pipeline.errors import UserError
from data_pipeline.ingest.spec import IngestSpec, TimestampSpec

FLOAT32_MAX = float(np.finfo(np.float32).max)
"""The largest reading a channel may have: the store holds float32."""

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
NS_MAX = 2**63 - 1
"""The largest int64 nanosecond time; times beyond ±NS_MAX (epoch years 1678-2262) cannot be stored."""


def expected_time(ts: TimestampSpec) -> str:
    """What a timestamp must look like under the spec, for error messages."""
    if ts.unit == "datetime":
        return (f"a date-time in format {ts.format or 'ISO 8601'} (timestamp.format) between the years 1678 and "
                "2262 (int64 nanoseconds)")
    return (f"a finite number in {ts.unit} (timestamp.unit) within ±{NS_MAX // TIME_UNITS[ts.unit]} "
            f"{ts.unit} (int64 nanoseconds)")


def _outside_ns(ints: np.ndarray, per: int) -> np.ndarray:
    """(R,) bool: integer counts of a unit of `per` ns whose nanoseconds do not fit int64."""
    limit = NS_MAX // per
    return (ints > limit) | (ints < -limit)


@overload
def numbers_to_ns(values: int | float, ts: TimestampSpec) -> int: ...
@overload
def numbers_to_ns(values: np.ndarray, ts: TimestampSpec) -> np.ndarray: ...
def numbers_to_ns(values: int | float | np.ndarray, ts: TimestampSpec) -> int | np.ndarray:
    """Numeric timestamps in `ts.unit` as int64 ns: integers exactly, floats rounded to the nearest ns
    (half to even). A column (R,) gives (R,) int64; one number (a stream message's) gives an int, by
    the same rule without numpy's per-call cost. Raises ReadingError at the first NaN / Inf or time
    whose nanoseconds do not fit int64 (never wrapped into another century)."""
    scale = TIME_UNITS[ts.unit]
    if isinstance(values, int | float):
        ns = values * scale
        if not -(2.0**63) < ns < 2.0**63:  # NaN and Inf too
            raise ReadingError(0, values, expected_time(ts))
        return ns if isinstance(ns, int) else round(ns)
    if np.issubdtype(values.dtype, np.integer):
        bad = _outside_ns(values, scale)
        if bad.any():
            i = first_true(bad)
            raise ReadingError(i, values[i], expected_time(ts))
        return values.astype(np.int64) * scale
    with np.errstate(over="ignore", invalid="ignore"):  # too large: refused just below
        scaled = np.round(values * scale)
    bad = ~(np.abs(scaled) < 2.0**63)  # NaN and Inf too; the largest float below 2**63 fits int64
    if bad.any():
        i = first_true(bad)
        raise ReadingError(i, values[i], expected_time(ts))
    return scaled.astype(np.int64)


def datetime64_to_ns(stamps: np.ndarray, ts: TimestampSpec) -> np.ndarray:
    """datetime64 values of any unit (R,) as int64 ns; raises ReadingError at the first one out of the ns range."""
    unit, count = np.datetime_data(stamps.dtype)
    per = TIME_UNITS[unit] * count  # pandas and Arrow use s, ms, us or ns
    ints = stamps.view(np.int64)
    bad = _outside_ns(ints, per)
    if bad.any():
        i = first_true(bad)
        raise ReadingError(i, str(stamps[i]), expected_time(ts))
    return ints * per


@overload
def datetimes_to_ns(text: str, ts: TimestampSpec) -> int: ...
@overload
def datetimes_to_ns(text: Sequence[Any] | np.ndarray, ts: TimestampSpec) -> np.ndarray: ...
def datetimes_to_ns(text: str | Sequence[Any] | np.ndarray, ts: TimestampSpec) -> int | np.ndarray:
    """Date-time text as int64 ns since the epoch; naive times are UTC. A column (R,) gives (R,) int64,
    one text an int (pandas' same parser). Raises ReadingError at the first text that does not parse
    with `timestamp.format` (ISO 8601 when unset) or lies outside the int64 ns range."""
    if isinstance(text, str):
        try:
            return int(pd.to_datetime(text, format=ts.format or "ISO8601", utc=True).as_unit("ns").value)
        except (ValueError, TypeError, OverflowError):  # OutOfBoundsDatetime is a ValueError
            raise ReadingError(0, text, expected_time(ts)) from None
    series = pd.Series(text, dtype=object)
    stamps = pd.to_datetime(series, format=ts.format or "ISO8601", utc=True, errors="coerce")
    if stamps.isna().any():
        i = first_true(stamps.isna().to_numpy())
        raise ReadingError(i, series.iloc[i], expected_time(ts))
    try:
        return datetime64_to_ns(stamps.dt.tz_convert(None).to_numpy(), ts)  # pandas parses in us, or s
    except ReadingError as err:
        raise ReadingError(err.index, series.iloc[err.index], err.expected) from None


# ---------------------------------------------------------------------- ranges
@dataclass(frozen=True)
class ChannelRanges:
    """Valid readings of every channel, in `IngestSpec.channels()` order."""

    low: np.ndarray
    """(K, 1) float64, -FLOAT32_MAX where unbounded."""
    high: np.ndarray
    """(K, 1) float64, FLOAT32_MAX where unbounded."""
    integer: np.ndarray
    """(K, 1) bool: a Discrete action channel, whose readings must be whole numbers."""
    any_integer: bool
    expected: list[str]
    """Per channel, what a valid reading is (for error messages)."""

    @classmethod
    def of(cls, spec: IngestSpec) -> ChannelRanges:
        low, high, integer, expected = [], [], [], []
        for group, ch in spec.channels():
            discrete = group == "action" and spec.action.type == "discrete"
            if discrete:
                lo, hi = float(spec.action.start), float(spec.action.start + (spec.action.n or 0) - 1)
                what = f"an integer in [{int(lo)}, {int(hi)}] (action.n/start of channel '{ch.name}')"
            elif ch.low is None or ch.high is None:  # the store keeps float32: a larger value would become Inf
                lo = -FLOAT32_MAX if ch.low is None else max(ch.low, -FLOAT32_MAX)
                hi = FLOAT32_MAX if ch.high is None else min(ch.high, FLOAT32_MAX)
                what = f"a number in [{lo:g}, {hi:g}] (low/high of channel '{ch.name}'; unset: the float32 range)"
            else:
                lo, hi = ch.low, ch.high
                what = f"a number in [{lo}, {hi}] (low/high of channel '{ch.name}')"
            low.append(lo)
            high.append(hi)
            integer.append(discrete)
            expected.append(what)
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
