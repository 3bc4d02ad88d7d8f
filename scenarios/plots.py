"""Fan charts of a scenario store: per starting point, the spread of the imagined futures of each
intervention beside the recorded future."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from scenarios.spec import ScenarioSpec
from scenarios.store import labels, open_scenarios, read


def plot_fans(path: str | Path, out_dir: str | Path, spec: ScenarioSpec) -> list[Path]:
    """Fan charts, one PNG per starting point (the first `spec.plot_max_starts`): a column per
    intervention, a row per channel; median and 5–95% band over time, the recorded future dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    group = open_scenarios(path)
    obs_channels, units = labels(group, "obs_channel"), labels(group, "obs_unit")
    channels = list(spec.summary_channels) or obs_channels
    starts, interventions = labels(group, "start"), labels(group, "intervention")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = np.arange(0, spec.horizon + 1)
    files = []
    for label in list(dict.fromkeys(starts))[: spec.plot_max_starts]:
        rows = [i for i, s in enumerate(starts) if s == label]
        block = slice(rows[0], rows[-1] + 1)  # a start's scenarios are neighbours
        obs = read(group, "obs", block)  # (n, S, H, D)
        start_obs = read(group, "start_obs", block)  # (n, D)
        truth = read(group, "factual_obs", block)  # (n, H, D)
        n = len(rows)
        fig, axes = plt.subplots(len(channels), n, figsize=(3.2 * n, 2.4 * len(channels)), squeeze=False,
                                 sharex=True, sharey="row")
        for j in range(n):
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
                    ax.set_title(interventions[rows[0] + j], fontsize=10)
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
