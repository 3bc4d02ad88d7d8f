"""The scenario store (DESIGN contract 6) that generate.py writes, its summary table and fan charts.

Layout (read with `xarray.open_zarr(path)`; docs/scenarios.md):

    obs          (scenario, sample, time, obs_channel)      imagined observations, physical units
    action       (scenario, sample, time, action_channel)   actions applied (int64 for Discrete)
    reward       (scenario, sample, time)                   imagined reward of each step
    terminated   (scenario, sample, time)                   predicted probability of a terminal state
    uncertainty  (scenario, sample, time)                   epistemic uncertainty (in channel stds)
    factual_obs  (scenario, time, obs_channel)              recorded future, NaN past the recorded end
    start_obs    (scenario, obs_channel)                    observation at the start (after sensor offsets)
    coordinates  scenario, start, intervention, start_episode (id), start_episode_index, start_t,
                 start_time (ns), sample, time (steps 1..H), time_s, obs_channel, action_channel, units
    attrs        model, model_type, store, store_fingerprint, spec (YAML), seed, horizon, samples, ...

Time step k holds the state after k imagined steps from the start row t (the recorded row t + k).
Arrays are chunked by blocks of scenarios, so ranks write disjoint chunks of one store.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import zarr

from data_pipeline.schema import StoreSchema
from data_pipeline.store.codecs import compressors, consolidate
from scenarios.spec import ScenarioSpec

LAYOUT_VERSION = "1.0"
_SAMPLE_VARS = ("obs", "action", "reward", "terminated", "uncertainty")
_LONG_NAMES = {
    "obs": "imagined observation after `time` steps",
    "action": "action applied at step time-1 -> time",
    "reward": "imagined reward of the step into `time`",
    "terminated": "predicted probability that the state at `time` is terminal",
    "uncertainty": "epistemic uncertainty of the step (ensemble disagreement, in channel stds)",
    "factual_obs": "recorded observation at start_t + time (NaN past the recorded end)",
    "start_obs": "observation at the start row (with the intervention's sensor offset)",
}
_SCENARIO_COORDS = ("start", "intervention", "start_episode", "start_episode_index", "start_t", "start_time")


@dataclass
class ScenarioIndex:
    """One entry per scenario (start-major: all interventions of a start are neighbours)."""

    name: list[str]
    start: list[str]
    intervention: list[str]
    start_episode: list[str]
    """Episode id in the source store ('' for a history file)."""
    start_episode_index: list[int]
    """Position in the source store's episode table (-1 for a history file)."""
    start_t: list[int]
    """Row of the episode the scenario starts from (its last assimilated observation)."""
    start_time: list[int]
    """Time of the start row, ns since the epoch (-1 when unknown)."""

    def __len__(self) -> int:
        return len(self.name)


def block_ranges(n: int, block: int) -> list[tuple[int, int]]:
    """Scenario slices [a, b) of at most `block` scenarios: the unit of work and of chunking."""
    return [(a, min(a + block, n)) for a in range(0, n, block)]


