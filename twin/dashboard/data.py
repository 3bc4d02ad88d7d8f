"""The Data and model tab: the store's episodes, channels and units and the coverage of its data; the model
card (kind, training data fingerprint, evaluation table, identified physical parameters) and links to its
MLflow runs.

The store's summary is `data_pipeline.info.describe` (the text of `python -m data_pipeline info`); the
model's run comes from its lineage (`tracking.lineage.model_run_id`) and the run's params and metrics
from the MLflow tracking server, asked once, where it answers.
"""

from __future__ import annotations

import html
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import panel as pn
from bokeh.plotting import figure

from data_pipeline.info import describe
from data_pipeline.store import TrajectoryStore
from tracking.lineage import LineageError, model_run_id
from worldmodel.io import read_checkpoint

COVERAGE_ROWS = 100_000
"""Rows read for the coverage histograms at most (evenly spaced over the store)."""


@dataclass
class StoreData:
    """What the tab shows of the trajectory store."""

    path: str
    summary: str
    episodes: pd.DataFrame
    channels: list[str]
    units: list[str]
    obs: np.ndarray
    """(N, D) observation rows, evenly spaced, for the coverage histograms."""

    @classmethod
    def load(cls, path: str) -> StoreData:
        with TrajectoryStore.open(path) as store:
            schema = store.schema
            n = store.num_steps
            rows = np.unique(np.linspace(0, n - 1, min(n, COVERAGE_ROWS)).astype(np.int64)) if n else np.zeros(0, int)
            obs = store.read_rows("obs", 0, n)[rows] if n and schema.obs_dim else np.zeros((0, schema.obs_dim))
            table = store.episodes()
        summary = describe(path) if n else f"store: {path}\nepisodes: 0 (nothing committed yet)"
        return cls(path, summary, table, list(schema.obs_channels), list(schema.obs_units), np.asarray(obs, float))


@dataclass
class ModelCard:
    """The model file's facts, and its training run's where the tracking server knows it."""

    source: str
    kind: str
    config: dict[str, Any]
    channels: list[str]
    run_id: str | None = None
    run_url: str | None = None
    params: dict[str, str] = field(default_factory=dict)
    evaluation: pd.DataFrame | None = None
    physics: Any = None
    """What a hybrid model's `describe()` returns (the identified physical parameters); None for others."""
    note: str = ""

    @classmethod
    def load(cls, source: str, model: Any | None = None) -> ModelCard:
        data = read_checkpoint(source)
        schema = json.loads(data["schema"])
        card = cls(source, str(data["model_type"]), json.loads(data["config"]), list(schema.get("obs_channels", [])))
        # `describe()` is what a model identified about the physical system (a hybrid's parameters); empty for
        # black-box models, so its absence is normal, not an error.
        if model is not None:
            card.physics = model.describe() or None
        try:
            card.run_id = model_run_id(source)
        except LineageError as err:
            card.note = str(err)
        if card.run_id:
            card._from_mlflow()
        return card

    def _from_mlflow(self) -> None:
        """The training run's params (data fingerprint, store) and evaluation metrics, if the server answers."""
        from tracking.logger import tracking_uri

        uri = tracking_uri()
        if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():  # asking would create it
            self.note = f"MLflow run {self.run_id}: no tracking store at {uri} (set MLFLOW_TRACKING_URI)"
            return
        try:
            from mlflow import MlflowClient

            run = MlflowClient(uri).get_run(str(self.run_id))
        except Exception as err:  # lineage is a link, not a requirement: the card shows why it is missing
            self.note = f"MLflow run {self.run_id} not readable: {type(err).__name__}: {str(err)[:200]}"
            print(f"twin.dashboard: {self.note}", file=sys.stderr)
            return
        self.params = {k: v for k, v in run.data.params.items() if k.startswith("data.")}
        if uri.startswith(("http://", "https://")):
            self.run_url = f"{uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
        self.evaluation = evaluation_table(run.data.metrics)


