"""`StreamConfig`: how a stream is buffered, resampled and committed (the `python -m data_pipeline
stream` options)."""

from __future__ import annotations

from dataclasses import dataclass

from data_pipeline.ingest import GROUPS, IngestSpec

MAX_MESSAGE_BYTES = 1 << 20
"""Default largest message (1 MiB); a longer one is refused, and a source reads no more of it."""


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
    max_skew: float | None = None
    """Seconds a sample's time may be from the stream's newest time before it is held as a possible glitch
    (`SkewGuard`); None: 10 x the spec's longest max_gap, at least 2 x reorder_window."""
    skew_confirm: int = 3
    """Far samples at distinct times that, arriving together, confirm a clock jump instead of a glitch."""
    max_message_bytes: int = MAX_MESSAGE_BYTES
    """Bytes a message may have; a longer one is refused."""

    def max_skew_s(self, spec: IngestSpec) -> float:
        """`max_skew`, or its default for `spec`."""
        if self.max_skew is not None:
            return self.max_skew
        return max(10 * max(spec.max_gap_of(g) for g in GROUPS), 2 * self.reorder_window)
