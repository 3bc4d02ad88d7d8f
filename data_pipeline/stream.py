"""Streaming ingest: JSON samples from MQTT, stdin or a growing file, into a trajectory store as they arrive.

    python -m data_pipeline stream --source mqtt://127.0.0.1:1883/plant/pendulum --spec spec.yaml --out live.zarr
    producer | python -m data_pipeline stream --source - --spec spec.yaml --out live.zarr
    python -m data_pipeline stream --source file:plant.jsonl --spec spec.yaml --out live.zarr

The spec is the CSV ingest's (docs/ingest.md): each JSON object is one row of the log, its keys the
log's columns (`{"t": 12.35, "seq": 247, "theta": 0.12, "torque": -1.5}`); a missing key or `null`
means the sensor did not report. The pipeline (docs/live-twin.md):

1. `ReorderBuffer`: samples wait up to `reorder_window` seconds so that out-of-order messages are put
   back in time order; duplicates (same `seq`, or without one the same time and channels) are dropped;
   a sample older than one already released is *late*: counted and dropped.
2. `Resampler`: the CSV ingest's rules, applied incrementally: grid instants on whole multiples of `dt`,
   `interpolate` / `hold` with the ingest's own `_resample_group`, a channel silent for longer than its
   `max_gap` splits the episode.
3. `SegmentWriter`: rows go into an open `EpisodeStream`, committed every `commit_seconds` (or
   `commit_rows`) as one segment episode, at a gap and at shutdown. A new segment starts with the last
   row of the previous one, so no transition is lost (see docs/live-twin.md for the layout).
"""

from __future__ import annotations

import heapq
import json
import math
import os
import queue
import signal
import sys
import threading
import time as _time
import urllib.parse
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from data_pipeline.ingest import _resample_group
from data_pipeline.ingest_spec import TIME_UNITS, IngestSpec
from data_pipeline.schema import DISCRETE_FILL, StoreSchema
from data_pipeline.store import EpisodeStream, TrajectoryStore
from data_pipeline.store.paths import is_url


class StreamDataError(ValueError):
    """A message that cannot be read as samples: names the message, the key and what was expected."""


@dataclass
class StreamConfig:
    """How a stream is buffered, resampled and committed."""

    reorder_window: float = 1.0
    """Seconds a sample waits for earlier ones (stream time, and at most this long on the wall clock)."""
    reorder_capacity: int = 100_000
    """Samples the reorder buffer holds at most; beyond it the oldest is released early."""
    commit_seconds: float = 10.0
    """Wall-clock seconds between segment commits (0: only at gaps and at shutdown)."""
    commit_rows: int = 0
    """Rows per segment; a segment is committed when it has this many (0: no row limit)."""
    seq_field: str = "seq"
    """JSON key of a message's sequence number (duplicates are detected by it when present)."""
    dedupe_memory: int = 65_536
    """How many recent sample keys are remembered to recognise duplicates."""
    flush_rows: int = 4096
    """Rows of an open segment kept in memory before they are written (uncommitted)."""


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

    def key(self) -> tuple:
        """Duplicate key: the sequence number, else the time and the channels present."""
        if self.seq is not None:
            return ("seq", self.episode, self.seq)
        return ("t", self.episode, self.time_ns, tuple(np.flatnonzero(np.isfinite(self.values)).tolist()))


@dataclass
class Block:
    """Consecutive grid rows of one piece of the stream, store-aligned (action[k] taken at obs[k])."""

    label: str
    time: np.ndarray
    """(n,) int64 ns."""
    obs: np.ndarray
    """(n, obs_dim) float32."""
    action: np.ndarray
    """(n, action_dim) float32, or (n, 1) int64 for Discrete actions."""
    reward: np.ndarray
    """(n,) float32."""
    starts_piece: bool = False
    """The first row begins a new piece (after a gap, a new episode label, or the stream's start)."""
    ends_piece: bool = False
    """The piece ends after the last row (a gap, a new episode label or the end of the stream)."""
    arrival: float = 0.0
    """time.monotonic() of the latest message that went into these rows."""

    def __len__(self) -> int:
        return int(self.time.shape[0])