def create_scenario_store(
    path: str | Path,
    index: ScenarioIndex,
    schema: StoreSchema,
    *,
    samples: int,
    horizon: int,
    block: int,
    attrs: dict[str, Any],
    overwrite: bool = False,
) -> None:
    """Create the empty store (arrays filled with NaN) with its coordinates and attrs."""
    path = str(path)
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --overwrite or choose another --out")
    group = zarr.open_group(path, mode="w", zarr_format=3)
    n, d, a = len(index), schema.obs_dim, schema.action_dim
    codecs = compressors(1)
    coord_names = " ".join([*_SCENARIO_COORDS, "time_s", "obs_unit", "action_unit"])

    def data(name: str, dims: list[str], shape: tuple[int, ...], dtype: Any, fill: Any) -> None:
        chunks = (min(block, max(n, 1)), *shape[1:])
        arr = group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill,
                                 dimension_names=dims, **codecs)
        arr.attrs.update({"long_name": _LONG_NAMES[name], "coordinates": coord_names})

    def coord(name: str, dim: str, values: Any, dtype: Any) -> None:
        values = np.asarray(values, dtype=object if dtype is str else dtype)
        arr = group.create_array(name, shape=values.shape, chunks=(max(len(values), 1),), dtype=dtype,
                                 dimension_names=[dim])
        if len(values):
            arr[:] = values

    act_dtype, act_fill = ("int64", -1) if schema.discrete else ("float32", np.nan)
    data("obs", ["scenario", "sample", "time", "obs_channel"], (n, samples, horizon, d), "float32", np.nan)
    data("action", ["scenario", "sample", "time", "action_channel"], (n, samples, horizon, a), act_dtype,
         act_fill)
    for name in ("reward", "terminated", "uncertainty"):
        data(name, ["scenario", "sample", "time"], (n, samples, horizon), "float32", np.nan)
    data("factual_obs", ["scenario", "time", "obs_channel"], (n, horizon, d), "float32", np.nan)
    data("start_obs", ["scenario", "obs_channel"], (n, d), "float32", np.nan)
    coord("scenario", "scenario", index.name, str)
    for name in _SCENARIO_COORDS:
        integer = name in ("start_episode_index", "start_t", "start_time")
        coord(name, "scenario", getattr(index, name), "int64" if integer else str)
    coord("sample", "sample", np.arange(samples), "int64")
    coord("time", "time", np.arange(1, horizon + 1), "int64")
    coord("time_s", "time", np.arange(1, horizon + 1) * schema.dt, "float64")
    coord("obs_channel", "obs_channel", schema.obs_channels, str)
    coord("obs_unit", "obs_channel", schema.obs_units, str)
    coord("action_channel", "action_channel", schema.action_channels, str)
    coord("action_unit", "action_channel", schema.action_units, str)
    group.attrs.update({"layout_version": LAYOUT_VERSION, "complete": False, "dt": schema.dt,
                        "block_scenarios": block, **attrs})


class ScenarioWriter:
    """Writes blocks of scenarios into an existing scenario store (one writer per block)."""

    def __init__(self, path: str | Path) -> None:
        self.group = zarr.open_group(str(path), mode="r+", zarr_format=3, use_consolidated=False)

    def write(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Write arrays whose first dimension covers scenarios [start, start + n)."""
        for name, values in arrays.items():
            arr = self.group[name]
            arr[start : start + values.shape[0]] = values.astype(arr.dtype, copy=False)


def finish_scenario_store(path: str | Path) -> None:
    """Mark the store complete and consolidate its metadata (after every block is written)."""
    group = zarr.open_group(str(path), mode="r+", zarr_format=3, use_consolidated=False)
    group.attrs["complete"] = True
    consolidate(group)


# ------------------------------------------------------------------------------------------- summary
def _col(channel: str, t: int, stat: str) -> str:
    return f"{channel}@{t}:{stat}"


def summarize(path: str | Path, spec: ScenarioSpec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-scenario summary table and per-horizon calibration, read block by block.

    Summary columns: `<channel>@<step>:mean|q05|q50|q95|recorded|diff_mean|diff_q50` for the spec's
    summary channels and times, and `P(<outcome>)` with `P(<outcome>):diff`; the diffs are to the
    factual baseline of the same start. Calibration (factual baseline scenarios whose recorded
    future exists): per step h, `coverage90` (true values inside the central 90% of samples),
    `nrmse` of the sample mean and `nrmse_median` of the sample median, each per channel divided by
    the model's obs std, then averaged over channels (the definitions of worldmodel.evaluation).
    """
    group = zarr.open_group(str(path), mode="r", zarr_format=3, use_consolidated=False)
    attrs = dict(group.attrs)
    obs_channels = [str(c) for c in group["obs_channel"][:]]
    act_channels = [str(c) for c in group["action_channel"][:]]
    channels = list(spec.summary_channels) or obs_channels
    cidx = [obs_channels.index(c) for c in channels]
    times = list(spec.summary_times) or [spec.horizon]
    names = [str(x) for x in group["scenario"][:]]
    interventions = [str(x) for x in group["intervention"][:]]
    starts = [str(x) for x in group["start"][:]]
    factual = spec.factual.name if spec.factual else None
    obs_std = np.asarray(attrs["obs_std"], np.float64)
    h_all, d = spec.horizon, len(obs_channels)
    cover, count = np.zeros(h_all), np.zeros(h_all)
    sq_mean, sq_median = np.zeros((h_all, d)), np.zeros((h_all, d))

    rows: list[dict[str, Any]] = []
    for a, b in block_ranges(len(names), int(attrs["block_scenarios"])):
        obs = group["obs"][a:b].astype(np.float64)  # (n, S, H, D)
        truth = group["factual_obs"][a:b].astype(np.float64)  # (n, H, D)
        values = {c: obs[..., i] for i, c in enumerate(obs_channels)}
        action = group["action"][a:b].astype(np.float64)
        values.update({c: action[..., i] for i, c in enumerate(act_channels)})
        values["reward"] = group["reward"][a:b].astype(np.float64)
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
        stats = [(c, t) for c in channels for t in times]
        for c, t in stats:
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
            "nrmse": np.where(count > 0, (np.sqrt(sq_mean / n) / obs_std).mean(1), np.nan),
            "nrmse_median": np.where(count > 0, (np.sqrt(sq_median / n) / obs_std).mean(1), np.nan),
        })
    return table, calibration


