"""Starting points of scenarios: where each starts in the recorded data, and the rows it needs.

`resolve_starts` turns the spec's `starts` into concrete (episode, row) points, in spec order with
duplicates dropped; `load_starts` reads the history each point assimilates and its recorded future
with one orthogonal read per variable. Errors name the spec key (`starts.1.t`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from data_pipeline.schema import StoreSchema
from data_pipeline.store import TrajectoryStore, episode_index
from data_pipeline.windows import split_episodes
from scenarios.spec import EveryStart, ExplicitStart, SampleStart, ScenarioSpec, ScenarioSpecError


@dataclass
class StartPoint:
    """Where a scenario starts: row `t` of a recorded episode, or the end of a history file."""

    label: str
    episode: int
    """Position in the store's episode table; -1 for a history file."""
    episode_id: str
    """Id of the episode in the store; '' for a history file."""
    t: int
    time_ns: int = -1
    history: tuple[np.ndarray, np.ndarray] | None = None
    """(obs (T, D), action (T, A)) of a history file."""


def episode_position(ids: list[str], episode: int | str, key: str, source: str, where: str) -> int:
    """The table position of a start's episode (given by position or id), through the store's one lookup
    rule (`data_pipeline.store.episode_index`); errors name the spec file and key."""
    try:
        return episode_index(ids, episode, where=where)
    except (KeyError, IndexError) as err:
        raise ScenarioSpecError(f"{source}: {key}.episode: {err.args[0]}") from None


def read_history(path: str | Path, schema: StoreSchema, *, source: str = "<spec>",
                 key: str = "history") -> tuple[np.ndarray, np.ndarray]:
    """A history file's (obs (T, obs_dim) float32, action (T, action_dim) float64), checked against the
    store's schema; errors name the spec file and key."""
    path = Path(path)
    if not path.exists():
        raise ScenarioSpecError(f"{source}: {key}: {path}: no such history file")
    with np.load(path) as data:
        if "obs" not in data or "action" not in data:
            raise ScenarioSpecError(f"{source}: {key}: {path} holds {sorted(data)}; expected arrays "
                                    "'obs' (T, obs_dim) and 'action' (T, action_dim)")
        obs, action = np.asarray(data["obs"], np.float32), np.asarray(data["action"], np.float64)
    if action.ndim == 1:
        action = action[:, None]
    d, a = schema.obs_dim, schema.action_dim
    if obs.ndim != 2 or obs.shape[1] != d or len(obs) < 1 or action.shape != (len(obs), a):
        raise ScenarioSpecError(f"{source}: {key}: {path} has obs {obs.shape} and action "
                                f"{action.shape}; expected obs (T, {d}) for {schema.obs_channels} and "
                                f"action (T, {a})")
    return obs, action


def resolve_starts(spec: ScenarioSpec, store: TrajectoryStore) -> list[StartPoint]:
    """The spec's starting points, in spec order, duplicates dropped; errors name the spec key."""
    table = store.episodes()
    lengths = table["length"].to_numpy(np.int64)
    ids = table["id"].astype(str).tolist()
    src, c = spec.source, spec.context
    points: list[StartPoint] = []

    def at(e: int, t: int) -> StartPoint:
        return StartPoint(label=f"ep{e}@t{t}", episode=e, episode_id=ids[e], t=t)

    for start in spec.starts:
        if isinstance(start, ExplicitStart):
            e = episode_position(ids, start.episode, start.key, src, store.path)
            if start.t > lengths[e] - 1:
                raise ScenarioSpecError(f"{src}: {start.key}.t: row {start.t} is past the end of episode {e} "
                                        f"({lengths[e]} rows); expected 0..{lengths[e] - 1}")
            points.append(at(e, start.t))
        elif isinstance(start, EveryStart):
            e = episode_position(ids, start.episode, start.key, src, store.path)
            last_row = int(lengths[e] - 1)
            first = min(c - 1, last_row) if start.first is None else start.first
            last = last_row if start.last is None else min(start.last, last_row)
            if first > last:
                raise ScenarioSpecError(f"{src}: {start.key}.from: row {first} is past row {last}, the "
                                        f"last of episode {e} ({lengths[e]} rows)")
            points.extend(at(e, t) for t in range(first, last + 1, start.every))
        elif isinstance(start, SampleStart):
            points.extend(_sample_starts(spec, store, start, lengths, at))
        else:
            obs, action = read_history(start.path, store.schema, source=src, key=f"{start.key}.history")
            points.append(StartPoint(label=f"history:{Path(start.path).stem}", episode=-1, episode_id="",
                                     t=len(obs) - 1, history=(obs, action)))
    seen: set[str] = set()
    unique = []
    for p in points:  # the first occurrence of a start wins
        if p.label not in seen:
            seen.add(p.label)
            unique.append(p)
    if len(unique) < len(points):
        print(f"generate: {len(points) - len(unique)} duplicate starting points dropped", file=sys.stderr)
    rows = [int(table["start"].iloc[p.episode]) + p.t for p in unique if p.episode >= 0]
    if rows and store.has("time"):
        selection = store.array("time").get_orthogonal_selection((np.asarray(rows, np.int64),))
        times = iter(np.asarray(selection).tolist())
        for p in unique:
            if p.episode >= 0:
                p.time_ns = int(next(times))
    return unique