@dataclass
class StreamStats:
    messages: int = 0
    samples: int = 0
    duplicates: int = 0
    late: int = 0
    rejected: int = 0
    rows: int = 0
    committed_steps: int = 0
    """Grid steps committed (a continuing segment's repeated first row counts once)."""
    committed_episodes: int = 0
    latest_time_ns: int | None = None
    """Newest sample time seen (stream time)."""
    mirrored_time_ns: int | None = None
    """Time of the newest row emitted."""
    errors: list[str] = field(default_factory=list)

    def lag_s(self) -> float:
        """Stream-time lag of the mirror: newest sample seen minus newest row emitted, in seconds."""
        if self.latest_time_ns is None or self.mirrored_time_ns is None:
            return float("nan")
        return max(self.latest_time_ns - self.mirrored_time_ns, 0) / 1e9


# ---------------------------------------------------------------------- decoding
def _time_ns(value: Any, spec: IngestSpec, where: str) -> int:
    ts = spec.timestamp
    if ts.unit == "datetime":
        if not isinstance(value, str):
            raise StreamDataError(f"{where}: key '{ts.column}' is {value!r}; expected date-time text")
        try:
            stamp = pd.to_datetime(value, format=ts.format or "ISO8601", utc=True)
        except (ValueError, TypeError) as err:
            raise StreamDataError(f"{where}: key '{ts.column}' is {value!r}; expected a date-time in format "
                                  f"{ts.format or 'ISO 8601'} (timestamp.format)") from err
        return int(stamp.value)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise StreamDataError(f"{where}: key '{ts.column}' is {value!r}; expected a finite number in {ts.unit}")
    if isinstance(value, int):
        return int(value) * TIME_UNITS[ts.unit]
    return round(value * TIME_UNITS[ts.unit])


def decode(payload: bytes | str, spec: IngestSpec, seq_field: str = "seq", where: str = "message"
           ) -> list[Sample]:
    """The samples of one message: a JSON object, a list of objects, or JSON lines of objects.

    Readings are checked as the CSV ingest checks them: numbers, within the channel's low/high,
    integers in range for a Discrete action; a written NaN/Inf follows the spec's `nan_policy`
    (`error` refuses the sample, `drop` drops it, `fill` uses fill_value, `interpolate` treats it as
    not reported). Raises StreamDataError naming the key and what was expected.
    """
    text = payload.decode() if isinstance(payload, bytes | bytearray) else payload
    text = text.strip()
    if not text:
        return []
    try:
        data = json.loads(text)
        objects = data if isinstance(data, list) else [data]
    except json.JSONDecodeError:
        try:  # several JSON lines in one message
            objects = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as err:
            raise StreamDataError(f"{where}: not JSON ({err.msg} at line {err.lineno} column {err.colno}); "
                                  "expected one JSON object per sample") from None
    channels = spec.channels()
    out = []
    for i, obj in enumerate(objects):
        at = f"{where}" + (f" item {i}" if len(objects) > 1 else "")
        if not isinstance(obj, dict):
            raise StreamDataError(f"{at}: is {type(obj).__name__}; expected a JSON object of column: value")
        if spec.timestamp.column not in obj:
            raise StreamDataError(f"{at}: key '{spec.timestamp.column}' (timestamp.column) is missing; "
                                  f"the message has keys {sorted(obj)}")
        t = _time_ns(obj[spec.timestamp.column], spec, at)
        values = np.full(len(channels), np.nan)
        for k, (group, ch) in enumerate(channels):
            v = obj.get(ch.column)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise StreamDataError(f"{at}: key '{ch.column}' is {v!r}; expected a number (channel '{ch.name}')")
            v = float(v)
            if not math.isfinite(v):
                if spec.nan_policy == "error":
                    raise StreamDataError(f"{at}: key '{ch.column}' is {v}; expected a finite number (or "
                                          "leave the key out where the sensor did not report, or choose a "
                                          "nan_policy: drop, fill, interpolate)")
                if spec.nan_policy == "drop":
                    values = None
                    break
                if spec.nan_policy == "fill":
                    v = float(spec.fill_value)
                else:
                    continue
            _check_range(v, group, ch, spec, at)
            values[k] = v
        if values is None or not np.isfinite(values).any():
            continue
        seq = obj.get(seq_field)
        if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
            raise StreamDataError(f"{at}: key '{seq_field}' is {seq!r}; expected an integer sequence number")
        episode = str(obj[spec.episode_column]) if spec.episode_column and obj.get(spec.episode_column) is not None \
            else ""
        out.append(Sample(time_ns=t, values=values, seq=seq, episode=episode))
    return out


