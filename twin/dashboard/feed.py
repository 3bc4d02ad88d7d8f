"""`LiveFeed`: the live mirror of `python -m twin.live`, run in a background thread, with its recent rows kept.

    feed = LiveFeed(live_args)          # the Namespace of `python -m twin.live` (twin.live.build_parser)
    feed.start()                        # returns once the mirror is built (or raises its error)
    snap = feed.snapshot()              # the recent rows, their predictions, scores and the counters
    feed.close()                        # stop: the stream commits and the scores are flushed, as on SIGTERM

The feed does not re-implement anything of the mirror: it runs `twin.live.run_live` itself and watches the
`LiveMirror` through its `on_row` hook. Rows arrive in the mirror's thread; the dashboard's sessions read
copies under a lock.
"""

from __future__ import annotations

import argparse
import math
import sys
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from data_pipeline.errors import UserError
from data_pipeline.stream import StreamIngest
from twin.anomaly import ScoreStep
from twin.live import run_live
from twin.mirror import LiveMirror

KEEP_ROWS = 600
"""Rows of recent history the live view shows (30 s of a 20 Hz stream)."""


class LiveFeedError(UserError):
    """The live mirror could not start (its model, spec, source or store): the mirror's own message."""


@dataclass
class LiveSnapshot:
    """A copy of the feed's recent rows and counters, safe to read in a session's thread."""

    channels: list[str]
    units: list[str]
    time_ns: np.ndarray
    """(N,) int64 ns of the mirrored rows, oldest first."""
    obs: np.ndarray
    """(N, D) the observed values."""
    mean: np.ndarray
    """(N, D) the one-step prediction made for each row a row earlier (NaN on a piece's first row)."""
    std: np.ndarray
    """(N, D) its predictive std (the twin's belief uncertainty one step ahead)."""
    score: np.ndarray
    """(N,) the alarm score (surprise averaged over the window)."""
    contribution: np.ndarray
    """(N, D) per-channel surprise."""
    threshold: float
    training_std: np.ndarray
    """(D,) each channel's std in the training data (the score's unit)."""
    counters: dict[str, float] = field(default_factory=dict)
    """steps, committed, late, rejected, duplicates, skewed, alerts, lag_s."""
    running: bool = True
    error: str | None = None


class LiveFeed:
    """Runs `twin.live.run_live` in a daemon thread and keeps the last `keep` scored rows."""

    def __init__(self, args: argparse.Namespace, keep: int = KEEP_ROWS) -> None:
        self.args = args
        self.stop = threading.Event()
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._rows: deque[tuple[int, np.ndarray, np.ndarray, np.ndarray, float, np.ndarray]] = deque(maxlen=keep)
        self.mirror: LiveMirror | None = None
        self.ingest: StreamIngest | None = None
        self.error: str | None = None
        self.result: dict | None = None
        self._thread = threading.Thread(target=self._run, name="twin.live", daemon=True)

    def start(self, timeout: float = 120.0) -> None:
        """Start the mirror; return once it is built, or raise `LiveFeedError` with its message."""
        self._thread.start()
        self._ready.wait(timeout)
        if self.mirror is None:
            self.close()
            raise LiveFeedError(f"--live: {self.error or f'the live mirror did not start within {timeout:g} s'}")

    def _run(self) -> None:
        try:
            self.result = run_live(self.args, stop=self.stop, on_mirror=self._attach)
        except BaseException as err:  # shown on the page and, before the mirror is built, as the command's error
            known = isinstance(err, UserError | ValueError | OSError)
            self.error = str(err) if known else f"{type(err).__name__}: {err}"
            if self.mirror is not None:  # before, `start` raises it as the command's one error line
                print(f"twin.dashboard: live mirror stopped: {self.error}", file=sys.stderr, flush=True)
        finally:
            self._ready.set()

    def _attach(self, mirror: LiveMirror, ingest: StreamIngest) -> None:
        self.mirror, self.ingest = mirror, ingest
        mirror.on_row = self._row
        self._ready.set()

    def _row(self, time_ns: int, obs: np.ndarray, mean: np.ndarray | None, std: np.ndarray | None,
             out: ScoreStep) -> None:
        d = len(obs)
        nan = np.full(d, np.nan)
        row = (time_ns, np.asarray(obs, np.float64).copy(), nan if mean is None else np.asarray(mean[0], np.float64),
               nan if std is None else np.asarray(std[0], np.float64), float(out.score[0]),
               np.asarray(out.contributions[0], np.float64).copy())
        with self._lock:
            self._rows.append(row)

    def snapshot(self) -> LiveSnapshot:
        """The recent rows and the counters, copied."""
        assert self.mirror is not None and self.ingest is not None, "LiveFeed.snapshot before start"
        mirror, st = self.mirror, self.ingest.stats
        schema = mirror.twin.model.schema
        d = len(mirror.channels)
        with self._lock:
            rows = list(self._rows)
        counters = {"steps": mirror.stats.steps, "committed": st.committed_steps, "late": st.late,
                    "rejected": st.rejected, "duplicates": st.duplicates, "skewed": st.skewed,
                    "alerts": mirror.stats.alerts, "lag_s": st.lag_s()}

        def col(k: int, shape: tuple[int, ...]) -> np.ndarray:
            return np.array([r[k] for r in rows], np.float64).reshape(len(rows), *shape)

        threshold = mirror.scorer.threshold
        return LiveSnapshot(
            channels=list(mirror.channels), units=list(schema.obs_units),
            time_ns=np.array([r[0] for r in rows], np.int64), obs=col(1, (d,)), mean=col(2, (d,)), std=col(3, (d,)),
            score=col(4, ()), contribution=col(5, (d,)), threshold=threshold if math.isfinite(threshold) else math.nan,
            training_std=np.asarray(mirror.scorer.scale, np.float64), counters=counters,
            running=self._thread.is_alive(), error=self.error)

    def close(self, timeout: float = 30.0) -> None:
        """Stop the mirror (it commits the open segment and flushes the scores) and wait for it."""
        self.stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
