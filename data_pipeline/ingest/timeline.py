"""Messy time axes: the spec's `sort`, `jitter` and `duplicates` rules, shared by the file ingest and the stream.

A historian export is rarely strictly increasing: clocks jitter by a millisecond, rows arrive
swapped, two rows carry the same instant. The rules (docs/ingest.md, "Messy logs"):

- a row earlier than an earlier row of its episode by at most `jitter` seconds is sorted silently;
  by more, the file is refused unless `sort: true`;
- after sorting, rows of an episode at the same time are one instant: one row, each channel from the
  rows that reported it (two sensors logged in separate rows always merge). A channel reported by
  several of them is a *conflict*, settled by `duplicates`: `error` refuses it, `first` / `last`
  keep the earliest / latest reading in file order, `mean` averages them.

`jitter` is only an ordering tolerance: it never merges rows at different times, so a log whose
clock jitters needs `jitter` alone, not a duplicate rule.

The file ingest calls `sort_order` and `merge_instants` with whole columns; the stream's reorder
buffer calls `combine` for each sample at an instant it already holds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from data_pipeline.errors import UserError


class OrderError(UserError, ValueError):
    """Rows out of order by more than the jitter: `index` is the late row's, `before` the earlier row's it
    falls behind (positions in what was checked)."""

    def __init__(self, index: int, before: int) -> None:
        super().__init__(f"row at position {index} is earlier than the row at position {before}")
        self.index = index
        self.before = before


class ConflictError(UserError, ValueError):
    """Two readings of one channel at one instant under `duplicates: error`: `index` is the second row's
    position, `first` the first's, `channel` the channel's position."""

    def __init__(self, index: int, first: int, channel: int) -> None:
        super().__init__(f"channel {channel} reported at position {first} and again at {index}")
        self.index = index
        self.first = first
        self.channel = channel


def sort_order(time_ns: np.ndarray, episode: np.ndarray, jitter_ns: int, sort: bool) -> np.ndarray | None:
    """The permutation that sorts rows (R,) by (episode, time), keeping file order among equal times; None
    when they already are. Without `sort`, raises OrderError at the first row (in file order) earlier
    than some earlier row of its episode by more than `jitter_ns`."""
    by_episode = np.argsort(episode, kind="stable")
    t, ep = time_ns[by_episode], episode[by_episode]
    if not sort and t.size > 1:
        latest = pd.Series(t).groupby(ep).cummax().to_numpy()  # the latest time so far in each episode
        same = ep[1:] == ep[:-1]
        behind = np.where(same, latest[:-1] - t[1:], 0)  # (R-1,) how far each row falls behind
        if (behind > jitter_ns).any():
            k = int(np.flatnonzero(behind > jitter_ns)[0]) + 1
            head = int(np.searchsorted(ep, ep[k]))  # the episode's first row (ep is sorted)
            before = head + int(np.flatnonzero(t[head:k] == latest[k - 1])[0])
            raise OrderError(int(by_episode[k]), int(by_episode[before]))
    order = np.lexsort((time_ns, episode))  # stable: equal (episode, time) keep file order
    return None if (np.diff(order) == 1).all() else order


@dataclass
class Merged:
    """Rows after `merge_instants`: `rows` (G,) the first row of each instant (positions in what was
    checked), `data` (K, G) and `bad` (K, G) the merged readings and their written-NaN/Inf mask."""

    rows: np.ndarray
    data: np.ndarray
    bad: np.ndarray


def merge_instants(time_ns: np.ndarray, episode: np.ndarray, data: np.ndarray, bad: np.ndarray,
                   rule: str) -> Merged | None:
    """Merge sorted rows (R,) that are one instant (the same time in the same episode).

    `data` (K, R) holds NaN where a sensor did not report; `bad` (K, R) marks written NaN / Inf (which
    count as reports). Returns None when every row is its own instant. Raises ConflictError at the
    first channel reported twice in one instant under `rule: error`."""
    if time_ns.size < 2:
        return None
    joins = (np.diff(time_ns) == 0) & (episode[1:] == episode[:-1])
    if not joins.any():
        return None
    starts = np.r_[True, ~joins]
    group = np.cumsum(starts) - 1  # (R,) instant of each row
    n = int(group[-1]) + 1
    reported = ~np.isnan(data) | bad  # (K, R)
    out = np.full((data.shape[0], n), np.nan)
    out_bad = np.zeros((data.shape[0], n), bool)
    for k in range(data.shape[0]):
        idx = np.flatnonzero(reported[k])
        g = group[idx]
        head = np.r_[True, g[1:] != g[:-1]]  # first report of each instant
        tail = np.r_[g[1:] != g[:-1], True]  # last report of each instant
        if rule == "error" and not head.all():
            second = int(np.flatnonzero(~head)[0])
            raise ConflictError(int(idx[second]), int(idx[second - 1]), k)
        if rule == "mean":
            count = np.bincount(g, minlength=n)
            total = np.bincount(g, weights=np.where(bad[k, idx], 0.0, data[k, idx]), minlength=n)
            out_bad[k] = np.bincount(g, weights=bad[k, idx], minlength=n) > 0
            with np.errstate(invalid="ignore", divide="ignore"):
                out[k] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
            out[k, out_bad[k]] = np.nan
            continue
        pick = idx[head] if rule in ("first", "error") else idx[tail]
        out[k, group[pick]] = data[k, pick]
        out_bad[k, group[pick]] = bad[k, pick]
    return Merged(rows=np.flatnonzero(starts), data=out, bad=out_bad)


def combine(held: np.ndarray, count: np.ndarray, new: np.ndarray, rule: str) -> int | None:
    """Merge one sample's readings `new` (K,) into the readings `held` (K,) of a sample at the same
    instant, in place, as `merge_instants` does; `count` (K,) counts the readings averaged so far
    (`mean`). Returns the position of a channel both report under `rule: error` (nothing is merged
    then), else None."""
    both = np.isfinite(held) & np.isfinite(new)
    if rule == "error" and both.any():
        return int(np.flatnonzero(both)[0])
    fresh = np.isfinite(new) & ~np.isfinite(held)
    if rule == "last":
        held[both] = new[both]
    elif rule == "mean":
        held[both] += (new[both] - held[both]) / (count[both] + 1)
        count[both] += 1
    held[fresh] = new[fresh]
    count[fresh] = 1
    return None