def format_summary(table: pd.DataFrame, spec: ScenarioSpec, max_rows: int = 40) -> str:
    """The summary as a compact text table: median [5%, 95%] per channel and time, outcome probabilities."""
    if table.empty:
        return "(no scenarios)"
    channels = list(dict.fromkeys(c.split("@")[0] for c in table.columns if c.endswith(":q50")))
    times = list(spec.summary_times) or [spec.horizon]
    out = pd.DataFrame({"scenario": table["scenario"]})
    for c in channels:
        for t in times:
            cols = (table[_col(c, t, "q50")], table[_col(c, t, "q05")], table[_col(c, t, "q95")])
            out[f"{c}@{t}"] = [f"{m:.3g} [{lo:.3g}, {hi:.3g}]" for m, lo, hi in zip(*cols, strict=True)]
    for o in spec.outcomes:
        out[f"P({o.name})"] = table[f"P({o.name})"].map(lambda p: f"{p:.2f}")
    text = out.head(max_rows).to_string(index=False)
    if len(out) > max_rows:
        text += f"\n… {len(out) - max_rows} more rows in the CSV"
    return text


# --------------------------------------------------------------------------------------------- plots
def plot_fans(path: str | Path, out_dir: str | Path, spec: ScenarioSpec) -> list[Path]:
    """Fan charts, one PNG per starting point (the first `spec.plot_max_starts`): a column per
    intervention, a row per channel; median and 5–95% band over time, the recorded future dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    group = zarr.open_group(str(path), mode="r", zarr_format=3, use_consolidated=False)
    obs_channels = [str(c) for c in group["obs_channel"][:]]
    units = [str(u) for u in group["obs_unit"][:]]
    channels = list(spec.summary_channels) or obs_channels
    starts = [str(x) for x in group["start"][:]]
    interventions = [str(x) for x in group["intervention"][:]]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = np.arange(0, spec.horizon + 1)
    files = []
    order = list(dict.fromkeys(starts))[: spec.plot_max_starts]
    for label in order:
        rows = [i for i, s in enumerate(starts) if s == label]
        a, b = rows[0], rows[-1] + 1  # a start's scenarios are neighbours
        obs = group["obs"][a:b]  # (n, S, H, D)
        start_obs = group["start_obs"][a:b]
        truth = group["factual_obs"][a:b]
        fig, axes = plt.subplots(len(channels), b - a, figsize=(3.2 * (b - a), 2.4 * len(channels)),
                                 squeeze=False, sharex=True, sharey="row")
        for j in range(b - a):
            for r, c in enumerate(channels):
                i = obs_channels.index(c)
                ax = axes[r, j]
                first = np.broadcast_to(start_obs[j, i], (obs.shape[1], 1))
                traj = np.concatenate([first, obs[j, :, :, i]], 1)  # (S, H + 1) from the start
                lo, med, hi = np.quantile(traj, [0.05, 0.5, 0.95], axis=0)
                ax.fill_between(steps, lo, hi, alpha=0.3, color="C0", label="90% band")
                ax.plot(steps, med, color="C0", label="median")
                recorded = np.concatenate([[np.nan], truth[j, :, i]])  # the recorded future, steps 1..H
                ax.plot(steps, recorded, "k--", lw=1.2, label="recorded")
                if r == 0:
                    ax.set_title(interventions[a + j], fontsize=10)
                if j == 0:
                    ax.set_ylabel(f"{c} [{units[i]}]" if units[i] else c)
                if r == len(channels) - 1:
                    ax.set_xlabel("step")
        axes[0, 0].legend(fontsize=7, loc="best")
        fig.suptitle(f"start {label}", fontsize=11)
        fig.tight_layout()
        file = out_dir / (re.sub(r"[^A-Za-z0-9_.-]+", "_", label) + ".png")
        fig.savefig(file, dpi=90)
        plt.close(fig)
        files.append(file)
    return files
