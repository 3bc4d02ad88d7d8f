"""World-model evaluation: open-loop prediction from a real state with the recorded actions.

On held-out windows, the model assimilates `context` real rows, then imagines the next H rows under
the recorded actions. Reported per horizon h:
- `nrmse`: RMSE of the sample mean per channel divided by the channel's std, then the RMS over channels
  (one yardstick, stated in the table's header; `nrmse/h{h}/{channel}` keeps each channel), and
  `nrmse_median` the same for the sample median (what generate.py reports for factual scenarios);
- `persistence_nrmse` (next obs = current obs) and `linear_nrmse` (ridge regression on
  (obs, action) -> Δobs, rolled out) on the same windows;
- for stochastic models, `coverage90` (fraction of true values inside the central 90% of samples)
  and `crps` (continuous ranked probability score, in units of the channel's std);
- `out_of_bounds`: the fraction of imagined values outside the channels' declared bounds (0 by design:
  worldmodel/units.py clamps to them).
Image models report `pixel_rmse` (0-255 scale) and `persistence_pixel_rmse`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from data_pipeline.windows.batch import Batch
from data_pipeline.windows.datamodule import split_eval_windows
from worldmodel.interface import State, WorldModel, previous_actions
from worldmodel.units import Units, declared_bounds

DEFAULT_HORIZONS = (1, 5, 10, 25, 50)


def _repeat(x: torch.Tensor, samples: int) -> torch.Tensor:
    return x.repeat_interleave(samples, dim=0)


def start_rollouts(
    model: WorldModel, windows: Batch, context: int, horizon: int, samples: int
) -> tuple[State, torch.Tensor]:
    """The belief after `context` real rows, each window repeated `samples` times (B·S, …), and the recorded
    actions of the next `horizon` steps (B·S, H, …), on the model's device."""
    device = model.device
    obs_all = windows.image if model.image_obs else windows.obs
    if obs_all is None:
        raise ValueError("evaluation windows hold no image although the model's observations are images")
    obs = _repeat(obs_all[:, :context], samples).to(device)
    is_first = windows.is_first[:, :context].clone()
    is_first[:, 0] = True
    prev = previous_actions(windows.action[:, :context], is_first)
    future = windows.action[:, context - 1 : context - 1 + horizon]
    with torch.no_grad():
        state = model.initial_state(windows.batch_size * samples)
        state = model.observe(state, obs, _repeat(prev, samples).to(device), _repeat(is_first, samples).to(device))
    return state, _repeat(future, samples).to(device)


def rollout_samples(
    model: WorldModel, windows: Batch, context: int, horizon: int, samples: int, seed: int = 0
) -> torch.Tensor:
    """Imagined observations (B, S, H, …): assimilate `context` rows, then follow the recorded actions.

    Each sample is its own trajectory in one batch of B·S (so an ensemble spreads samples over
    its members).
    """
    b = windows.batch_size
    state, future = start_rollouts(model, windows, context, horizon, samples)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        _, pred = model.imagine(state, future, generator)
    out = pred.obs.float().cpu()
    return out.reshape(b, samples, *out.shape[1:])


