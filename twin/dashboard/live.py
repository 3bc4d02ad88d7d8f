"""The Live tab: each channel against the twin's one-step prediction band, the anomaly scores with their
threshold, the stream's counters and the belief's uncertainty, refreshed every second from a `LiveFeed`."""

from __future__ import annotations

import html
import math

import numpy as np
import panel as pn
from bokeh.models import ColumnDataSource
from bokeh.models.annotations.geometry import Span
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from twin.dashboard.feed import LiveFeed, LiveSnapshot

REFRESH_MS = 1000
BAND_STDS = 2.0
"""The prediction band is the predicted mean ± this many predictive stds (about 95%)."""


def _label(channel: str, unit: str) -> str:
    return f"{channel} [{unit}]" if unit and unit != "1" else channel


def _channel_data(snap: LiveSnapshot, i: int) -> dict[str, np.ndarray]:
    x = snap.time_ns / 1e6  # bokeh datetime axes take ms since the epoch
    mean, std = snap.mean[:, i], snap.std[:, i]
    return {"x": x, "obs": snap.obs[:, i], "mean": mean, "lo": mean - BAND_STDS * std, "hi": mean + BAND_STDS * std}


def _score_data(snap: LiveSnapshot) -> dict[str, np.ndarray]:
    data = {"x": snap.time_ns / 1e6, "score": snap.score}
    for i in range(len(snap.channels)):
        data[f"c{i}"] = snap.contribution[:, i]
    return data


def _counters_html(snap: LiveSnapshot) -> str:
    c = snap.counters
    lag = c["lag_s"]
    cells = [("mirrored steps", c["steps"]), ("committed", c["committed"]), ("late", c["late"]),
             ("rejected", c["rejected"]), ("duplicates", c["duplicates"]), ("skewed", c["skewed"]),
             ("alerts", c["alerts"]), ("lag", f"{lag:.2f} s" if math.isfinite(lag) else "–")]
    state = "running" if snap.running else "stopped" + (f": {snap.error}" if snap.error else "")
    badges = "".join(f"<span style='margin-right:14px'>{k} <b class='counter'>{v}</b></span>" for k, v in cells)
    return f"<div><b>stream</b> ({html.escape(state)})</div><div>{badges}</div>"


def _belief_html(snap: LiveSnapshot) -> str:
    """The latest one-step predictive std per channel, in the channel's unit and in training stds."""
    rows = []
    std = snap.std[-1] if len(snap.std) else np.full(len(snap.channels), np.nan)
    for i, ch in enumerate(snap.channels):
        rel = std[i] / snap.training_std[i]
        unit = "" if snap.units[i] in ("", "1") else f" {html.escape(snap.units[i])}"
        rows.append(f"<tr><th style='text-align:left'>{html.escape(ch)}</th><td>{std[i]:.3g}{unit}</td>"
                    f"<td>{rel:.3g} × training std</td></tr>")
    return "<b>belief uncertainty</b> (one-step predictive std)<table>" + "".join(rows) + "</table>"


def live_view(feed: LiveFeed) -> pn.viewable.Viewable:
    """The Live tab for one browser session; a periodic callback refreshes it while the session lives."""
    snap = feed.snapshot()
    figures, sources = [], []
    x_range = None
    for i, ch in enumerate(snap.channels):
        src = ColumnDataSource(_channel_data(snap, i))
        fig = figure(height=160, sizing_mode="stretch_width", x_axis_type="datetime", title=_label(ch, snap.units[i]),
                     tools="pan,wheel_zoom,box_zoom,reset")
        if x_range is not None:  # the channels and the score pan and zoom together
            fig.x_range = x_range
        x_range = fig.x_range
        fig.varea(x="x", y1="lo", y2="hi", source=src, fill_alpha=0.25, color="#1f77b4",
                  legend_label=f"prediction ± {BAND_STDS:g} std")
        fig.line(x="x", y="mean", source=src, line_dash="dashed", color="#1f77b4", legend_label="predicted mean")
        fig.line(x="x", y="obs", source=src, color="black", line_width=1.5, legend_label="observed")
        fig.legend.location, fig.legend.label_text_font_size = "top_left", "8pt"
        figures.append(fig)
        sources.append(src)
    score_src = ColumnDataSource(_score_data(snap))
    score_fig = figure(height=220, sizing_mode="stretch_width", x_axis_type="datetime",
                       title="anomaly score (surprise per channel; alarm above the threshold)",
                       tools="pan,wheel_zoom,box_zoom,reset")
    if x_range is not None:
        score_fig.x_range = x_range
    for i, ch in enumerate(snap.channels):
        score_fig.line(x="x", y=f"c{i}", source=score_src, color=Category10_10[i % 10], legend_label=ch)
    score_fig.line(x="x", y="score", source=score_src, color="black", line_width=2, legend_label="score")
    threshold = Span(location=snap.threshold if math.isfinite(snap.threshold) else 0.0, dimension="width",
                     line_color="red", line_dash="dashed", line_width=2, visible=math.isfinite(snap.threshold))
    score_fig.add_layout(threshold)
    score_fig.legend.location, score_fig.legend.label_text_font_size = "top_left", "8pt"
    counters = pn.pane.HTML(_counters_html(snap), name="counters", width=720)
    belief = pn.pane.HTML(_belief_html(snap), width=340)
    note = pn.pane.HTML("alarm threshold: " + (f"{snap.threshold:.3g}" if math.isfinite(snap.threshold) else
                                               "none (no --calibration or --threshold)"))
    seen = [snap.counters["steps"]]

    def refresh() -> None:
        now = feed.snapshot()
        counters.object = _counters_html(now)
        if now.counters["steps"] == seen[0]:
            return
        seen[0] = now.counters["steps"]
        for i, src in enumerate(sources):
            src.data = _channel_data(now, i)
        score_src.data = _score_data(now)
        belief.object = _belief_html(now)

    column = pn.Column(pn.Row(pn.Column(counters, note), belief), *[pn.pane.Bokeh(f, sizing_mode="stretch_width")
                                                         for f in figures],
                       pn.pane.Bokeh(score_fig, sizing_mode="stretch_width"), sizing_mode="stretch_width")
    if pn.state.curdoc is not None:
        pn.state.add_periodic_callback(refresh, period=REFRESH_MS)
    return column
