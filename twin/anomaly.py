"""Anomaly scores: how surprised a world model is by each new observation (docs/live-twin.md).

    scorer = AnomalyScorer(model, AnomalyConfig(window=4), threshold=calibration.threshold)
    out = scorer.score(pred_mean, pred_std, obs)    # the one-step prediction made a step earlier

    calibration = calibrate(model, store_episodes("pendulum.zarr", "val"), AnomalyConfig(window=4))

(`python -m twin.calibrate` is the command that writes a calibration file.)

The surprise of an observation is its Gaussian negative log-likelihood under the model's one-step
prediction (`obs_mean`, `obs_std`), per channel and summed over channels, in units of each channel's
standard deviation in the training data (so channels in different units weigh alike). Models
without a usable predictive std get the normalized squared error instead. The score is the surprise
averaged over the last `window` steps; its threshold is the (1 - false_alarm_rate) quantile of the
scores on held-out validation episodes.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from data_pipeline.errors import UserError
from data_pipeline.store import TrajectoryStore
from data_pipeline.windows import split_episodes
from worldmodel.interface import Prediction, WorldModel, index_state

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)
ScoreKind = Literal["auto", "nll", "normalized"]


class AnomalyError(UserError, ValueError):
    """A score setting, a calibration file or a store that cannot give anomaly scores (names which, and
    what was expected)."""


@dataclass
class AnomalyConfig:
    """How the per-step surprise becomes an alarm score."""

    window: int = 1
    """Steps the score averages the surprise over (a causal moving mean); 1 is the per-step surprise."""
    false_alarm_rate: float = 0.01
    """Fraction of normal steps allowed above the threshold (the calibration quantile is 1 - this)."""
    std_floor: float = 0.01
    """Lowest predictive std, as a fraction of the channel's training std: keeps a model that is sure of a
    channel from turning rounding-level errors into huge scores."""
    kind: ScoreKind = "auto"
    """"nll" (Gaussian NLL from obs_mean / obs_std), "normalized" (squared error over the channel's training
    std, for models without a predictive std) or "auto" (nll where the std is usable, else normalized)."""
    particles: int = 1
    """Belief copies per system whose predictions are pooled (a mixture): with an ensemble, `elites`
    particles make the prediction the elites' average instead of one member's."""

    def __post_init__(self) -> None:
        if self.window < 1:
            raise AnomalyError(f"anomaly window={self.window}; expected at least 1 step")
        if not 0 < self.false_alarm_rate < 1:
            raise AnomalyError(f"false_alarm_rate={self.false_alarm_rate}; expected a fraction in (0, 1)")
        if self.kind not in ("auto", "nll", "normalized"):
            raise AnomalyError(f"anomaly kind={self.kind!r}; expected 'auto', 'nll' or 'normalized'")
        if self.particles < 1:
            raise AnomalyError(f"particles={self.particles}; expected at least 1")


def channel_scale(model: WorldModel) -> np.ndarray:
    """(obs_dim,) each channel's std in the model's training data (its normalization)."""
    return np.maximum(np.asarray(model.normalization.obs_std, np.float64), 1e-6)


def surprise(obs: np.ndarray, mean: np.ndarray, std: np.ndarray | None, scale: np.ndarray,
             config: AnomalyConfig) -> np.ndarray:
    """(B, obs_dim) per-channel surprise of `obs` under the prediction (mean, std), all (B, obs_dim)."""
    z = (obs - mean) / scale
    use_nll = config.kind == "nll" or (config.kind == "auto" and std is not None)
    if use_nll and std is not None:
        s = np.maximum(std / scale, config.std_floor)
        s = np.where(np.isfinite(s), s, config.std_floor)
        return 0.5 * (z / s) ** 2 + np.log(s) + LOG_SQRT_2PI
    return 0.5 * z**2


def pool(pred: Prediction, batch: int, particles: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (B, obs_dim) of a prediction over `particles` belief copies per system (a mixture)."""
    mean = pred.obs_mean.float().cpu().numpy().astype(np.float64)
    std = pred.obs_std.float().cpu().numpy().astype(np.float64)
    if particles == 1:
        return mean, std
    return mixture(mean.reshape(batch, particles, -1), std.reshape(batch, particles, -1), axis=1)


