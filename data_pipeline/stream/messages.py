"""Messages into samples: JSON objects read with the ingest spec, checked by the ingest's own rules.

Each JSON object is one row of the log, its keys the log's columns (`{"t": 12.35, "seq": 247,
"theta": 0.12, "torque": -1.5}`); a missing key or `null` means the sensor did not report. Time
parsing, ranges and the NaN rules are the CSV ingest's (`data_pipeline.ingest.readings`).
"""

from __future__ import annotations

import json
import math
import sys
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


MAX_LABEL = 256
"""Characters an episode label (`episode_column`) may have: it becomes part of segment ids."""


def _show(value: Any, limit: int = 80) -> str:
    """A value for a message: its repr, cut to `limit` characters (a hostile message can be megabytes)."""
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # an integer too long to print
        return f"an {type(value).__name__} too large to show"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _time_ns(value: Any, ts: TimestampSpec, where: str) -> int:
    """One message's timestamp as int64 ns, by the ingest's rules (`readings`)."""
    if ts.unit == "datetime" and not isinstance(value, str):
        raise StreamDataError(f"{where}: key '{ts.column}' is {_show(value)}; expected {expected_time(ts)}")
    if ts.unit != "datetime" and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise StreamDataError(f"{where}: key '{ts.column}' is {_show(value)}; expected {expected_time(ts)}")
    try:
        return datetimes_to_ns(value, ts) if ts.unit == "datetime" else numbers_to_ns(value, ts)
    except ReadingError as err:
        raise StreamDataError(f"{where}: key '{ts.column}' is {_show(value)}; expected {err.expected}") from None


def _loads(text: str, where: str) -> Any:
    """json.loads, with every way it can fail on hostile text turned into a StreamDataError."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise StreamDataError(f"{where}: JSON nested too deeply to read; expected one flat JSON object per "
                              "sample") from None
    except ValueError:  # the one other ValueError: an integer of more than 4300 digits (sys.int_max_str_digits)
        raise StreamDataError(f"{where}: holds a number too long to read (over {sys.get_int_max_str_digits()} "
                              "digits); expected one JSON object per sample with numbers") from None


def _objects(payload: bytes | str, where: str, max_bytes: int | None) -> list[Any]:
    """A JSON object, a list of objects, or JSON lines of objects."""
    if max_bytes is not None and len(payload) > max_bytes:
        raise StreamDataError(f"{where}: larger than {max_bytes} bytes; expected a message of at most "
                              f"{max_bytes} bytes (--max-message-bytes)")
    try:
        text = payload.decode() if isinstance(payload, bytes | bytearray) else payload
    except UnicodeDecodeError as err:
        raise StreamDataError(f"{where}: not UTF-8 text (byte {payload[err.start]:#04x} at position {err.start}); "
                              "expected JSON in UTF-8") from None
    text = text.strip()
    if not text:
        return []
    try:
        data = _loads(text, where)
        return data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        try:  # several JSON lines in one message
            return [_loads(line, where) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise StreamDataError(f"{where}: not JSON ({err.msg} at line {err.lineno} column {err.colno}); "
                                  "expected one JSON object per sample") from None


def decode(payload: bytes | str, spec: IngestSpec, seq_field: str = "seq", where: str = "message",
           ranges: ChannelRanges | None = None, max_bytes: int | None = None) -> list[Sample]:
    """The samples of one message: a JSON object, a list of objects, or JSON lines of objects.

    Readings are checked as the CSV ingest checks them: numbers, within the channel's low/high,
    integers in range for a Discrete action; a written NaN/Inf follows the spec's `nan_policy`
    (`error` refuses the sample, `drop` drops it, `fill` uses fill_value, `interpolate` treats it as
    not reported). `ranges` (default: from the spec) saves rebuilding them for every message; a
    message longer than `max_bytes` is refused. Raises StreamDataError naming the key and what was
    expected, and nothing else, whatever the payload holds.
    """
    objects = _objects(payload, where, max_bytes)
    ranges = ranges if ranges is not None else ChannelRanges.of(spec)
    channels = [ch for _, ch in spec.channels()]
    out = []
    for i, obj in enumerate(objects):
        at = f"{where}" + (f" item {i}" if len(objects) > 1 else "")
        if not isinstance(obj, dict):
            raise StreamDataError(f"{at}: is {type(obj).__name__}; expected a JSON object of column: value")
        if spec.timestamp.column not in obj:
            raise StreamDataError(f"{at}: key '{spec.timestamp.column}' (timestamp.column) is missing; expected "
                                  f"every sample to carry its time (the message has keys {_show(sorted(obj))})")
        t = _time_ns(obj[spec.timestamp.column], spec.timestamp, at)
        row = [math.nan] * len(channels)
        written_bad = []  # channels with a written NaN / Inf
        for k, ch in enumerate(channels):
            v = obj.get(ch.column)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise StreamDataError(f"{at}: key '{ch.column}' is {_show(v)}; expected a number (channel '{ch.name}')")
            try:
                row[k] = float(v)
            except OverflowError:  # an integer beyond float64
                raise StreamDataError(f"{at}: key '{ch.column}' is {_show(v)}; expected {ranges.expected[k]}") from None
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
            raise StreamDataError(f"{at}: key '{seq_field}' is {_show(seq)}; expected an integer sequence number")
        label = obj.get(spec.episode_column) if spec.episode_column else None
        if label is not None and (isinstance(label, bool) or not isinstance(label, str | int)
                                  or len(str(label)) > MAX_LABEL):
            raise StreamDataError(f"{at}: key '{spec.episode_column}' (episode_column) is {_show(label)}; expected "
                                  f"an episode id: text or an integer of at most {MAX_LABEL} characters")
        out.append(Sample(time_ns=t, values=values, seq=seq, episode="" if label is None else str(label)))
    return out
