"""`current_state`: the newest mirrored observation, the twin's belief about the next one and the anomaly
score of the recent rows, from the store's last committed rows (what `python -m twin.live` appends).

The twin assimilates the newest episode's last `RECENT` rows step by step (`Twin.track`, the live
mirror's loop), each row is scored against the prediction made for it one row earlier, and the belief
is the one-step prediction under the newest action (held where the episode's last action is unknown).
"""

from __future__ import annotations

import numpy as np

from data_pipeline.errors import UserError
from data_pipeline.store import TrajectoryStore
from twin.anomaly import AnomalyConfig, AnomalyScorer
from twin.mcp import results as r
from twin.sync import Twin
from worldmodel.interface import WorldModel

RECENT = 64
"""Rows of the newest episode the twin assimilates and scores."""


def latest_state(model: WorldModel, store: TrajectoryStore, config: AnomalyConfig, threshold: float | None,
                 source: str) -> r.CurrentState:
    """The CurrentState of the newest committed row of `store` (which mirrors `source`)."""
    table = store.episodes()
    if not len(table):
        raise UserError(f"{source}: no rows mirrored yet (the mirror commits about every second); try again soon")
    last = table.iloc[-1]
    start, length = int(last["start"]), int(last["length"])
    a = start + max(0, length - RECENT)
    b = start + length
    obs = store.read_rows("obs", a, b).astype(np.float32)  # (K, D)
    action = store.read_rows("action", a, b)  # (K, A); the episode's last row holds NaN / -1
    schema = model.schema
    act: np.ndarray = action[:, 0].astype(np.int64) if schema.discrete else action.astype(np.float32)
    unknown = np.asarray(act < 0 if schema.discrete else np.isnan(act).any(-1))
    for k in np.flatnonzero(unknown):  # hold the previous action where none is recorded
        act[k] = act[k - 1] if k > 0 else np.zeros_like(act[k])
    twin = Twin(model, particles=config.particles)
    mean, std = twin.track(obs, act)  # (K, D): predictions for the row after each
    scorer = AnomalyScorer(model, config, threshold)
    step = scorer.score(None, None, obs[:1])
    for row in range(1, len(obs)):
        step = scorer.score(mean[row - 1 : row], std[row - 1 : row], obs[row : row + 1])
    pred = twin.predict(act[-1])  # the belief about the next row; does not move the twin
    channels = list(schema.obs_channels)
    surprise = {c: r.finite(float(v)) for c, v in zip(channels, step.contributions[0], strict=True)}
    time_ns = int(store.read_rows("time", b - 1, b)[0])
    last_action = np.atleast_1d(act[-1]).astype(np.float64)
    return r.CurrentState(
        source=source, episode=str(last["id"]), row=length - 1,
        time=str(np.datetime64(time_ns, "ns")) + "Z",
        observation={c: r.finite(float(v)) for c, v in zip(channels, obs[-1], strict=True)},
        last_action={c: r.finite(float(v)) for c, v in zip(schema.action_channels, last_action, strict=True)},
        belief=[r.Belief(channel=c, mean=r.finite(float(m)), std=r.finite(float(s)))
                for c, m, s in zip(channels, pred.obs_mean[0].float().numpy(), pred.obs_std[0].float().numpy(),
                                   strict=True)],
        model_uncertainty=r.finite(float(pred.uncertainty.float().mean())),
        anomaly=r.Anomaly(score=r.finite(float(step.score[0])), threshold=threshold, alert=bool(step.alert[0]),
                          channels=surprise, window=config.window, scored_rows=len(obs)))
