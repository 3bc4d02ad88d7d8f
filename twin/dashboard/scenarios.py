"""The Scenario explorer tab: pick a start, interventions and channels of a scenario store (contract 6) and see
the fan charts beside the factual run, the outcome probabilities and generate.py's calibration table.

The tables come from `scenarios.summary` (the functions behind generate.py's printout), read once per
dashboard; the fan charts read only the chosen start's scenarios.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import panel as pn
from bokeh.models import ColumnDataSource
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from scenarios.spec import ScenarioSpec, parse_spec_text
from scenarios.store import labels, open_scenarios, read
from scenarios.summary import PRINT_HORIZONS, summarize


@dataclass
class ScenarioData:
    """What the explorer shows of one scenario store, read once."""

    path: str
    spec: ScenarioSpec
    starts: list[str]
    interventions: list[str]
    channels: list[str]
    units: list[str]
    table: pd.DataFrame
    """generate.py's per-scenario summary (`summarize`)."""
    calibration: pd.DataFrame
    """generate.py's calibration of the factual scenarios, at the steps it prints."""

    @classmethod
    def load(cls, path: str | Path) -> ScenarioData:
        group = open_scenarios(path)
        spec = parse_spec_text(str(group.attrs["spec"]), f"{path} (attrs.spec)")
        table, calibration = summarize(path, spec)
        steps = [*(h for h in PRINT_HORIZONS if h <= spec.horizon), spec.horizon]
        shown = calibration[calibration["horizon"].isin(steps) & (calibration["scenarios"] > 0)]
        return cls(str(path), spec, list(dict.fromkeys(labels(group, "start"))),
                   list(dict.fromkeys(labels(group, "intervention"))), labels(group, "obs_channel"),
                   labels(group, "obs_unit"), table, shown.reset_index(drop=True))

    def outcomes(self, start: str, interventions: list[str]) -> pd.DataFrame:
        """Outcome probabilities (and their difference to the factual run) of one start's interventions."""
        rows = self.table[(self.table["start"] == start) & self.table["intervention"].isin(interventions)]
        cols = [c for c in self.table.columns if c.startswith("P(")]
        return rows[["intervention", *cols]].reset_index(drop=True)


def fan_charts(data: ScenarioData, start: str, interventions: list[str], channels: list[str]) -> list[figure]:
    """One figure per channel: per intervention the median and the 5–95% band of the samples over time,
    and the recorded (factual) future in black, dashed."""
    group = open_scenarios(data.path)
    starts, names = labels(group, "start"), labels(group, "intervention")
    rows = [i for i, s in enumerate(starts) if s == start]
    block = slice(rows[0], rows[-1] + 1)  # a start's scenarios are neighbours
    obs = read(group, "obs", block)  # (n, S, H, D)
    start_obs = read(group, "start_obs", block)  # (n, D)
    truth = read(group, "factual_obs", block)  # (n, H, D)
    steps = np.arange(obs.shape[2] + 1)
    figs = []
    for c in channels:
        i = data.channels.index(c)
        unit = data.units[i]
        fig = figure(height=240, sizing_mode="stretch_width", title=f"{c} [{unit}]" if unit else c,
                     x_axis_label="step", tools="pan,wheel_zoom,box_zoom,reset")
        for k, row in enumerate(rows):
            if names[row] not in interventions:
                continue
            traj = np.concatenate([np.broadcast_to(start_obs[k, i], (obs.shape[1], 1)), obs[k, :, :, i]], 1)
            lo, med, hi = np.quantile(traj, [0.05, 0.5, 0.95], axis=0)  # (H + 1,) each, from the start
            color = Category10_10[interventions.index(names[row]) % 10]
            src = ColumnDataSource({"step": steps, "lo": lo, "med": med, "hi": hi})
            fig.varea(x="step", y1="lo", y2="hi", source=src, fill_alpha=0.2, color=color)
            fig.line(x="step", y="med", source=src, color=color, line_width=2, legend_label=names[row])
        recorded = np.concatenate([[start_obs[0, i]], truth[0, :, i]])  # the recorded future of this start
        if np.isfinite(recorded[1:]).any():
            fig.line(steps, recorded, color="black", line_dash="dashed", line_width=1.5, legend_label="recorded")
        if fig.legend:
            fig.legend.location, fig.legend.label_text_font_size = "top_left", "8pt"
        figs.append(fig)
    return figs


def scenario_view(data: ScenarioData) -> pn.viewable.Viewable:
    """The explorer for one browser session: the pickers, and the charts and tables they choose."""
    start = pn.widgets.Select(name="start", options=data.starts, value=data.starts[0])
    chosen = pn.widgets.MultiChoice(name="interventions", options=data.interventions, value=data.interventions)
    default_channels = list(data.spec.summary_channels) or data.channels
    channels = pn.widgets.MultiChoice(name="channels", options=data.channels, value=default_channels)

    def charts(start: str, interventions: list[str], channels: list[str]) -> pn.viewable.Viewable:
        if not interventions or not channels:
            return pn.pane.HTML("choose at least one intervention and one channel")
        figs = fan_charts(data, start, interventions, channels)
        return pn.Column(*[pn.pane.Bokeh(f, sizing_mode="stretch_width") for f in figs], sizing_mode="stretch_width")

    def outcomes(start: str, interventions: list[str]) -> pn.viewable.Viewable:
        table = data.outcomes(start, interventions)
        if len(table.columns) == 1:
            return pn.pane.HTML("no outcomes in this scenario spec")
        return pn.pane.DataFrame(table, index=False, float_format="{:.3f}".format)

    calibration = (pn.pane.DataFrame(data.calibration, index=False, float_format="{:.4f}".format)
                   if len(data.calibration) else pn.pane.HTML("no factual scenario with a recorded future"))
    return pn.Row(
        pn.Column(start, chosen, channels, pn.pane.HTML(f"<small>{data.path}</small>"), width=300),
        pn.Column(pn.bind(charts, start, chosen, channels),
                  pn.pane.HTML("<b>outcome probabilities</b>"), pn.bind(outcomes, start, chosen),
                  pn.pane.HTML("<b>calibration of the factual scenarios against the recorded future</b> "
                               "(coverage90: fraction inside the 90% band; nrmse: error of the sample mean / median)"),
                  calibration, sizing_mode="stretch_width"),
        sizing_mode="stretch_width")
