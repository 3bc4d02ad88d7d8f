"""The typed answers of the MCP tools (pydantic models: the SDK publishes them as each tool's output schema)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from pydantic import BaseModel, Field


def finite(x: Any) -> Any:
    """A number for JSON: NaN and infinities become None (JSON has neither); integers stay integers."""
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(float(x)) else None
    return x


class ChannelInfo(BaseModel):
    name: str
    unit: str = Field(description="physical unit ('' where none)")
    low: float | None = Field(description="lower bound of the space (None: unbounded)")
    high: float | None = Field(description="upper bound of the space (None: unbounded)")
    train_mean: float | None = Field(default=None, description="mean in the model's training data")
    train_std: float | None = Field(default=None, description="standard deviation in the model's training data")


class TwinDescription(BaseModel):
    model_kind: str = Field(description="world model kind (ensemble, rssm, diffusion, hybrid, ...)")
    model_file: str
    config: dict[str, Any] = Field(description="the model's config as saved in its file")
    dt: float = Field(description="seconds between rows")
    observations: list[ChannelInfo]
    actions: list[ChannelInfo] = Field(description="actuator channels (one channel for a Discrete action)")
    discrete_actions: int | None = Field(description="number of Discrete actions; None for continuous actions")
    reward_unit: str
    store: dict[str, Any] = Field(description="the data card: path, fingerprint, episodes, rows, time span")
    evaluation: dict[str, Any] | None = Field(description="the model's evaluation, where its file carries one")
    calibration: dict[str, Any] | None = Field(description="the anomaly threshold's calibration (--calibration)")
    physics: dict[str, Any] | None = Field(description="identified physical parameters (hybrid models)")
    policy: str | None = Field(description="the trained policy recommend_intervention uses (--policy)")
    limits: dict[str, int | float] = Field(description="compute caps of every call (samples, horizon, steps, timeout)")
    advice_only: bool = Field(default=True, description="no tool writes to the plant or to the source")


class Belief(BaseModel):
    channel: str
    mean: float | None = Field(description="predicted next value")
    std: float | None = Field(description="its predictive standard deviation")


class Anomaly(BaseModel):
    score: float | None = Field(description="surprise averaged over the score window (NaN: not enough rows)")
    threshold: float | None = Field(description="alert threshold (None without --calibration)")
    alert: bool
    channels: dict[str, float | None] = Field(
        description="each channel's surprise at the newest row (the step's surprise is their sum)")
    window: int
    scored_rows: int = Field(description="recent rows scored to get this")


class CurrentState(BaseModel):
    source: str = Field(description="where the observation comes from: the store, or the live source")
    episode: str = Field(description="episode (or stream segment) id")
    row: int = Field(description="row of the observation inside its episode")
    time: str | None = Field(description="UTC time of the observation")
    observation: dict[str, float | None]
    last_action: dict[str, float | None] = Field(description="the action recorded at the newest row, or held")
    belief: list[Belief] = Field(description="the twin's one-step prediction of the next observation")
    model_uncertainty: float | None = Field(description="the model's own uncertainty of that prediction")
    anomaly: Anomaly


class ScenarioResult(BaseModel):
    scenario: str
    start: str
    intervention: str
    quantiles: dict[str, float | None] = Field(
        description="generate.py's summary columns: '<channel>@<step>:mean|q05|q50|q95|recorded|diff_*'")
    outcomes: dict[str, float | None] = Field(description="probability of each outcome (fraction of samples)")


class SimulateResult(BaseModel):
    output: str = Field(description="the scenario store the call wrote (under the server's output folder)")
    scenarios: list[ScenarioResult]
    calibration: list[dict[str, int | float | None]] = Field(
        description="factual scenarios against the recorded future per step (coverage90, nrmse)")
    fan_charts: list[str] = Field(description="PNG fan charts, one per start")
    imagined_steps: int


class Ranked(BaseModel):
    rank: int
    intervention: str
    probability: float = Field(description="probability of the ranking outcome")
    std_error: float = Field(description="its sampling standard error, sqrt(p (1 - p) / samples)")
    interval90: tuple[float, float] = Field(description="a 90% interval of the probability (Wilson)")
    difference_to_factual: float | None = Field(description="probability minus the factual replay's")
    quantiles: dict[str, float | None]


class Comparison(BaseModel):
    condition: str = Field(description="the ranking outcome")
    when: str
    lower_is_better: bool
    samples: int
    ranking: list[Ranked]
    fan_chart: str | None
    output: str


class PlannedOutcome(BaseModel):
    return_mean: float = Field(description="predicted reward summed over the horizon, mean over samples")
    return_q05: float
    return_q95: float
    p_avoid: float | None = Field(description="probability of the outcome to avoid (None if none was given)")
    final: dict[str, dict[str, float | None]] = Field(description="per channel q05/q50/q95 at the last step")


class Recommendation(BaseModel):
    method: str = Field(description="'policy' (the trained policy in closed loop) or 'cem' (planning in the model)")
    start: str
    horizon: int
    action_channels: list[str]
    plan: list[list[float]] = Field(description="recommended actions, one row per step (H × action channels)")
    predicted: PlannedOutcome
    baseline: PlannedOutcome = Field(description="holding the recorded (or last) actions instead")
    plans_evaluated: int
    advice_only: bool = Field(default=True, description="nothing was sent to the plant")