def _check_range(v: float, group: str, ch: Any, spec: IngestSpec, where: str) -> None:
    low = -np.inf if ch.low is None else ch.low
    high = np.inf if ch.high is None else ch.high
    discrete = group == "action" and spec.action.type == "discrete"
    if discrete:
        low, high = spec.action.start, spec.action.start + spec.action.n - 1
    if v < low or v > high or (discrete and v != round(v)):
        what = "an integer" if discrete else "a number"
        raise StreamDataError(f"{where}: key '{ch.column}' is {v}; expected {what} in [{low}, {high}] "
                              f"({'action.n/start' if discrete else 'low/high'} of channel '{ch.name}')")


# ---------------------------------------------------------------------- reordering
class ReorderBuffer:
    """A bounded buffer that releases samples in time order, dropping duplicates and late samples.

    A sample is released once the stream has moved `window` seconds past it (the newest sample time
    seen minus the window), once it has waited `window` seconds on the wall clock, or when the buffer
    is over capacity. Samples with the same time (e.g. two sensors reporting in separate messages)
    are merged into one row.
    """

    def __init__(self, window: float, capacity: int = 100_000, dedupe_memory: int = 65_536) -> None:
        self.window_ns = round(window * 1e9)
        self.window_s = window
        self.capacity = capacity
        self._heap: list[int] = []
        self._rows: dict[int, Sample] = {}
        self._seen: set[tuple] = set()
        self._seen_order: deque[tuple] = deque()
        self._memory = dedupe_memory
        self.newest_ns: int | None = None
        self.released_ns: int | None = None
        """Time of the last released sample: anything at or before it is late."""

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, sample: Sample) -> str:
        """Buffer a sample; returns "ok", "duplicate" or "late"."""
        key = sample.key()
        if key in self._seen:
            return "duplicate"
        self._remember(key)
        if self.released_ns is not None and sample.time_ns <= self.released_ns:
            return "late"
        held = self._rows.get(sample.time_ns)
        if held is None:
            self._rows[sample.time_ns] = sample
            heapq.heappush(self._heap, sample.time_ns)
        else:  # same instant: merge the channels (the newer reading wins where both report)
            held.values = np.where(np.isfinite(sample.values), sample.values, held.values)
            held.arrival = max(held.arrival, sample.arrival)
        if self.newest_ns is None or sample.time_ns > self.newest_ns:
            self.newest_ns = sample.time_ns
        return "ok"

    def _remember(self, key: tuple) -> None:
        self._seen.add(key)
        self._seen_order.append(key)
        if len(self._seen_order) > self._memory:
            self._seen.discard(self._seen_order.popleft())

    def pop_ready(self, now: float) -> list[Sample]:
        """Samples that may leave now, in time order."""
        out = []
        watermark = (self.newest_ns - self.window_ns) if self.newest_ns is not None else None
        while self._heap:
            t = self._heap[0]
            s = self._rows[t]
            if (watermark is not None and t <= watermark) or now - s.arrival >= self.window_s \
                    or len(self._heap) > self.capacity:
                out.append(self._pop())
            else:
                break
        return out

    def drain(self) -> list[Sample]:
        """Every buffered sample, in time order (at shutdown)."""
        return [self._pop() for _ in range(len(self._heap))]

    def _pop(self) -> Sample:
        t = heapq.heappop(self._heap)
        self.released_ns = t
        return self._rows.pop(t)


