"""Aggregated live metrics to MLflow (through `tracking.logger`), once per interval.

Per-step scores go to the score store (`twin.scores`); MLflow gets the counts, the latest and the
highest score of each interval, and the stream's lag, late and duplicate counts, so a dashboard shows
the twin's health without one MLflow call per step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from data_pipeline.stream import StreamStats
from twin.mirror import LiveMirror


class MlflowLog:
    """Aggregated live metrics to MLflow, once per interval (per-step scores go to the score store)."""

    def __init__(self, params: dict[str, Any], experiment: str = "twinworld-live", every: float = 5.0) -> None:
        from tracking.logger import BufferedMLflowLogger  # imports Lightning: only when MLflow logging is on

        self.logger = BufferedMLflowLogger(experiment_name=experiment, run_name=f"live-{Path(params['store']).stem}",
                                           flush_interval_s=every)
        self.logger.log_hyperparams(params)
        self.every = every
        self._last = 0.0

    @property
    def run_id(self) -> str:
        return self.logger.run_id

    def log(self, mirror: LiveMirror, stream_stats: StreamStats, now: float, force: bool = False) -> None:
        """Log the metrics if `every` seconds passed since the last log (`now`: time.monotonic()), or if forced."""
        if not force and now - self._last < self.every:
            return
        self._last = now
        s = mirror.stats
        metrics = {"twin/steps": s.steps, "twin/lag_s": stream_stats.lag_s(), "anomaly/alerts": s.alerts,
                   "anomaly/alert_steps": s.alert_steps, "stream/late": stream_stats.late,
                   "stream/duplicates": stream_stats.duplicates, "stream/committed_steps": stream_stats.committed_steps}
        if math.isfinite(s.latest_score):
            metrics["anomaly/score"] = s.latest_score
        if math.isfinite(s.max_score):
            metrics["anomaly/score_max"] = s.max_score
        s.max_score = float("nan")
        self.logger.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)}, step=s.steps)

    def close(self) -> None:
        self.logger.end_run()

