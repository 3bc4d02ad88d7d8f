"""Messages into samples: JSON objects read with the ingest spec, checked by the ingest's own rules.

Each JSON object is one row of the log, its keys the log's columns (`{"t": 12.35, "seq": 247,
"theta": 0.12, "torque": -1.5}`); a missing key or `null` means the sensor did not report. Time
parsing, ranges and the NaN rules are the CSV ingest's (`data_pipeline.ingest.readings`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from data_pipeline.errors import UserError
from data_pipeline.ingest import ChannelRanges, IngestSpec, ReadingError
from data_pipeline.ingest.readings import (
    apply_nan_policy,
    datetimes_to_ns,
    expected_time,
    numbers_to_ns,
    refuse_bad_readings,
)
from data_pipeline.ingest.spec import TimestampSpec


class StreamDataError(UserError, ValueError):
    """A message that cannot be read as samples: names the message, the key and what was expected."""


@dataclass
class Sample:
    """One decoded reading row: a time, the channels that reported (NaN elsewhere), an episode label."""

    time_ns: int
    values: np.ndarray
    """(K,) float64 in `IngestSpec.channels()` order; NaN where the sensor did not report."""
    seq: int | None = None
    episode: str = ""
    arrival: float = 0.0
    """time.monotonic() when the message arrived."""

    def key(self) -> tuple[Any, ...]:
        """Duplicate key: the sequence number, else the time and the channels present."""
        if self.seq is not None:
            return ("seq", self.episode, self.seq)
        return ("t", self.episode, self.time_ns, tuple(np.flatnonzero(np.isfinite(self.values)).tolist()))


def _time_ns(value: Any, ts: TimestampSpec, where: str) -> int:
    """One message's timestamp as int64 ns, by the ingest's rules (`readings`)."""
    if ts.unit == "datetime" and not isinstance(value, str):
        raise StreamDataError(f"{where}: key '{ts.column}' is {value!r}; expected date-time text")
    if ts.unit != "datetime" and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise StreamDataError(f"{where}: key '{ts.column}' is {value!r}; expected {expected_time(ts)}")
    try:
        return datetimes_to_ns(value, ts) if ts.unit == "datetime" else numbers_to_ns(value, ts)
    except ReadingError as err:
        raise StreamDataError(f"{where}: key '{ts.column}' is {value!r}; expected {err.expected}") from None


def _objects(payload: bytes | str, where: str) -> list[Any]:
    """A JSON object, a list of objects, or JSON lines of objects."""
    text = payload.decode() if isinstance(payload, bytes | bytearray) else payload
    text = text.strip()
    if not text:
        return []
    try:
        data = json.loads(text)
        return data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        try:  # several JSON lines in one message
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise StreamDataError(f"{where}: not JSON ({err.msg} at line {err.lineno} column {err.colno}); "
                                  "expected one JSON object per sample") from None


def decode(payload: bytes | str, spec: IngestSpec, seq_field: str = "seq", where: str = "message",
           ranges: ChannelRanges | None = None) -> list[Sample]:
    """The samples of one message: a JSON object, a list of objects, or JSON lines of objects.

    Readings are checked as the CSV ingest checks them: numbers, within the channel's low/high,
    integers in range for a Discrete action; a written NaN/Inf follows the spec's `nan_policy`
    (`error` refuses the sample, `drop` drops it, `fill` uses fill_value, `interpolate` treats it as
    not reported). `ranges` (default: from the spec) saves rebuilding them for every message.
    Raises StreamDataError naming the key and what was expected.
    """
    objects = _objects(payload, where)
    ranges = ranges if ranges is not None else ChannelRanges.of(spec)
    channels = [ch for _, ch in spec.channels()]
    out = []
    for i, obj in enumerate(objects):
        at = f"{where}" + (f" item {i}" if len(objects) > 1 else "")
        if not isinstance(obj, dict):
            raise StreamDataError(f"{at}: is {type(obj).__name__}; expected a JSON object of column: value")
        if spec.timestamp.column not in obj:
            raise StreamDataError(f"{at}: key '{spec.timestamp.column}' (timestamp.column) is missing; "
                                  f"the message has keys {sorted(obj)}")
        t = _time_ns(obj[spec.timestamp.column], spec.timestamp, at)
        row = [math.nan] * len(channels)
        written_bad = []  # channels with a written NaN / Inf
        for k, ch in enumerate(channels):
            v = obj.get(ch.column)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise StreamDataError(f"{at}: key '{ch.column}' is {v!r}; expected a number (channel '{ch.name}')")
            row[k] = float(v)
            if not math.isfinite(row[k]):
                written_bad.append(k)
        values = np.array(row)
        if written_bad:
            bad = np.zeros(len(channels), bool)
            bad[written_bad] = True
            try:
                refuse_bad_readings(values, bad, spec.nan_policy, "leave the key out")
            except ReadingError as err:
                raise StreamDataError(f"{at}: key '{channels[err.index].column}' is {err.value}; "
                                      f"expected {err.expected}") from None
            keep = apply_nan_policy(values[:, None], bad[:, None], spec)  # (K, 1): one row, repaired in place
            if keep is not None and not keep[0]:
                continue
        found = ranges.first_violation(values[:, None])
        if found is not None:
            k = found[0]
            raise StreamDataError(f"{at}: key '{channels[k].column}' is {values[k]}; expected {ranges.expected[k]}")
        if not np.isfinite(values).any():
            continue
        seq = obj.get(seq_field)
        if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
            raise StreamDataError(f"{at}: key '{seq_field}' is {seq!r}; expected an integer sequence number")
        label = obj.get(spec.episode_column) if spec.episode_column else None
        out.append(Sample(time_ns=t, values=values, seq=seq, episode="" if label is None else str(label)))
    return out
