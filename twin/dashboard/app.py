"""The page: a tab per view, built for each browser session from what the dashboard read once at start."""

from __future__ import annotations

from dataclasses import dataclass

import panel as pn

from twin.dashboard.data import ModelCard, StoreData, data_view
from twin.dashboard.feed import LiveFeed
from twin.dashboard.live import live_view
from twin.dashboard.scenarios import ScenarioData, scenario_view

TITLE = "twinworld dashboard"


@dataclass
class Sources:
    """What the page shows: the store (always), a scenario store, a live feed and a model card where given."""

    store: StoreData
    scenarios: ScenarioData | None = None
    feed: LiveFeed | None = None
    card: ModelCard | None = None


def page(sources: Sources) -> pn.viewable.Viewable:
    """One session's page: Live (with --live), Scenario explorer (with --scenarios), Data and model."""
    tabs: list[tuple[str, pn.viewable.Viewable]] = []
    if sources.feed is not None:
        tabs.append(("Live", live_view(sources.feed)))
    if sources.scenarios is not None:
        tabs.append(("Scenario explorer", scenario_view(sources.scenarios)))
    store = StoreData.load(sources.store.path) if sources.feed is not None else sources.store  # it grows while live
    tabs.append(("Data and model", data_view(store, sources.card)))
    header = pn.pane.HTML(f"<h2 style='margin:4px 0'>{TITLE}</h2><small>{sources.store.path}</small>")
    return pn.Column(header, pn.Tabs(*tabs, dynamic=False, sizing_mode="stretch_width"), sizing_mode="stretch_width")
