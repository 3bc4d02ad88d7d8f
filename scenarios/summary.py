"""Summaries of a scenario store: the per-scenario table, the calibration of the factual scenarios
against the recorded future, and their text forms for the command line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from data_pipeline.store import TrajectoryStore
from data_pipeline.windows import split_episodes
from scenarios.spec import ScenarioSpec
from scenarios.store import ScenarioIndex, block_ranges, labels, open_scenarios, read

PRINT_HORIZONS = (1, 5, 10, 25, 50)
"""Steps of the calibration table printed by generate.py (and always the horizon)."""


def _col(channel: str, t: int, stat: str) -> str:
    return f"{channel}@{t}:{stat}"


def summarize(path: str | Path, spec: ScenarioSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-scenario summary table and per-horizon calibration, read block by block.

    Summary columns: `<channel>@<step>:mean|q05|q50|q95|recorded|diff_mean|diff_q50` for the spec's
    summary channels and times, and `P(<outcome>)` with `P(<outcome>):diff`; the diffs are to the
    factual baseline of the same start. Calibration (factual baseline scenarios whose recorded
    future exists): per step h, `coverage90` (true values inside the central 90% of samples),
    `nrmse` of the sample mean and `nrmse_median` of the sample median, each per channel divided by
    the model's obs std, then the RMS over channels (the definitions of worldmodel.evaluation).
    """
    group = open_scenarios(path)
    attrs: dict[str, Any] = dict(group.attrs)
    obs_channels, act_channels = labels(group, "obs_channel"), labels(group, "action_channel")
    channels = list(spec.summary_channels) or obs_channels
    cidx = [obs_channels.index(c) for c in channels]
    times = list(spec.summary_times)
    names, interventions, starts = labels(group, "scenario"), labels(group, "intervention"), labels(group, "start")
    factual = spec.factual.name if spec.factual else None
    obs_std = np.asarray(attrs["obs_std"], np.float64)
    h_all, d = spec.horizon, len(obs_channels)
    cover, count = np.zeros(h_all), np.zeros(h_all)
    sq_mean, sq_median = np.zeros((h_all, d)), np.zeros((h_all, d))

    rows: list[dict[str, Any]] = []
    for a, b in block_ranges(len(names), int(attrs["block_scenarios"])):
        block = slice(a, b)
        obs = read(group, "obs", block).astype(np.float64)  # (n, S, H, D)
        truth = read(group, "factual_obs", block).astype(np.float64)  # (n, H, D)
        values = {c: obs[..., i] for i, c in enumerate(obs_channels)}
        action = read(group, "action", block).astype(np.float64)
        values.update({c: action[..., i] for i, c in enumerate(act_channels)})
        values["reward"] = read(group, "reward", block).astype(np.float64)
        q = np.quantile(obs, [0.05, 0.5, 0.95], axis=1)  # (3, n, H, D)
        mean = obs.mean(1)
        probs = {o.name: o.probability(values[o.condition.channel]) for o in spec.outcomes}
        for k in range(b - a):
            row: dict[str, Any] = {"scenario": names[a + k], "start": starts[a + k],
                                   "intervention": interventions[a + k]}
            for c, i in zip(channels, cidx, strict=True):
                for t in times:
                    row[_col(c, t, "mean")] = mean[k, t - 1, i]
                    for j, stat in enumerate(("q05", "q50", "q95")):
                        row[_col(c, t, stat)] = q[j, k, t - 1, i]
                    row[_col(c, t, "recorded")] = truth[k, t - 1, i]
            for name, p in probs.items():
                row[f"P({name})"] = p[k]
            rows.append(row)
        # Calibration on the factual baseline, where the recorded future is known.
        fact = np.array([interventions[a + k] == factual for k in range(b - a)])
        if fact.any():
            y, s = truth[fact], obs[fact]
            known = np.isfinite(y).all(-1)  # (m, H)
            lo, hi = q[0][fact], q[2][fact]
            inside = ((y >= lo) & (y <= hi)).mean(-1)
            cover += np.where(known, inside, 0.0).sum(0)
            count += known.sum(0)
            err_mean = np.where(known[..., None], s.mean(1) - y, 0.0)
            err_median = np.where(known[..., None], q[1][fact] - y, 0.0)
            sq_mean += (err_mean**2).sum(0)
            sq_median += (err_median**2).sum(0)

    table = pd.DataFrame(rows)
    if factual is not None and len(table):
        base = table[table["intervention"] == factual].set_index("start")
        for c, t in [(c, t) for c in channels for t in times]:
            for stat in ("mean", "q50"):
                ref = table["start"].map(base[_col(c, t, stat)])
                table[_col(c, t, f"diff_{stat}")] = table[_col(c, t, stat)] - ref
        for o in spec.outcomes:
            table[f"P({o.name}):diff"] = table[f"P({o.name})"] - table["start"].map(base[f"P({o.name})"])
    with np.errstate(invalid="ignore", divide="ignore"):
        n = np.maximum(count, 1)[:, None]
        calibration = pd.DataFrame({
            "horizon": np.arange(1, h_all + 1),
            "scenarios": count.astype(np.int64),
            "coverage90": np.where(count > 0, cover / np.maximum(count, 1), np.nan),
            "nrmse": np.where(count > 0, np.sqrt((sq_mean / n / obs_std**2).mean(1)), np.nan),
            "nrmse_median": np.where(count > 0, np.sqrt((sq_median / n / obs_std**2).mean(1)), np.nan),
        })
    return table, calibration