def mixture(mean: np.ndarray, std: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of an equal-weight Gaussian mixture over `axis` (the particles): the mean of the means,
    and a variance that adds the means' spread (the particles' disagreement) to their mean variance."""
    return mean.mean(axis), np.sqrt((std**2).mean(axis) + mean.var(axis))


@dataclass
class ScoreStep:
    """Scores of one step for B systems."""

    surprise: np.ndarray
    """(B,) the step's surprise (sum over channels); NaN where there was no prediction (a first row)."""
    score: np.ndarray
    """(B,) surprise averaged over the last `window` steps (the alarm score)."""
    contributions: np.ndarray
    """(B, obs_dim) per-channel surprise."""
    alert: np.ndarray
    """(B,) bool: score above the threshold."""


class AnomalyScorer:
    """Per-step surprise, its moving average and the alert flag, for B systems side by side."""

    def __init__(self, model: WorldModel, config: AnomalyConfig | None = None, threshold: float | None = None,
                 batch: int = 1) -> None:
        self.config = config or AnomalyConfig()
        self.threshold = math.inf if threshold is None else float(threshold)
        self.scale = channel_scale(model)
        self.obs_dim = model.obs_dim
        self.batch = batch
        self._recent = np.full((batch, self.config.window), np.nan)
        self._count = np.zeros(batch, np.int64)

    def reset(self, index: np.ndarray | None = None) -> None:
        """Forget the moving window of these systems (a new piece of the stream)."""
        rows = slice(None) if index is None else index
        self._recent[rows] = np.nan
        self._count[rows] = 0

    def score(self, mean: np.ndarray | None, std: np.ndarray | None, obs: np.ndarray) -> ScoreStep:
        """Score `obs` (B, obs_dim) against the prediction made for it; `mean=None` for a first row."""
        obs = np.asarray(obs, np.float64).reshape(self.batch, self.obs_dim)
        if mean is None:
            contrib = np.full((self.batch, self.obs_dim), np.nan)
        else:
            contrib = surprise(obs, mean, std, self.scale, self.config)
        raw = contrib.sum(-1)
        w = self.config.window
        slot = self._count % w
        self._recent[np.arange(self.batch), slot] = raw
        self._count += np.isfinite(raw)
        finite = np.isfinite(self._recent)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(finite, self._recent, 0.0).sum(1) / finite.sum(1)
        score = np.where(np.isfinite(raw), mean, np.nan)
        return ScoreStep(surprise=raw, score=score, contributions=contrib, alert=score > self.threshold)


# ---------------------------------------------------------------------- recorded episodes
@torch.inference_mode()
def score_episodes(model: WorldModel, episodes: list[tuple[np.ndarray, np.ndarray]],
                   config: AnomalyConfig | None = None, seed: int = 0) -> list[ScoreStep]:
    """Score recorded episodes, all in one batch stepped in lockstep (the live twin's loop, batched).

    Each episode is `(obs (T, obs_dim), action (T, action_dim))`, store-aligned (action[t] taken at
    obs[t]). Returns one ScoreStep per episode with (T,) / (T, obs_dim) arrays; row 0 has no
    prediction (NaN). Shorter episodes are padded with their last row, and the padding is cut off.
    """
    config = config or AnomalyConfig()
    n, p = len(episodes), config.particles
    lengths = [len(o) for o, _ in episodes]
    t_max = max(lengths)
    obs = np.stack([np.concatenate([o, np.repeat(o[-1:], t_max - len(o), 0)]) for o, _ in episodes])
    act = np.stack([np.concatenate([a, np.repeat(a[-1:], t_max - len(a), 0)]) for _, a in episodes])
    if model.discrete:  # the last row's -1 fill: any valid index, its prediction is never scored
        act = np.maximum(act.reshape(n, t_max, -1)[..., 0].astype(np.int64), 0)
    else:
        act = np.nan_to_num(act.astype(np.float32))
    device = model.device
    obs_t = torch.from_numpy(np.repeat(obs.astype(np.float32), p, axis=0)).to(device)   # (N*P, T, D)
    act_t = torch.from_numpy(np.repeat(act, p, axis=0)).to(device)
    generator = torch.Generator().manual_seed(seed)
    # Every episode starts from the belief a live twin (one system, P particles) starts from.
    state = index_state(model.initial_state(p), torch.arange(n * p, device=device) % p)
    scorer = AnomalyScorer(model, config, batch=n)
    first = torch.ones(n * p, 1, dtype=torch.bool, device=device)
    not_first = torch.zeros_like(first)
    prev = torch.zeros_like(act_t[:, 0])
    steps = []
    mean = std = None
    for t in range(t_max):
        steps.append(scorer.score(mean, std, obs[:, t]))
        state = model.observe(state, obs_t[:, t : t + 1], prev[:, None], first if t == 0 else not_first)
        _, pred = model.step(state, act_t[:, t], generator)
        mean, std = pool(pred, n, p)
        prev = act_t[:, t]
    out = []
    for i, length in enumerate(lengths):
        out.append(ScoreStep(*(np.stack([getattr(s, f)[i] for s in steps])[:length]
                               for f in ("surprise", "score", "contributions", "alert"))))
    return out


