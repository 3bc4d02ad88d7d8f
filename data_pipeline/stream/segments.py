"""`SegmentWriter`: the stream's rows into the store as segment episodes, committed as they go.

Rows go into an open `EpisodeWriter` (the store's incremental episode writer), committed every
`commit_seconds` (or `commit_rows`) as one segment episode, at a gap and at shutdown. A new segment
starts with the last row of the previous one, so no transition is lost (docs/live-twin.md).
"""

from __future__ import annotations

import time as _time

import numpy as np

from data_pipeline.store import EpisodeWriter, TrajectoryStore
from data_pipeline.stream.config import StreamConfig
from data_pipeline.stream.resampler import Block


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
        self.segment: EpisodeWriter | None = None
        """The open (uncommitted) segment."""
        self.opened = 0.0
        self.continues = False  # the open segment starts with the previous segment's last row
        self._last: tuple[int, np.ndarray, np.ndarray, float] | None = None
        self._label = ""
        self.committed_steps = 0
        self.committed_episodes = 0
        self.resume_after_ns = last_committed_time(store, source)
        """Samples at or before this time are already in the store (an earlier run of this source)."""

    def add(self, block: Block, now: float) -> None:
        for i in range(len(block)):
            row = (int(block.time[i]), block.obs[i], block.action[i], float(block.reward[i]))
            if self.resume_after_ns is not None and row[0] <= self.resume_after_ns:
                continue
            segment = self.segment if self.segment is not None else self._open(block.label, row[0], now)
            segment.add(obs=row[1], action=row[2], reward=row[3], time=row[0])
            self._last = row
            if self.config.commit_rows > 0 and segment.num_rows >= self.config.commit_rows:
                self.commit(final=False, now=now)
        if block.ends_piece:
            self.commit(final=True)

    def _open(self, label: str, time_ns: int, now: float) -> EpisodeWriter:
        name = f"{self.source}:{label}" if label else self.source
        self.segment = self.store.episode_writer(episode_id=f"{name}@{time_ns}", source=name,
                                         flush_rows=self.config.flush_rows)
        self.opened = now
        self._label = label
        return self.segment

    def maybe_commit(self, now: float) -> None:
        """Commit the open segment if its time or row budget is spent, and continue in a new one."""
        if self.segment is None or self.segment.num_rows < 2:
            return
        c = self.config
        if (c.commit_seconds > 0 and now - self.opened >= c.commit_seconds) or \
                (c.commit_rows > 0 and self.segment.num_rows >= c.commit_rows):
            self.commit(final=False, now=now)

    def commit(self, final: bool, now: float | None = None) -> None:
        """Commit the open segment (at least one transition); with `final=False` continue in a new one."""
        if self.segment is None:
            return
        if self.segment.num_rows < 2:
            if final:
                self.segment.abort()
                self.segment, self.continues = None, False
            return
        rows = self.segment.num_rows
        self.segment.commit(truncated=True)
        self.committed_steps += rows - self.continues  # the shared first row is counted once
        self.committed_episodes += 1
        self.segment = None
        self.continues = False
        if not final and self._last is not None:
            t, obs, action, reward = self._last
            segment = self._open(self._label, t, _time.monotonic() if now is None else now)
            segment.add(obs=obs, action=action, reward=reward, time=t)
            self.continues = True

    def close(self) -> None:
        """Commit what is complete and drop nothing else."""
        self.commit(final=True)


def last_committed_time(store: TrajectoryStore, source: str) -> int | None:
    """The newest committed row time of episodes from `source` (a restarted stream resumes after it)."""
    table = store.episodes()
    mine = table[(table["source"] == source) | table["source"].str.startswith(source + ":")]
    if not len(mine):
        return None
    last = mine.iloc[-1]
    end = int(last["start"] + last["length"])
    return int(store.read_rows("time", end - 1, end)[0])
