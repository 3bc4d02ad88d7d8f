"""Post-hoc calibration of a model's predictive spread on held-out windows: per-horizon, per-channel scales.

A trained model's 90% sample bands rarely cover 90% of the truth: an ensemble whose members disagree
covers too much, a diffusion model with a few denoising steps too little. The fix is fitted after
training, on the validation split, and stored in the model (`ModelBase.calibration`, applied in every
`step`, see worldmodel/base.py), so envs, scenarios and the live twin all get calibrated samples.

The fit is one greedy pass over the horizon, on the same open-loop rollouts as the evaluation, from
windows of the split starting every quarter window (overlapping, so a few long validation episodes still
give enough starts): at imagined step h, with steps 1…h-1 already calibrated, the model's step is run
twice with the same noise, at scale 0 (the center) and at scale 1 (the raw sample). For each channel the
scale whose band `center + s · (sample - center)` (clamped to the channel's limits) covers the truth
closest to 90% is chosen from a log grid, and the step is run once more at that scale, so step h+1 starts
from calibrated samples (a scale above 1 is not carried forward, see worldmodel/base.py). Cost: three
model steps per horizon on B·S rows; deterministic for a seed.

Limits: a scale only reshapes the spread a step draws around its own center. Where the center itself is
random (diffusion: the mean of `spread_samples` draws; RSSM: the latent carries its own noise, and
observations are not fed back), a band cannot narrow below that part of the spread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from data_pipeline.store import TrajectoryStore
from data_pipeline.windows.batch import Batch
from data_pipeline.windows.fixed import EVAL_CACHE_BYTES, FixedWindows
from worldmodel.base import ModelBase
from worldmodel.evaluation import coverage90, rollout_samples, start_rollouts

TARGET = 0.90
MIN_WINDOWS = 4
"""Fewer held-out windows than this cannot place a 90% band (one window moves coverage by 25%)."""
ENOUGH_EPISODES = 32
"""The calibration horizon is shortened until this many of the split's episodes (or all that hold one step, when
fewer) are long enough for it: a band fitted on the one unusually long episode of a short-episode split does not
transfer (issue 14's zoo), while a split of a few long episodes keeps its full horizon."""
GRID = torch.logspace(-2, 2, 161)
"""Candidate scales, 0.01…100 (about 6% apart)."""


@dataclass(frozen=True)
class CalibrationFit:
    """What `calibrate_split` did: coverage90 per horizon before and after (empty when skipped), the
    fitted horizons, and why it was skipped ("" when it was not)."""

    before: dict[int, float] = field(default_factory=dict)
    after: dict[int, float] = field(default_factory=dict)
    note: str = ""
    windows: int = 0

    def report(self) -> str:
        """One line for the fit's output: `calibration: coverage90 before → after …`, or why it was skipped."""
        if not self.after:
            return f"calibration: skipped ({self.note})"
        pairs = ", ".join(f"h{h} {self.before[h]:.3f} → {self.after[h]:.3f}" for h in sorted(self.after))
        return f"calibration: coverage90 before → after (val split, {self.windows} windows): {pairs}"

    def metrics(self) -> dict[str, float]:
        """`calibration/coverage90_before/h{h}` and `…_after/h{h}`, for MLflow."""
        out = {f"calibration/coverage90_before/h{h}": v for h, v in self.before.items()}
        out.update({f"calibration/coverage90_after/h{h}": v for h, v in self.after.items()})
        return out


def _band_coverage(samples: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """`coverage90` of many candidate sample sets at once: samples (G, B, S, D), truth (B, D) -> (G, D).

    One sort instead of G `torch.quantile` calls; the same linear interpolation between order statistics.
    """
    ordered = samples.sort(dim=2).values
    s = samples.shape[2]

    def quantile(q: float) -> torch.Tensor:
        pos = q * (s - 1)
        i = int(pos)
        j = min(i + 1, s - 1)
        return ordered[:, :, i] + (pos - i) * (ordered[:, :, j] - ordered[:, :, i])

    y = truth.to(samples.device).unsqueeze(0)
    return ((y >= quantile(0.05)) & (y <= quantile(0.95))).float().mean(1)


def _choose(center: torch.Tensor, raw: torch.Tensor, truth: torch.Tensor, model: ModelBase[Any],
            samples: int) -> torch.Tensor:
    """Per-channel scale (D,) whose band covers `truth` (B, D) closest to 90%; ties go to the scale nearest 1.

    `center`, `raw`: the step's samples at scale 0 and 1, (B·S, D) physical units.
    """
    grid = GRID.to(center.device)
    candidates = model.units.clamp_plausible(center + grid.view(-1, 1, 1) * (raw - center))  # (G, B·S, D)
    cov = _band_coverage(candidates.unflatten(1, (-1, samples)), truth).cpu()  # (G, B, S, D) -> (G, D)
    cost = (cov - TARGET).abs() + 1e-6 * GRID.log().abs().view(-1, 1)
    return GRID[cost.argmin(0)]


def fit_calibration(model: ModelBase[Any], windows: Batch, context: int, horizon: int, samples: int,
                    seed: int = 0) -> torch.Tensor | None:
    """Fit and store the scales `(horizon, obs_dim)` on `windows` (each `context + horizon` rows); return
    them, or None (calibration removed) when the model's samples do not respond to a scale."""
    model.eval()
    d = model.obs_dim
    scale = torch.ones(horizon, d)
    model.set_calibration(scale)
    truth = windows.obs[:, context : context + horizon].float()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        state, future = start_rollouts(model, windows, context, horizon, samples)
        for t in range(horizon):
            noise = generator.get_state()
            runs = []
            for s in (0.0, 1.0):
                scale[t] = s
                model.set_calibration(scale)
                generator.set_state(noise)
                runs.append(model.step(state, future[:, t], generator)[1].obs.float())
            if t == 0 and torch.equal(runs[0], runs[1]):
                model.set_calibration(torch.ones(0, d))
                return None
            scale[t] = _choose(runs[0], runs[1], truth[:, t], model, samples)
            model.set_calibration(scale)
            generator.set_state(noise)
            state, _ = model.step(state, future[:, t], generator)
    return scale


def _split_episodes(datamodule: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(first rows, lengths) of a split's episodes."""
    with TrajectoryStore.open(datamodule.store_path, storage_options=datamodule.storage_options) as store:
        table = store.episodes()
        pos = np.asarray(datamodule.split[split], np.int64)
        return table["start"].to_numpy(np.int64)[pos], table["length"].to_numpy(np.int64)[pos]


def _starts(firsts: np.ndarray, lengths: np.ndarray, length: int) -> np.ndarray:
    """Window starts every `length // 4` rows in every episode that holds `length` rows (all windows)."""
    stride = max(1, length // 4)
    parts = [s + np.arange(0, n - length + 1, stride) for s, n in zip(firsts, lengths, strict=True)]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)


def calibration_horizon(lengths: np.ndarray, context: int, longest: int) -> int:
    """The longest horizon ≤ `longest` that at least `ENOUGH_EPISODES` episodes of the split are long enough for
    (or all that hold context + 1 rows, when fewer) and that still gives `MIN_WINDOWS` calibration windows (or as
    many as 1 step gives, when fewer): three val episodes just long enough for h gave 3 windows, and the band was
    skipped rather than fitted at a shorter h. 0 when not even one episode holds context + 1 rows."""
    enough = min(ENOUGH_EPISODES, int((lengths >= context + 1).sum()))

    def windows(h: int) -> int:
        return len(_starts(np.zeros(len(lengths), np.int64), lengths, context + h))

    least = min(MIN_WINDOWS, windows(1)) if enough else 0
    return max((h for h in range(1, longest + 1)
                if enough and (lengths >= context + h).sum() >= enough and windows(h) >= least), default=0)


def calibration_windows(datamodule: Any, split: str, length: int, max_windows: int) -> Batch | None:
    """Up to `max_windows` windows of `length` rows from a split's episodes, starting every `length // 4` rows
    (overlapping: a validation split of a few long episodes still gives enough starts to place a band),
    spread evenly over the split; None when no episode holds one."""
    starts = _starts(*_split_episodes(datamodule, split), length)
    if not len(starts):
        return None
    if len(starts) > max_windows:
        starts = starts[np.unique(np.linspace(0, len(starts) - 1, max_windows).round().astype(np.int64))]
    starts = np.sort(starts)
    with TrajectoryStore.open(datamodule.store_path, storage_options=datamodule.storage_options) as store:
        return next(iter(FixedWindows(store, starts, window=length, batch_size=len(starts),
                                      cache_bytes=EVAL_CACHE_BYTES)))


def _coverage_by_horizon(model: ModelBase[Any], windows: Batch, context: int, horizons: tuple[int, ...],
                         samples: int, seed: int) -> dict[int, float]:
    pred = rollout_samples(model, windows, context, max(horizons), samples, seed)  # (B, S, H, D)
    truth = windows.obs[:, context:].float()
    return {h: float(coverage90(pred[:, :, h - 1], truth[:, h - 1]).mean()) for h in horizons}


def calibrate_split(model: ModelBase[Any], datamodule: Any, split: str, context: int, horizons: tuple[int, ...],
                    samples: int, max_windows: int, seed: int = 0) -> CalibrationFit:
    """Calibrate `model` in place on a split of a `WindowDataModule`'s store, up to the longest requested
    horizon its episodes hold; coverage90 is measured before and after (after: with other noise). Skipped,
    with the reason and the model left as it was, where the split cannot support it."""
    if model.image_obs:
        return CalibrationFit(note="image observations: coverage is not measured on images")
    if samples < 2:
        return CalibrationFit(note=f"model.eval_samples {samples}: a band needs at least 2 samples")
    longest = datamodule.longest_episode(split)
    if longest - context < 1:
        return CalibrationFit(note=f"the longest {split} episode has {longest} rows; calibration needs more than "
                                   f"model.eval_context {context}")
    lengths = _split_episodes(datamodule, split)[1]
    horizon = calibration_horizon(lengths, context, min(max(horizons), longest - context))
    windows = calibration_windows(datamodule, split, context + horizon, max_windows)
    n = 0 if windows is None else windows.batch_size
    if windows is None or n < MIN_WINDOWS:
        return CalibrationFit(note=f"{n} {split} windows of {context + horizon} rows; calibration needs at least "
                                   f"{MIN_WINDOWS}")
    kept = tuple(sorted({h for h in horizons if h <= horizon} | {horizon}))  # the fitted horizon reported too
    before = _coverage_by_horizon(model, windows, context, kept, samples, seed + 1)
    previous = model.calibration.clone()
    if fit_calibration(model, windows, context, horizon, samples, seed) is None:
        model.set_calibration(previous)
        return CalibrationFit(note="the model's samples have no spread to scale (e.g. diffusion spread_samples 1)")
    after = _coverage_by_horizon(model, windows, context, kept, samples, seed + 1)
    return CalibrationFit(before=before, after=after, windows=n)
