"""The live mirror: feeds a stream's new rows to the twin, scores them and hands the scores on.

    mirror = LiveMirror(Twin(model), AnomalyScorer(model, config, threshold), ScoreStore(...), alert)
    run(source, ingest, on_blocks=mirror.on_blocks)     # data_pipeline.stream's run loop

Each row is scored against the prediction the twin made for it one row earlier; a row that starts a
piece of the stream (the first, or the first after a gap) has none and scores NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from data_pipeline.stream import Block
from twin.anomaly import AnomalyScorer, ScoreStep
from twin.scores import ScoreStore
from twin.sync import Twin

AlertSink = Callable[[dict[str, Any]], None]
"""Takes one alert: `{"time": ns, "score": …, "threshold": …, "channels": {name: contribution, …}}`."""
RowSink = Callable[[int, np.ndarray, np.ndarray | None, np.ndarray | None, ScoreStep], None]
"""Sees each scored row: `(time_ns, obs (D,), predicted mean (1, D) or None, predicted std (1, D) or None, scores)`,
the prediction being the one the twin made for this row a row earlier (None on a piece's first row)."""


@dataclass
class LiveStats:
    """Running counts of the live mirror (the status line and MLflow read them)."""

    steps: int = 0
    """Rows mirrored and scored."""
    alerts: int = 0
    """Rising edges: the score went above the threshold."""
    alert_steps: int = 0
    """Rows whose score was above the threshold."""
    latest_score: float = float("nan")
    max_score: float = float("nan")
    """Highest score since the last MLflow log."""


@dataclass
class Latest:
    """The newest scored row (what a display shows): its time, score, alert flag, and the twin's prediction of
    the next row's observation (None after a piece ended)."""

    time_ns: int
    score: float
    alert: bool
    prediction: np.ndarray | None


class LiveMirror:
    """Feeds the stream's new rows to the twin, scores them and hands the scores on (store, alerts, MLflow)."""

    def __init__(self, twin: Twin, scorer: AnomalyScorer, scores: ScoreStore | None = None,
                 alert: AlertSink | None = None, channels: list[str] | None = None) -> None:
        self.twin = twin
        self.scorer = scorer
        self.scores = scores
        self.alert: AlertSink = alert or (lambda message: None)
        self.channels = channels or [str(i) for i in range(twin.obs_dim)]
        self.stats = LiveStats()
        self._pending: tuple[np.ndarray, np.ndarray] | None = None
        self._prev_action: np.ndarray | None = None
        self._above = False
        self.on_row: RowSink | None = None
        """Set to watch each scored row with its prediction (the dashboard's live view does)."""
        self.latest: Latest | None = None

    def on_blocks(self, blocks: list[Block]) -> None:
        """Track and score each block's rows; a block that starts a piece (after a gap) restarts the belief."""
        for block in blocks:
            if block.starts_piece:  # after a gap the belief starts afresh
                self.twin.reset()
                self.scorer.reset()
                self._pending, self._prev_action = None, None
            if len(block):
                action = block.action[:, 0] if self.twin.discrete else block.action
                mean, std = self.twin.track(block.obs, action, self._prev_action)
                for i in range(len(block)):
                    self._score(int(block.time[i]), block.obs[i])
                    self._pending = (mean[i : i + 1], std[i : i + 1])
                self._prev_action = action[-1]
            if block.ends_piece:
                self._pending = None
            if self.latest is not None:
                self.latest.prediction = None if self._pending is None else self._pending[0][0]

    def _score(self, time_ns: int, obs: np.ndarray) -> None:
        mean, std = self._pending if self._pending is not None else (None, None)
        out = self.scorer.score(mean, std, obs[None])
        s = self.stats
        s.steps += 1
        score = float(out.score[0])
        if math.isfinite(score):
            s.latest_score = score
            s.max_score = score if not math.isfinite(s.max_score) else max(s.max_score, score)
        if self.scores is not None:
            self.scores.append(time_ns, out)
        if self.on_row is not None:
            self.on_row(time_ns, obs, mean, std, out)
        above = bool(out.alert[0])
        self.latest = Latest(time_ns, score, above, None)
        s.alert_steps += above
        if above and not self._above:  # one alert per excursion above the threshold
            s.alerts += 1
            contrib = out.contributions[0]
            top = sorted(zip(self.channels, contrib.tolist(), strict=True), key=lambda kv: -kv[1])
            self.alert({"time": time_ns, "score": score, "threshold": self.scorer.threshold,
                        "channels": {k: round(v, 4) for k, v in top}})
        self._above = above