@dataclass
class Calibration:
    """A threshold for a chosen false-alarm rate, fitted on held-out normal episodes."""

    threshold: float
    false_alarm_rate: float
    config: dict = field(default_factory=dict)
    """The AnomalyConfig the threshold holds for."""
    steps: int = 0
    """Scored steps the quantile was taken over."""
    episodes: int = 0
    quantiles: dict = field(default_factory=dict)
    """Score quantiles on the validation steps (50, 90, 99, 99.9 %)."""
    model: str = ""
    store: str = ""

    def anomaly_config(self) -> AnomalyConfig:
        return AnomalyConfig(**self.config)

    def save(self, path: str | Path) -> str:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")
        return str(path)

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        try:
            data = json.loads(Path(path).read_text())
        except json.JSONDecodeError as err:
            raise AnomalyError(f"{path}: not a calibration file ({err}); expected the JSON written by "
                               "`python -m twin.calibrate`") from None
        if not isinstance(data, dict):
            raise AnomalyError(f"{path}: holds a JSON {type(data).__name__}; expected the object written by "
                               "`python -m twin.calibrate`")
        missing = {"threshold", "false_alarm_rate"} - set(data)
        if missing:
            raise AnomalyError(f"{path}: calibration file lacks {sorted(missing)}; expected the output of "
                               "`python -m twin.calibrate`")
        # A NaN or a string threshold would silence every alert (or fail mid-stream), far from this file.
        for key in ("threshold", "false_alarm_rate"):
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise AnomalyError(f"{path}: {key} is {value!r}; expected a finite number (the output of "
                                   "`python -m twin.calibrate`)")
        calibration = cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})
        try:
            calibration.anomaly_config()
        except TypeError as err:
            raise AnomalyError(f"{path}: config {calibration.config!r} is not an anomaly config ({err}); expected "
                               "the output of `python -m twin.calibrate`") from None
        return calibration


def calibrate(model: WorldModel, episodes: list[tuple[np.ndarray, np.ndarray]],
              config: AnomalyConfig | None = None, model_name: str = "", store: str = "") -> Calibration:
    """The score threshold exceeded by `false_alarm_rate` of the steps of normal (held-out) episodes."""
    config = config or AnomalyConfig()
    scores = np.concatenate([s.score for s in score_episodes(model, episodes, config)])
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        raise AnomalyError("calibrate: no scored step (episodes need at least 2 rows)")
    q = 1.0 - config.false_alarm_rate
    threshold = float(np.quantile(scores, q, method="higher"))
    quantiles = {f"{100 * x:g}": float(np.quantile(scores, x)) for x in (0.5, 0.9, 0.99, 0.999)}
    return Calibration(threshold=threshold, false_alarm_rate=config.false_alarm_rate, config=asdict(config),
                       steps=int(scores.size), episodes=len(episodes), quantiles=quantiles, model=model_name,
                       store=store)


def store_episodes(store_path: str, split: str = "val", seed: int = 0, max_episodes: int | None = None
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(obs, action) of a store's committed episodes in a split ("train", "val", "test" or "all").

    The split is the training split (`split_episodes`, same seed), so "val" holds episodes the model
    never trained on: normal behaviour it has not memorized, which is what a threshold must hold for.
    """
    with TrajectoryStore.open(store_path) as store:
        if split == "all":
            which = np.arange(store.num_episodes)
        else:
            parts = split_episodes(store, seed)
            if split not in parts:
                raise AnomalyError(f"split {split!r}; expected 'train', 'val', 'test' or 'all'")
            which = parts[split]
        if max_episodes is not None:
            which = which[:max_episodes]
        out = []
        for e in which:
            ep = store.read_episode(int(e))
            if ep.obs is None:
                raise AnomalyError(f"{store_path}: episode {ep.episode_id!r} has no vector observations; anomaly "
                                   "scores need an `obs` channel (image-only stores are not supported)")
            out.append((ep.obs.astype(np.float32), ep.action))
    if not out:
        raise AnomalyError(f"{store_path}: the {split!r} split has no episode to calibrate on")
    return out