# ---------------------------------------------------------------------- resampling
class Resampler:
    """The CSV ingest's resampling (docs/ingest.md), applied to samples arriving in time order.

    A piece starts once every channel has reported; its grid instants are whole multiples of `dt`
    from the latest first reading. A grid instant is emitted once it is final: every `interpolate`
    channel has a reading at or after it, and the stream has passed it for `hold` channels (whose
    value holds for at most `max_gap`). A channel silent for longer than its group's `max_gap`
    ends the piece at the earliest channel's last reading before the gap; samples inside the gap are
    dropped, as the CSV ingest drops the rows inside a gap.
    """

    def __init__(self, spec: IngestSpec, schema: StoreSchema) -> None:
        self.spec = spec
        self.schema = schema
        self.dt_ns = round(spec.dt * 1e9)
        groups = [g for g, _ in spec.channels()]
        self.groups = groups
        self.max_gap_ns = np.array([round(spec.max_gap_of(g) * 1e9) for g in groups], np.int64)
        self.interp = np.array([spec.group(g).resample == "interpolate" for g in groups])
        self.n_obs, self.n_act = len(spec.observation.channels), len(spec.action.channels)
        self.label: str | None = None
        self._raw_last = np.full(len(groups), -1, np.int64)  # last reading per channel (gaps), -1: none
        self._new_piece()

    def _new_piece(self) -> None:
        self._times: list[int] = []
        self._values: list[np.ndarray] = []
        self._first = np.full(len(self.groups), -1, np.int64)
        self._last = np.full(len(self.groups), -1, np.int64)
        self.next_grid: int | None = None
        self._started = False  # a row of this piece was emitted
        self._arrival = 0.0

    def push(self, samples: list[Sample]) -> list[Block]:
        """Add released samples (time order); return the rows that became final."""
        blocks: list[Block] = []
        for s in samples:
            if self.label is None:
                self.label = s.episode
            elif s.episode != self.label:  # a new episode label: end the piece, forget gap state
                blocks += self._finish_piece(None)
                self.label = s.episode
                self._raw_last[:] = -1
            has = np.isfinite(s.values)
            silent = (self._raw_last >= 0) & (s.time_ns - self._raw_last > self.max_gap_ns)
            inside_gap = (silent & ~has).any()  # strictly inside some channel's gap
            gap_ended = (silent & has).any()
            if inside_gap or gap_ended:
                gap_start = int(self._raw_last[silent].min())
                blocks += self._finish_piece(gap_start)
            self._raw_last[has] = s.time_ns
            if inside_gap:
                continue
            self._times.append(s.time_ns)
            self._values.append(s.values)
            self._first[has & (self._first < 0)] = s.time_ns
            self._last[has] = s.time_ns
            self._arrival = max(self._arrival, s.arrival)
            if self.next_grid is None and (self._first >= 0).all():
                start = int(self._first.max())
                self.next_grid = -(-start // self.dt_ns) * self.dt_ns
        if samples:
            blocks += self._emit(self._ready_until(samples[-1].time_ns), ends=False)
        return blocks

    def finish(self) -> list[Block]:
        """End the stream: emit what the CSV ingest would for the last piece."""
        return self._finish_piece(None)

    def _ready_until(self, now_ns: int) -> int:
        """The last grid instant that is final at stream time `now_ns`."""
        bound = now_ns
        if self.interp.any():
            bound = min(bound, int(self._last[self.interp].min()))
        hold = ~self.interp
        if hold.any():
            bound = min(bound, int((self._last[hold] + self.max_gap_ns[hold]).min()))
        return bound

    def _finish_piece(self, gap_start: int | None) -> list[Block]:
        """Emit the rest of the current piece (rows up to the earliest last reading) and start anew."""
        if gap_start is not None and self._times:
            keep = np.asarray(self._times) <= gap_start  # readings inside the gap are not part of the piece
            self._times = [t for t, k in zip(self._times, keep, strict=True) if k]
            self._values = [v for v, k in zip(self._values, keep, strict=True) if k]
            if self._values:
                vals = np.stack(self._values)
                times = np.asarray(self._times)
                self._last = np.array([times[np.isfinite(vals[:, k])].max(initial=-1)
                                       for k in range(vals.shape[1])], np.int64)
        blocks = []
        if self.next_grid is not None and (self._last >= 0).all():
            blocks = self._emit(int(self._last.min()), ends=True)
        if blocks:
            blocks[-1].ends_piece = self._started
        elif self._started:  # the piece's rows were all emitted already: an empty block carries the end
            blocks = [self._empty_block(ends=True)]
        self._new_piece()
        return blocks

    def _empty_block(self, ends: bool) -> Block:
        act_dtype = np.int64 if self.schema.discrete else np.float32
        return Block(label=self.label or "", time=np.zeros(0, np.int64),
                     obs=np.zeros((0, self.n_obs), np.float32),
                     action=np.zeros((0, 1 if self.schema.discrete else self.n_act), act_dtype),
                     reward=np.zeros(0, np.float32), ends_piece=ends, arrival=self._arrival)

    def _emit(self, until_ns: int, ends: bool) -> list[Block]:
        if self.next_grid is None or until_ns < self.next_grid:
            return []
        n = (until_ns - self.next_grid) // self.dt_ns + 1
        grid_ns = self.next_grid + self.dt_ns * np.arange(n, dtype=np.int64)
        times = np.asarray(self._times, np.int64)
        data = np.stack(self._values, axis=1)  # (K, R), channel-major as the ingest's RawLog
        t_ref = times[0]
        axis = (times - t_ref) / 1e9
        grid = (grid_ns - t_ref) / 1e9
        keep = np.ones(times.size, bool)
        spec = self.spec
        o, a = self.n_obs, self.n_obs + self.n_act
        obs = _resample_group(data[:o], spec.observation.resample, spec.max_gap_of("observation"), axis, keep,
                              grid)
        act = _resample_group(data[o:a], spec.action.resample, spec.max_gap_of("action"), axis, keep, grid)
        if spec.reward is not None:
            rew = _resample_group(data[a:], spec.reward.resample, spec.max_gap_of("reward"), axis, keep, grid)[:, 0]
        else:
            rew = np.zeros(n, np.float32)
        if self.schema.discrete:
            act = np.where(np.isfinite(act), np.round(act), DISCRETE_FILL).astype(np.int64)
        block = Block(label=self.label or "", time=grid_ns, obs=obs, action=act, reward=rew,
                      starts_piece=not self._started, ends_piece=ends, arrival=self._arrival)
        self._started = True
        self.next_grid = int(grid_ns[-1]) + self.dt_ns
        self._trim()
        return [block]

    def _trim(self) -> None:
        """Forget readings no future grid instant needs: keep each channel's last one before next_grid."""
        if len(self._times) < 64:
            return
        times = np.asarray(self._times, np.int64)
        vals = np.stack(self._values)
        cut = len(times)
        for k in range(vals.shape[1]):
            idx = np.flatnonzero(np.isfinite(vals[:, k]) & (times <= self.next_grid))
            cut = min(cut, int(idx[-1]) if idx.size else 0)
        if cut > 0:
            del self._times[:cut]
            del self._values[:cut]


# ---------------------------------------------------------------------- writing
class SegmentWriter:
    """Rows into the store as segment episodes, each committed with the store's commit protocol.

    A segment is committed every `commit_seconds` (wall clock) or `commit_rows`, at the end of a
    piece (a gap) and at shutdown. A segment that continues the previous one starts with the
    previous one's last row (which was committed with the final row's NaN action), so every
    transition is stored; the shared row is the only repeated one. Segment ids are
    `SOURCE[:LABEL]@FIRST_ROW_TIME_NS`.
    """

    def __init__(self, store: TrajectoryStore, source: str, config: StreamConfig) -> None:
        self.store = store
        self.source = source
        self.config = config
        self.stream: EpisodeStream | None = None
        self.opened = 0.0
        self.continues = False  # the open segment starts with the previous segment's last row
        self._last: tuple[int, np.ndarray, np.ndarray, float] | None = None
        self._label = ""
        self.committed_steps = 0
        self.committed_episodes = 0
        self.resume_after_ns = _last_committed_time(store, source)
        """Samples at or before this time are already in the store (an earlier run of this source)."""

    def add(self, block: Block, now: float) -> None:
        for i in range(len(block)):
            row = (int(block.time[i]), block.obs[i], block.action[i], float(block.reward[i]))
            if self.resume_after_ns is not None and row[0] <= self.resume_after_ns:
                continue
            if self.stream is None:
                self._open(block.label, row[0], now)
            self.stream.add(obs=row[1], action=row[2], reward=row[3], time=row[0])
            self._last = row
            if self.config.commit_rows > 0 and self.stream.num_rows >= self.config.commit_rows:
                self.commit(final=False, now=now)
        if block.ends_piece:
            self.commit(final=True)

    def _open(self, label: str, time_ns: int, now: float) -> None:
        name = f"{self.source}:{label}" if label else self.source
        self.stream = self.store.stream(episode_id=f"{name}@{time_ns}", source=name,
                                        flush_rows=self.config.flush_rows)
        self.opened = now
        self._label = label

    def maybe_commit(self, now: float) -> None:
        """Commit the open segment if its time or row budget is spent, and continue in a new one."""
        if self.stream is None or self.stream.num_rows < 2:
            return
        c = self.config
        if (c.commit_seconds > 0 and now - self.opened >= c.commit_seconds) or \
                (c.commit_rows > 0 and self.stream.num_rows >= c.commit_rows):
            self.commit(final=False, now=now)

    def commit(self, final: bool, now: float | None = None) -> None:
        """Commit the open segment (at least one transition); with `final=False` continue in a new one."""
        if self.stream is None:
            return
        if self.stream.num_rows < 2:
            if final:
                self.stream.abort()
                self.stream, self.continues = None, False
            return
        rows = self.stream.num_rows
        self.stream.commit(truncated=True)
        self.committed_steps += rows - self.continues  # the shared first row is counted once
        self.committed_episodes += 1
        self.stream = None
        self.continues = False
        if not final and self._last is not None:
            t, obs, action, reward = self._last
            self._open(self._label, t, _time.monotonic() if now is None else now)
            self.stream.add(obs=obs, action=action, reward=reward, time=t)
            self.continues = True

    def close(self) -> None:
        """Commit what is complete and drop nothing else."""
        self.commit(final=True)


def _last_committed_time(store: TrajectoryStore, source: str) -> int | None:
    """The newest committed row time of episodes from `source` (a restarted stream resumes after it)."""
    table = store.episodes()
    mine = table[(table["source"] == source) | table["source"].str.startswith(source + ":")]
    if not len(mine):
        return None
    last = mine.iloc[-1]
    end = int(last["start"] + last["length"])
    return int(store.read_rows("time", end - 1, end)[0])


# ---------------------------------------------------------------------- the pipeline
class StreamIngest:
    """Messages in, committed segment episodes out: decode → reorder → resample → write.

    `feed()` buffers one message; `poll()` releases what waited long enough, resamples it and runs
    timed commits; `finish()` drains everything and commits (at shutdown). `poll()` and `finish()`
    return the new rows as `Block`s, already handed to the store, for a consumer such as the live
    twin. Call `poll()` every few tens of milliseconds (`run` polls every 50 ms) rather than after
    every message: resampling is vectorized over the rows released together.
    """

    def __init__(self, spec: IngestSpec, store: TrajectoryStore, source: str,
                 config: StreamConfig | None = None) -> None:
        self.spec = spec
        self.store = store
        self.source = source
        self.config = config or StreamConfig()
        self.buffer = ReorderBuffer(self.config.reorder_window, self.config.reorder_capacity,
                                    self.config.dedupe_memory)
        self.resampler = Resampler(spec, store.schema)
        self.writer = SegmentWriter(store, source, self.config)
        self.stats = StreamStats()

    def feed(self, payload: bytes | str, arrival: float | None = None) -> None:
        """Decode one message and buffer its samples (a bad message is counted and reported, not fatal)."""
        now = _time.monotonic() if arrival is None else arrival
        self.stats.messages += 1
        try:
            samples = decode(payload, self.spec, self.config.seq_field, where=f"message {self.stats.messages}")
        except StreamDataError as err:
            self._reject(str(err))
            return []
        resume = self.writer.resume_after_ns
        for s in samples:
            s.arrival = now
            self.stats.samples += 1
            if resume is not None and s.time_ns <= resume:  # stored by an earlier run of this source
                self.stats.duplicates += 1
                continue
            status = self.buffer.push(s)
            if status == "duplicate":
                self.stats.duplicates += 1
            elif status == "late":
                self.stats.late += 1
                if self.stats.late <= 5:  # flag the first few; the count says how many there were
                    print(f"stream: late sample at t={s.time_ns} ns (message {self.stats.messages}): its slot was "
                          f"already written (reorder window {self.config.reorder_window} s); dropped",
                          file=sys.stderr)
        if self.buffer.newest_ns is not None:
            self.stats.latest_time_ns = self.buffer.newest_ns

    def poll(self, now: float | None = None) -> list[Block]:
        now = _time.monotonic() if now is None else now
        blocks = self._write(self.resampler.push(self.buffer.pop_ready(now)), now)
        self.writer.maybe_commit(now)
        self._sync_stats()
        return blocks

    def finish(self) -> list[Block]:
        """Release every buffered sample, emit the last rows and commit the open segment."""
        now = _time.monotonic()
        blocks = self._write(self.resampler.push(self.buffer.drain()), now)
        blocks += self._write(self.resampler.finish(), now)
        self.writer.close()
        self._sync_stats()
        return blocks

    def _write(self, blocks: list[Block], now: float) -> list[Block]:
        for b in blocks:
            self.writer.add(b, now)
            self.stats.rows += len(b)
            if len(b):
                self.stats.mirrored_time_ns = int(b.time[-1])
        return blocks

    def _sync_stats(self) -> None:
        self.stats.committed_steps = self.writer.committed_steps
        self.stats.committed_episodes = self.writer.committed_episodes

    def _reject(self, message: str) -> None:
        self.stats.rejected += 1
        if len(self.stats.errors) < 20:
            self.stats.errors.append(message)

    def status_line(self) -> str:
        s = self.stats
        return (f"rows: {s.rows}  committed: {s.committed_steps}  lag: {s.lag_s():.2f} s  buffered: "
                f"{len(self.buffer)}  late: {s.late}  duplicates: {s.duplicates}  rejected: {s.rejected}")


def open_or_create(out: str, spec: IngestSpec, spec_path: str, source: str) -> TrajectoryStore:
    """The store to stream into: an existing one (same schema) opened for appending, or a new one."""
    import hashlib

    from data_pipeline.validate import check_schema_matches

    with open(spec_path, "rb") as f:
        spec_sha = hashlib.file_digest(f, "sha256").hexdigest()
    provenance = {"source": "stream", "stream": source, "spec_path": str(spec_path), "spec_sha256": spec_sha,
                  "spec": spec.raw, "started_at_ns": _time.time_ns()}
    if spec.reward is None:
        provenance["reward"] = "no reward column in the spec: reward stored as 0"
    schema = spec.schema(provenance)
    local = None if is_url(out) else out
    if local is None or (os.path.exists(os.path.join(local, "zarr.json"))):
        try:
            store = TrajectoryStore.open(out, mode="a")
        except FileNotFoundError:
            return TrajectoryStore.create(out, schema)
        try:
            check_schema_matches(store.schema, schema, source=f"{source} (spec {spec_path})")
        except BaseException:
            store.close()
            raise
        return store
    return TrajectoryStore.create(out, schema)


# ---------------------------------------------------------------------- sources
END = object()
"""Put on the queue by a source that has ended (stdin at EOF)."""


class Source:
    """Where messages come from: `start()` puts `(payload, arrival)` on a queue from its own thread."""

    name = ""

    def start(self, out: queue.Queue) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        pass


class MqttSource(Source):
    """Subscribe to `mqtt://host:port/topic[?qos=1]` (paho-mqtt 2.x); wildcards `+` and `#` (as %23) allowed.

    Connects at `start()` (an unreachable broker is an error naming the URL) and reconnects by itself
    afterwards. `publish()` sends on the same connection (alerts).
    """

    def __init__(self, url: str, client_id: str = "", subscribe: bool = True) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "mqtt" or not parsed.hostname:
            raise ValueError(f"source {url!r}: expected mqtt://HOST[:PORT]/TOPIC")
        self.name = url.split("?")[0]
        self.host = parsed.hostname
        self.port = parsed.port or 1883
        self.topic = urllib.parse.unquote(parsed.path.lstrip("/"))
        if not self.topic:
            raise ValueError(f"source {url!r}: no topic; expected mqtt://{self.host}:{self.port}/TOPIC")
        query = urllib.parse.parse_qs(parsed.query)
        self.qos = int(query.get("qos", ["1"])[0])
        self.client_id = client_id
        self.subscribe = subscribe
        self.subscribed = threading.Event()
        self._client: Any = None

    def start(self, out: queue.Queue) -> None:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id)

        def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
            if self.subscribe:
                c.subscribe(self.topic, qos=self.qos)  # again after every reconnect

        def on_subscribe(c: Any, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
            if not self.subscribed.is_set():
                print(f"stream: subscribed to {self.name} (qos {self.qos})", file=sys.stderr, flush=True)
            self.subscribed.set()

        def on_message(c: Any, userdata: Any, msg: Any) -> None:
            out.put((msg.payload, _time.monotonic()))

        client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        try:
            client.connect(self.host, self.port, keepalive=30)
        except OSError as err:
            raise ConnectionError(f"source {self.name}: cannot connect to the MQTT broker at "
                                  f"{self.host}:{self.port} ({err})") from err
        client.loop_start()
        self._client = client

    def publish(self, topic: str, payload: str) -> None:
        if self._client is not None:
            self._client.publish(topic, payload, qos=1)

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None


class StdinSource(Source):
    """JSON lines on standard input; the stream ends at EOF."""

    name = "stdin"

    def start(self, out: queue.Queue) -> None:
        def read() -> None:
            for line in sys.stdin.buffer:
                out.put((line, _time.monotonic()))
            out.put(END)

        threading.Thread(target=read, name="stdin-source", daemon=True).start()


class FileSource(Source):
    """Follow a JSON-lines file as it grows (like `tail -f`), from its start; waits for it to appear.

    A partial last line waits for its newline. A file that shrinks (rotated or truncated) is read
    again from its start. Runs until stopped.
    """

    def __init__(self, path: str, poll_s: float = 0.05) -> None:
        self.path = path
        self.name = f"file:{path}"
        self.poll_s = poll_s
        self._stop = threading.Event()

    def start(self, out: queue.Queue) -> None:
        threading.Thread(target=self._follow, args=(out,), name="file-source", daemon=True).start()

    def _follow(self, out: queue.Queue) -> None:
        pos, partial = 0, b""
        while not self._stop.is_set():
            try:
                size = os.stat(self.path).st_size
            except FileNotFoundError:
                self._stop.wait(self.poll_s)
                continue
            if size < pos:  # truncated or replaced: start again
                pos, partial = 0, b""
            if size == pos:
                self._stop.wait(self.poll_s)
                continue
            with open(self.path, "rb") as f:
                f.seek(pos)
                chunk = f.read(size - pos)
            pos += len(chunk)
            lines = (partial + chunk).split(b"\n")
            partial = lines.pop()
            now = _time.monotonic()
            for line in lines:
                if line.strip():
                    out.put((line, now))

    def stop(self) -> None:
        self._stop.set()


def make_source(url: str) -> Source:
    """`mqtt://host:port/topic`, `-` (stdin) or `file:PATH`."""
    if url == "-":
        return StdinSource()
    if url.startswith("file:"):
        return FileSource(url[len("file:"):])
    if url.startswith("mqtt://"):
        return MqttSource(url)
    raise ValueError(f"source {url!r}: expected mqtt://HOST:PORT/TOPIC, '-' (JSON lines on stdin) or file:PATH")


# ---------------------------------------------------------------------- running
class _StopFlag:
    """SIGINT / SIGTERM set the flag; the loop notices it within one poll interval."""

    def __init__(self) -> None:
        self.set = False
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.set, self.signal = True, signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class StatusLine:
    """A status line on stderr: rewritten in place on a terminal, one line per interval otherwise."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def show(self, text: str, now: float, force: bool = False) -> None:
        if self.every <= 0 or (not force and now - self._last < self.every):
            return
        self._last = now
        if self.tty:
            print(f"\r{text}\033[K", end="", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty and self.every > 0:
            print(file=sys.stderr, flush=True)


def run(source: Source, ingest: StreamIngest, *, on_blocks: Callable[[list[Block]], None] | None = None,
        status: Callable[[], str] | None = None, status_every: float = 1.0, poll_interval: float = 0.05,
        stop: threading.Event | None = None) -> StreamStats:
    """Run a stream until its source ends, SIGINT / SIGTERM arrive, or `stop` is set; then commit.

    Messages that already arrived are processed before the final commit, so a clean shutdown keeps
    everything complete. `on_blocks` sees every batch of new rows (after they went to the store).
    """
    messages: queue.Queue = queue.Queue()
    flag = _StopFlag()
    flag.install()
    line = StatusLine(status_every)
    status = status or ingest.status_line
    handle = on_blocks or (lambda blocks: None)
    try:
        source.start(messages)
        print(f"stream: reading {source.name} (SIGINT / SIGTERM commit and stop)", file=sys.stderr, flush=True)
        last_poll = 0.0
        ended = False
        while not (flag.set or ended or (stop is not None and stop.is_set())):
            deadline = _time.monotonic() + poll_interval
            while True:  # take what arrived during one poll interval, then resample it together
                timeout = deadline - _time.monotonic()
                try:
                    item = messages.get(timeout=timeout) if timeout > 0 else messages.get_nowait()
                except queue.Empty:
                    break
                if item is END:
                    ended = True
                    break
                ingest.feed(*item)
            now = _time.monotonic()
            if now - last_poll >= poll_interval:
                handle(ingest.poll(now))
                last_poll = now
            line.show(status(), now)
    finally:
        source.stop()
        flag.restore()
    while True:  # what arrived before the source stopped is complete: keep it
        try:
            item = messages.get_nowait()
        except queue.Empty:
            break
        if item is not END:
            ingest.feed(*item)
    handle(ingest.finish())
    line.show(status(), _time.monotonic(), force=True)
    line.close()
    return ingest.stats


def stream(source_url: str, spec_path: str, out: str, config: StreamConfig | None = None,
           status_every: float = 1.0) -> StreamStats:
    """`python -m data_pipeline stream`: mirror a source into the store `out` until it ends or is stopped."""
    spec = IngestSpec.from_yaml(spec_path)
    source = make_source(source_url)
    store = open_or_create(out, spec, spec_path, source.name)
    try:
        ingest = StreamIngest(spec, store, source.name, config)
        stats = run(source, ingest, status_every=status_every)
        for message in stats.errors[:5]:
            print(f"rejected: {message}", file=sys.stderr)
        return stats
    finally:
        store.close()