def _sample_starts(spec: ScenarioSpec, store: TrajectoryStore, start: SampleStart, lengths: np.ndarray,
                   at: Callable[[int, int], StartPoint]) -> list[StartPoint]:
    """`count` distinct (episode, t) drawn uniformly from a split, with `context` rows of history and
    `horizon` rows of recorded future where the episodes allow it."""
    c, h = spec.context, spec.horizon
    if start.split == "all":
        pool = np.arange(len(lengths))
    else:
        split = split_episodes(store, spec.split.seed, spec.split.val_fraction, spec.split.test_fraction)
        pool = split[start.split]
    if not len(pool):
        raise ScenarioSpecError(f"{spec.source}: {start.key}.split: the {start.split} split of {store.path} "
                                "is empty")
    first = np.minimum(c - 1, lengths[pool] - 1)
    last = lengths[pool] - 1 - h
    if not (last >= first).any():  # no episode holds a full recorded future: any row will do
        print(f"generate: {start.key}: no {start.split} episode holds context {c} + horizon {h} rows; "
              "sampling starts without a full recorded future", file=sys.stderr)
        last = lengths[pool] - 1
    counts = np.maximum(last - first + 1, 0)
    rng = np.random.default_rng(spec.seed if start.seed is None else start.seed)
    draws = np.sort(rng.choice(int(counts.sum()), size=min(start.count, int(counts.sum())), replace=False))
    edges = np.cumsum(counts)
    k = np.searchsorted(edges, draws, side="right")
    offsets = draws - (edges[k] - counts[k])
    return [at(int(pool[i]), int(first[i] + o)) for i, o in zip(k, offsets, strict=True)]


@dataclass
class StartData:
    """History and recorded future of a batch of starts (numpy, physical units)."""

    obs: np.ndarray
    """(n, C, D) assimilated observations (rows t-C+1..t; the first row repeated before an episode start)."""
    prev_action: np.ndarray
    """(n, C, A) action before each history row (0 where unknown)."""
    is_first: np.ndarray
    """(n, C) the history row starts an episode (or pads before its start)."""
    future_action: np.ndarray
    """(n, H, A) recorded actions a_t..a_{t+H-1}, the last one held past the recorded end."""
    factual_obs: np.ndarray
    """(n, H, D) recorded o_{t+1}..o_{t+H}, NaN past the recorded end."""


def load_starts(store: TrajectoryStore, points: list[StartPoint], context: int, horizon: int) -> StartData:
    """Read the rows a batch of starts needs with one orthogonal read per variable."""
    schema = store.schema
    n, c, h, d, a = len(points), context, horizon, schema.obs_dim, schema.action_dim
    rel = np.arange(-c, h + 1)  # rows t-C .. t+H around each start
    table = store.episodes()
    rows = np.zeros((n, len(rel)), np.int64)
    valid = np.zeros((n, len(rel)), bool)
    for i, p in enumerate(points):
        if p.episode >= 0:
            s0, length = int(table["start"].iloc[p.episode]), int(table["length"].iloc[p.episode])
            r = p.t + rel
            valid[i] = (r >= 0) & (r <= length - 1)
            rows[i] = s0 + np.clip(r, 0, length - 1)  # clipping pads with the episode's first row
    recorded = [i for i, p in enumerate(points) if p.episode >= 0]
    win_obs = np.full((n, len(rel), d), np.nan, np.float32)  # (n, C + H + 1, D)
    win_act = np.full((n, len(rel), a), np.nan, np.float64)
    if recorded:
        uniq, inverse = np.unique(rows[recorded], return_inverse=True)
        inverse = inverse.reshape(len(recorded), -1)
        win_obs[recorded] = np.asarray(store.array("obs").get_orthogonal_selection((uniq,)))[inverse]
        acts = np.asarray(store.array("action").get_orthogonal_selection((uniq,))).astype(np.float64)
        if schema.discrete:
            acts[acts < 0] = np.nan  # the last row's fill value
        win_act[recorded] = acts[inverse]
    for i, p in enumerate(points):
        if p.history is not None:  # place a history file's rows in the same window layout
            obs, action = p.history
            k = min(len(obs), c + 1)
            win_obs[i, c + 1 - k : c + 1] = obs[-k:]
            win_act[i, c + 1 - k : c + 1] = action[-k:]
            win_obs[i, : c + 1 - k] = obs[0]
            valid[i, c + 1 - k : c + 1] = True
            win_act[i, c + 1 :] = np.nan
    hist_valid = valid[:, 1 : c + 1]
    # Row r starts an episode when r == 0; padded rows before it are marked too (observe resets on them).
    is_first = ~valid[:, :c] | ~hist_valid
    is_first[:, 0] = True  # the belief starts empty at the first history row, as in the model evaluation
    prev = np.where(is_first[..., None], 0.0, np.nan_to_num(win_act[:, :c]))
    future = win_act[:, c : c + h].copy()
    for i in range(n):
        known = np.flatnonzero(~np.isnan(future[i]).any(-1))
        if len(known) == 0:  # starting on the last row: hold the action that led there
            hold = win_act[i, c - 1] if not np.isnan(win_act[i, c - 1]).any() else np.zeros(a)
            future[i] = hold
        elif known[-1] < h - 1:
            future[i, known[-1] + 1 :] = future[i, known[-1]]
    factual = np.where(valid[:, c + 1 :, None], win_obs[:, c + 1 :], np.nan).astype(np.float32)
    return StartData(obs=win_obs[:, 1 : c + 1], prev_action=prev, is_first=is_first, future_action=future,
                     factual_obs=factual)