def format_summary(table: pd.DataFrame, spec: ScenarioSpec, max_rows: int = 40) -> str:
    """The summary as a compact text table: median [5%, 95%] per channel and time, outcome probabilities."""
    if table.empty:
        return "(no scenarios)"
    channels = list(dict.fromkeys(c.split("@")[0] for c in table.columns if c.endswith(":q50")))
    out = pd.DataFrame({"scenario": table["scenario"]})
    for c in channels:
        for t in spec.summary_times:
            cols = (table[_col(c, t, "q50")], table[_col(c, t, "q05")], table[_col(c, t, "q95")])
            out[f"{c}@{t}"] = [f"{m:.3g} [{lo:.3g}, {hi:.3g}]" for m, lo, hi in zip(*cols, strict=True)]
    for o in spec.outcomes:
        out[f"P({o.name})"] = table[f"P({o.name})"].map(lambda p: f"{p:.2f}")
    text = out.head(max_rows).to_string(index=False)
    if len(out) > max_rows:
        text += f"\n… {len(out) - max_rows} more rows in the CSV"
    return text


def held_out(spec: ScenarioSpec, store: TrajectoryStore, index: ScenarioIndex) -> str:
    """How many factual scenarios start in held-out (test split) episodes, as words."""
    split = split_episodes(store, spec.split.seed, spec.split.val_fraction, spec.split.test_fraction)
    test = set(split["test"].tolist())
    name = spec.factual.name if spec.factual else None
    episodes = [e for e, iv in zip(index.start_episode, index.intervention, strict=True) if iv == name]
    return f"{sum(e in test for e in episodes)} of {len(episodes)} starting in held-out test episodes"


def format_calibration(calibration: pd.DataFrame, spec: ScenarioSpec, held_out_text: str) -> str | None:
    """The calibration at a few steps (PRINT_HORIZONS and the horizon) as text; None if no factual
    scenario has a recorded future."""
    steps = [*(h for h in PRINT_HORIZONS if h <= spec.horizon), spec.horizon]
    shown = calibration[calibration["horizon"].isin(steps) & (calibration["scenarios"] > 0)]
    if not len(shown):
        return None
    return (f"\ncalibration of the factual scenarios against the recorded future, {held_out_text} "
            "(coverage90: fraction inside the 90% band; nrmse: error of the sample mean / median):\n"
            + shown.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
