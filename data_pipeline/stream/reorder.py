"""`ReorderBuffer`: samples back into time order, duplicates and late samples dropped, samples at one
instant merged by the spec's `duplicates` rule (`data_pipeline.ingest.timeline`, as the file ingest)."""

from __future__ import annotations

import heapq
from collections import deque
from typing import Any

import numpy as np

from data_pipeline.ingest.timeline import combine
from data_pipeline.stream.messages import Sample


class ReorderBuffer:
    """A bounded buffer that releases samples in time order, dropping duplicates and late samples.

    A sample is released once the stream has moved `window` seconds past it (the newest sample time
    seen minus the window), once it has waited `window` seconds on the wall clock, or when the buffer
    is over capacity. Samples with the same time (e.g. two sensors reporting in separate messages)
    are merged into one row; a channel both report is settled by `duplicates` (the spec's rule:
    'error' refuses the later sample as a *conflict*, 'first', 'last' or 'mean'). Duplicates are the
    same `seq`, or without one the same time and channels; a sample at or before one already
    released is *late*.
    """

    def __init__(self, window: float, capacity: int = 100_000, dedupe_memory: int = 65_536,
                 duplicates: str = "error") -> None:
        self.window_ns = round(window * 1e9)
        self.window_s = window
        self.capacity = capacity
        self._heap: list[int] = []
        self._rows: dict[int, Sample] = {}
        self._counts: dict[int, np.ndarray] = {}  # readings averaged per channel (duplicates: mean)
        self.duplicates = duplicates
        self._seen: set[tuple[Any, ...]] = set()
        self._seen_order: deque[tuple[Any, ...]] = deque()
        self._memory = dedupe_memory
        self.newest_ns: int | None = None
        self.released_ns: int | None = None
        """Time of the last released sample: anything at or before it is late."""

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, sample: Sample) -> str:
        """Buffer a sample; returns "ok", "duplicate", "late" or "conflict" (a channel already held at
        this instant, under duplicates: error; the sample is dropped)."""
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
        else:  # same instant: merge the channels, the duplicates rule where both report
            count = self._counts.setdefault(sample.time_ns, np.isfinite(held.values).astype(np.int64))
            if combine(held.values, count, sample.values, self.duplicates) is not None:
                return "conflict"
            held.arrival = max(held.arrival, sample.arrival)
        if self.newest_ns is None or sample.time_ns > self.newest_ns:
            self.newest_ns = sample.time_ns
        return "ok"

    def _remember(self, key: tuple[Any, ...]) -> None:
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

    def restart(self) -> None:
        """Forget the stream time (after a clock jump, once drained): any time is on time again."""
        self.newest_ns = self.released_ns = None

    def _pop(self) -> Sample:
        t = heapq.heappop(self._heap)
        self.released_ns = t
        self._counts.pop(t, None)
        return self._rows.pop(t)