def coverage90(samples: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Per-channel fraction of `truth` (B, D) inside the central 90% of `samples` (B, S, D) (linear
    interpolation between order statistics, as `torch.quantile`): (D,)."""
    lo, hi = samples.quantile(0.05, dim=1), samples.quantile(0.95, dim=1)
    return ((truth >= lo) & (truth <= hi)).float().mean(0)


def units_of(model: WorldModel) -> Units:
    """The model's store units (normalization, action features), for the baselines on the model's device."""
    return Units(model.schema, model.normalization, plausible_margin=0.0).to(model.device)


def fit_linear(train: Batch, model: WorldModel, ridge: float = 1e-3) -> torch.Tensor:
    """Ridge regression of the normalized Δobs on [normalized obs, encoded action, 1]: weights (F, D)."""
    units = units_of(model)
    with torch.no_grad():
        obs_n = units.normalize_obs(train.obs.to(model.device))
        act = train.action[:, :-1].to(model.device)
        feats = torch.cat([obs_n[:, :-1], units.encode_action(act), torch.ones_like(obs_n[:, :-1, :1])], -1)
        x = feats.reshape(-1, feats.shape[-1]).double()
        y = (obs_n[:, 1:] - obs_n[:, :-1]).reshape(-1, obs_n.shape[-1]).double()
        eye = torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
        return torch.linalg.solve(x.T @ x + ridge * len(x) * eye, x.T @ y).float()


def linear_rollout(
    model: WorldModel, weights: torch.Tensor, windows: Batch, context: int, horizon: int
) -> torch.Tensor:
    """Open-loop rollout of the ridge model from the last context row: (B, H, D) physical units."""
    units = units_of(model)
    with torch.no_grad():
        z = units.normalize_obs(windows.obs[:, context - 1].to(model.device))
        preds = []
        for t in range(horizon):
            a = units.encode_action(windows.action[:, context - 1 + t].to(model.device))
            feats = torch.cat([z, a, torch.ones_like(z[:, :1])], -1)
            z = z + feats @ weights
            preds.append(units.denormalize_obs(z))
        return torch.stack(preds, 1).cpu()


def crps_samples(samples: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Empirical CRPS per element: E|X - y| - ½ E|X - X'|, samples along dim 1."""
    term1 = (samples - truth.unsqueeze(1)).abs().mean(1)
    s = samples.shape[1]
    sorted_s, _ = samples.sort(dim=1)
    # E|X - X'| from sorted samples in O(S log S): 2/S² Σ (2i - S + 1) x_(i)
    weights = (2 * torch.arange(s, dtype=samples.dtype) - s + 1).view(1, s, *([1] * (samples.dim() - 2)))
    term2 = 2.0 * (weights * sorted_s).sum(1) / (s * s)
    return term1 - 0.5 * term2


def evaluate(
    model: WorldModel,
    windows: Batch,
    *,
    context: int = 8,
    horizons: Sequence[int] = DEFAULT_HORIZONS,
    samples: int = 20,
    train: Batch | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Open-loop metrics on `windows` (each at least `context + max(horizons)` rows long)."""
    horizon = max(horizons)
    if windows.length < context + horizon:
        raise ValueError(f"evaluation windows have {windows.length} rows; need context {context} + horizon {horizon}")
    if isinstance(model, torch.nn.Module):
        model.eval()
    pred = rollout_samples(model, windows, context, horizon, samples, seed)  # (B, S, H, …)
    metrics: dict[str, float] = {}
    if model.image_obs:
        if windows.image is None:
            raise ValueError("evaluation windows hold no image although the model's observations are images")
        truth = windows.image[:, context : context + horizon].float()
        last = windows.image[:, context - 1].float()
        for h in horizons:
            err = pred[:, :, h - 1].mean(1) - truth[:, h - 1]
            metrics[f"pixel_rmse/h{h}"] = float(err.pow(2).mean().sqrt())
            metrics[f"persistence_pixel_rmse/h{h}"] = float((last - truth[:, h - 1]).pow(2).mean().sqrt())
        return metrics
    std = units_of(model).obs_std.cpu()
    truth = windows.obs[:, context : context + horizon].float()
    last = windows.obs[:, context - 1].float()
    linear = None
    if train is not None:
        linear = linear_rollout(model, fit_linear(train, model), windows, context, horizon)
    channels = model.schema.obs_channels
    low, high = declared_bounds(model.schema)  # NaN where a side is not declared

    def nrmse(estimate: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
        """The yardstick: RMS over channels of (RMSE over starts / channel std); and the per-channel values."""
        per_channel = (estimate - y).pow(2).mean(0).sqrt() / std
        return float(per_channel.pow(2).mean().sqrt()), per_channel

    for h in horizons:
        y = truth[:, h - 1]
        s = pred[:, :, h - 1]  # (B, S, D)
        metrics[f"nrmse/h{h}"], per_channel = nrmse(s.mean(1), y)
        metrics[f"nrmse_median/h{h}"] = nrmse(s.median(1).values, y)[0]
        for c, name in enumerate(channels):
            metrics[f"nrmse/h{h}/{name}"] = float(per_channel[c])
        metrics[f"persistence_nrmse/h{h}"] = nrmse(last, y)[0]
        if linear is not None:
            metrics[f"linear_nrmse/h{h}"] = nrmse(linear[:, h - 1], y)[0]
        outside = (s < low.nan_to_num(float("-inf"))) | (s > high.nan_to_num(float("inf")))
        metrics[f"out_of_bounds/h{h}"] = float(outside.float().mean())
        if samples > 1:
            metrics[f"coverage90/h{h}"] = float(coverage90(s, y).mean())
            metrics[f"crps/h{h}"] = float((crps_samples(s, y) / std).mean())
    return metrics


@dataclass(frozen=True)
class SplitEvaluation:
    """What `explain_evaluation` found: the metrics (None when skipped), the horizons they cover, and why
    any requested horizon is missing ("" when none is)."""

    metrics: dict[str, float] | None
    horizons: tuple[int, ...]
    note: str

    def report(self) -> str:
        """The lines a command prints: the table, then the note; or `evaluation: skipped (…why…)`."""
        if self.metrics is None:
            return f"evaluation: skipped ({self.note})"
        table = format_table(self.metrics, self.horizons)
        return f"{table}\nevaluation: {self.note}" if self.note else table


def explain_evaluation(model: WorldModel, datamodule: Any, split: str, context: int, horizons: tuple[int, ...],
                       samples: int, max_windows: int) -> SplitEvaluation:
    """Open-loop evaluation on a split of a `WindowDataModule`'s store, with the ridge baseline fitted on its
    train split, at the requested horizons that the split's episodes hold (`context + h` rows); the others
    are dropped and the note says so. Skipped, with the reason, where none fits or the split is empty."""
    longest = datamodule.longest_episode(split)
    kept = tuple(h for h in horizons if context + h <= longest)
    if not longest:
        return SplitEvaluation(None, (), f"the {split} split holds no episode")
    if not kept:
        return SplitEvaluation(None, (), f"the longest {split} episode has {longest} rows; the shortest horizon "
                                         f"needs {context + min(horizons)} (model.eval_context {context} + "
                                         f"{min(horizons)}); lower model.eval_context or record longer episodes")
    dropped = [h for h in horizons if h not in kept]
    note = (f"horizons {', '.join(map(str, dropped))} dropped (the longest {split} episode has {longest} rows, "
            f"fewer than model.eval_context {context} + horizon)") if dropped else ""
    windows = split_eval_windows(datamodule, split, context + max(kept), max_windows)
    if windows is None:  # unreachable while `longest` holds the window; kept for a store changed underneath
        return SplitEvaluation(None, (), f"no {split} episode holds {context + max(kept)} rows")
    train = split_eval_windows(datamodule, "train", datamodule.window, max_windows)
    metrics = evaluate(model, windows, context=context, horizons=kept, samples=samples, train=train)
    return SplitEvaluation(metrics, kept, note)


def evaluate_split(model: WorldModel, datamodule: Any, split: str, context: int, horizons: tuple[int, ...],
                   samples: int, max_windows: int) -> dict[str, float] | None:
    """The metrics of `explain_evaluation` (None when it was skipped)."""
    return explain_evaluation(model, datamodule, split, context, horizons, samples, max_windows).metrics


YARDSTICK = ("nrmse = RMSE over starts of the sample mean / the store's channel std, RMS over channels "
             "(persistence, linear: the same for their forecasts); coverage90 = fraction of true values inside "
             "the central 90% of samples; crps in channel stds, mean over channels; out_of_bounds = fraction of "
             "imagined values outside declared bounds")


def format_table(metrics: dict[str, float], horizons: Sequence[int] = DEFAULT_HORIZONS) -> str:
    """The headline metrics as a text table, one row per horizon, under the line that defines them."""
    cols = ["nrmse", "persistence_nrmse", "linear_nrmse", "coverage90", "crps", "out_of_bounds", "pixel_rmse",
            "persistence_pixel_rmse"]
    cols = [c for c in cols if f"{c}/h{horizons[0]}" in metrics]
    header = ("pixel_rmse = RMSE of the sample mean, 0-255 scale" if f"pixel_rmse/h{horizons[0]}" in metrics
              else YARDSTICK)
    lines = [f"# {header}", "horizon " + " ".join(f"{c:>22}" for c in cols)]
    for h in horizons:
        lines.append(f"{h:>7} " + " ".join(f"{metrics.get(f'{c}/h{h}', float('nan')):>22.4f}" for c in cols))
    return "\n".join(lines)
