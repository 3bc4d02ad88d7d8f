"""`StreamIngest`: messages in, committed segment episodes out (decode → reorder → resample → write).

The pipeline (docs/live-twin.md):

1. `decode` (messages): JSON samples checked by the ingest's rules; a bad message is refused, counted
   and named on stderr, never fatal.
2. `SkewGuard` (skew): a sample far from the stream's recent time is held; refused as a glitch, or,
   when the next samples agree, taken as a clock jump (the piece ends and the stream continues).
3. `ReorderBuffer` (reorder): samples wait up to `reorder_window` seconds so that out-of-order
   messages are put back in time order; duplicates are dropped; a sample older than one already
   released is *late*: counted and dropped.
4. `Resampler` (resampler): the CSV ingest's rules, applied incrementally.
5. `SegmentWriter` (segments): rows committed as segment episodes.
"""

from __future__ import annotations

import os
import sys
import time as _time
from dataclasses import dataclass, field
from typing import Any

from data_pipeline.errors import debug
from data_pipeline.ingest import ChannelRanges, IngestSpec, file_sha256
from data_pipeline.store import TrajectoryStore
from data_pipeline.store.paths import local_path
from data_pipeline.stream.config import StreamConfig
from data_pipeline.stream.messages import Sample, StreamDataError, decode
from data_pipeline.stream.reorder import ReorderBuffer
from data_pipeline.stream.resampler import Block, Resampler
from data_pipeline.stream.segments import SegmentWriter
from data_pipeline.stream.skew import SkewGuard
from data_pipeline.validate import check_schema_compatible

SHOWN = 20
"""Refused messages named on stderr one by one; later ones are counted only."""