def evaluation_table(metrics: dict[str, float]) -> pd.DataFrame | None:
    """The run's `<split>_eval/<metric>/h<H>[/<channel>]` metrics (worldmodel.evaluation) as one row per split and
    metric, one column per horizon; None where the run logged no evaluation."""
    rows: dict[tuple[str, str], dict[str, float]] = {}
    for key, value in metrics.items():
        split, _, rest = key.partition("_eval/")
        parts = rest.split("/")
        if not rest or len(parts) < 2 or not parts[1].startswith("h"):
            continue
        name = parts[0] + (f" ({parts[2]})" if len(parts) > 2 else "")
        rows.setdefault((split, name), {})[parts[1]] = value
    if not rows:
        return None
    table = pd.DataFrame.from_dict(rows, orient="index")
    table = table[sorted(table.columns, key=lambda h: int(h[1:]) if h[1:].isdigit() else 0)]
    table.index = pd.MultiIndex.from_tuples(list(table.index), names=["split", "metric"])
    return table.sort_index().reset_index()


def _coverage(data: StoreData) -> list[pn.viewable.Viewable]:
    """One histogram per observation channel: where the training data has been."""
    out: list[pn.viewable.Viewable] = []
    for i, ch in enumerate(data.channels):
        values = data.obs[:, i]
        values = values[np.isfinite(values)]
        if not values.size:
            continue
        counts, edges = np.histogram(values, bins=40)
        unit = data.units[i]
        fig = figure(height=170, width=300, title=f"{ch} [{unit}]" if unit else ch, tools="")
        fig.quad(top=counts, bottom=0, left=edges[:-1], right=edges[1:], fill_alpha=0.6)
        out.append(pn.pane.Bokeh(fig))
    return out


def _card_html(card: ModelCard) -> str:
    rows = [("model", card.source), ("kind", card.kind), ("channels", ", ".join(card.channels)),
            ("MLflow run", card.run_id or "none recorded (no mlflow_run_id beside the model)"),
            *((k, v) for k, v in card.params.items())]
    body = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in rows)
    link = (f"<p><a href='{html.escape(card.run_url)}' target='_blank'>open the training run in MLflow</a></p>"
            if card.run_url else "")
    note = f"<p><i>{html.escape(card.note)}</i></p>" if card.note else ""
    config = html.escape(json.dumps(card.config, indent=1))
    return (f"<b>model card</b><table>{body}</table>{link}{note}"
            f"<details><summary>config</summary><pre>{config}</pre></details>")


def data_view(data: StoreData, card: ModelCard | None) -> pn.viewable.Viewable:
    """The Data and model tab for one browser session."""
    parts: list[Any] = [pn.pane.HTML("<b>trajectory store</b>"),
                        pn.pane.HTML(f"<pre>{html.escape(data.summary)}</pre>"),
                        pn.pane.HTML("<b>coverage of the data</b> (histogram of each observation channel)"),
                        pn.FlexBox(*_coverage(data)),
                        pn.pane.HTML(f"<b>episodes</b> ({len(data.episodes)})"),
                        pn.pane.DataFrame(data.episodes.head(200), index=False, max_rows=200, height=260)]
    if card is not None:
        parts.append(pn.pane.HTML(_card_html(card)))
        if card.evaluation is not None:
            parts += [pn.pane.HTML("<b>evaluation</b> (open-loop, from the training run)"),
                      pn.pane.DataFrame(card.evaluation, index=False, float_format="{:.4f}".format)]
        if card.physics is not None:
            physics = card.physics
            shown = (pn.pane.DataFrame(physics, index=False) if isinstance(physics, pd.DataFrame)
                     else pn.pane.HTML(f"<pre>{html.escape(json.dumps(physics, indent=1, default=str))}</pre>"))
            parts += [pn.pane.HTML("<b>identified physical parameters</b>"), shown]
    return pn.Column(*parts, sizing_mode="stretch_width")
