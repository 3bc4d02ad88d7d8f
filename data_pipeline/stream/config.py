"""`StreamConfig`: how a stream is buffered, resampled and committed (the `python -m data_pipeline
stream` options)."""

from __future__ import annotations

from dataclasses import dataclass


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