@dataclass
class StreamStats:
    """Counters of a running stream (the status line, the CLI's summary, the live twin's metrics)."""

    messages: int = 0
    samples: int = 0
    duplicates: int = 0
    late: int = 0
    skewed: int = 0
    """Samples refused as too far from the stream's recent time (`SkewGuard`)."""
    jumps: int = 0
    """Clock jumps accepted (the stream continued at a new time)."""
    rejected: int = 0
    """Messages refused (not JSON, a wrong type, a value out of range, too large)."""
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
                                    self.config.dedupe_memory, spec.duplicates)
        self.resampler = Resampler(spec, store.schema)
        self.writer = SegmentWriter(store, source, self.config)
        self.guard = SkewGuard(self.config.max_skew_s(spec), self.config.skew_confirm)
        self.stats = StreamStats()
        self._ranges = ChannelRanges.of(spec)
        self._pending: list[Block] = []  # rows written at a clock jump, handed out by the next poll

    def feed(self, payload: bytes | str | StreamDataError, arrival: float | None = None) -> None:
        """Decode one message and buffer its samples; a bad message is refused, counted and named, never fatal.

        A `StreamDataError` is a reading its source refused already (an OPC UA value of bad quality)."""
        now = _time.monotonic() if arrival is None else arrival
        self.stats.messages += 1
        n = self.stats.messages
        if isinstance(payload, StreamDataError):
            self._reject(f"message {n}: {payload}")
            return
        try:
            samples = decode(payload, self.spec, self.config.seq_field, where=f"message {n}", ranges=self._ranges,
                             max_bytes=self.config.max_message_bytes)
        except StreamDataError as err:
            self._reject(str(err))
            return
        except (ValueError, TypeError, OverflowError, RecursionError) as err:  # a case decode missed: still one
            if debug():                                                       # message, never the stream
                raise
            self._reject(f"message {n}: could not be read ({type(err).__name__}: {err}); expected one JSON "
                         "object per sample")
            return
        resume = self.writer.resume_after_ns
        for s in samples:
            s.arrival = now
            self.stats.samples += 1
            if resume is not None and s.time_ns <= resume:  # stored by an earlier run of this source
                self.stats.duplicates += 1
                continue
            verdict = self.guard.check(s, n)
            for far, message in verdict.refused:
                self._refuse_skewed(far, message)
            if verdict.jump:
                self._jump(verdict.accepted[0].time_ns, n, now)
            for ok in verdict.accepted:
                self._buffer(ok, n)
        if self.buffer.newest_ns is not None:
            self.stats.latest_time_ns = self.buffer.newest_ns

    def _buffer(self, s: Sample, message: int) -> None:
        status = self.buffer.push(s)
        if status == "duplicate":
            self.stats.duplicates += 1
        elif status == "conflict":
            self._reject(f"message {message}: two readings of one channel at t={s.time_ns} ns (another seq); "
                         "expected one reading per channel and instant, or set duplicates: first, last or mean in "
                         "the spec")
        elif status == "late":
            self.stats.late += 1
            if self.stats.late <= 5:  # flag the first few; the count says how many there were
                print(f"stream: late sample at t={s.time_ns} ns (message {message}): its slot was already written "
                      f"(reorder window {self.config.reorder_window} s); dropped", file=sys.stderr)

    def _refuse_skewed(self, s: Sample, message: int) -> None:
        self.stats.skewed += 1
        if self.stats.skewed <= 5:
            reference = self.guard.reference_ns
            apart = "" if reference is None else f" ({(s.time_ns - reference) / 1e9:+.6g} s from the stream's newest " \
                                                  f"time {reference} ns)"
            print(f"stream: far sample at t={s.time_ns} ns (message {message}){apart}: a clock glitch, not followed "
                  f"by {self.guard.confirm} samples near it; expected a time within {self.guard.max_skew_ns / 1e9:g} "
                  "s (--max-skew); refused", file=sys.stderr)

    def _jump(self, time_ns: int, message: int, now: float) -> None:
        """The stream's clock jumped: what came before is complete; the stream continues at `time_ns`."""
        self.stats.jumps += 1
        print(f"stream: clock jump at message {message}: {self.guard.confirm} samples agree on t={time_ns} ns, far "
              "from the stream's earlier time; the piece ends and the stream continues there", file=sys.stderr)
        self._pending += self._write(self.resampler.push(self.buffer.drain()), now)
        self._pending += self._write(self.resampler.end_piece(), now)
        self.buffer.restart()

    def poll(self, now: float | None = None) -> list[Block]:
        """Resample what may leave the reorder buffer now, write it, run timed commits; return the new rows."""
        now = _time.monotonic() if now is None else now
        blocks, self._pending = self._pending, []
        blocks += self._write(self.resampler.push(self.buffer.pop_ready(now)), now)
        self.writer.maybe_commit(now)
        self._sync_stats()
        return blocks

    def finish(self) -> list[Block]:
        """Release every buffered sample, emit the last rows and commit the open segment."""
        now = _time.monotonic()
        for far, message in self.guard.drop_held():  # never confirmed by later samples
            self._refuse_skewed(far, message)
        blocks, self._pending = self._pending, []
        blocks += self._write(self.resampler.push(self.buffer.drain()), now)
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
        if len(self.stats.errors) < SHOWN:
            self.stats.errors.append(message)
            print(f"stream: rejected: {message}", file=sys.stderr)
            if len(self.stats.errors) == SHOWN:
                print("stream: further rejected messages are counted, not shown", file=sys.stderr)

    def status_line(self) -> str:
        """One line for the terminal: rows, commits, lag, buffer and the drop counters."""
        s = self.stats
        return (f"rows: {s.rows}  committed: {s.committed_steps}  lag: {s.lag_s():.2f} s  buffered: "
                f"{len(self.buffer)}  late: {s.late}  skewed: {s.skewed}  duplicates: {s.duplicates}  "
                f"rejected: {s.rejected}")


def open_or_create(out: str, spec: IngestSpec, spec_path: str, source: str) -> TrajectoryStore:
    """The store to stream into: an existing one (same schema) opened for appending, or a new one."""
    provenance: dict[str, Any] = {"source": "stream", "stream": source, "spec_path": str(spec_path),
                                  "spec_sha256": file_sha256(spec_path), "spec": spec.raw,
                                  "started_at_ns": _time.time_ns()}
    if spec.reward is None:
        provenance["reward"] = "no reward column in the spec: reward stored as 0"
    schema = spec.schema(provenance)
    local = local_path(out)
    if local is None or (os.path.exists(os.path.join(local, "zarr.json"))):
        try:
            store = TrajectoryStore.open(out, mode="a")
        except FileNotFoundError:
            return TrajectoryStore.create(out, schema)
        try:
            check_schema_compatible(store.schema, schema, use="append", where=f"{source} (spec {spec_path})")
        except BaseException:
            store.close()
            raise
        return store
    return TrajectoryStore.create(out, schema)
