"""A checked `RawLog` into episodes: split at gaps longer than max_gap, each piece resampled onto dt,
pieces shorter than min_transitions refused or dropped (docs/ingest.md, steps 1-5)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data_pipeline.ingest.log import RawLog
from data_pipeline.ingest.resample import episode_starts, resample_group
from data_pipeline.ingest.spec import GROUPS, IngestSpec
from data_pipeline.schema import DISCRETE_FILL, Episode, StoreSchema
from data_pipeline.validate import DataValidationError


def _gap_intervals(raw: RawLog, spec: IngestSpec, axis: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merged open intervals (start, end) on `axis` where some channel went silent for > max_gap."""
    starts, ends = [], []
    for k, (group, _ch) in enumerate(spec.channels()):
        ok = np.isfinite(raw.data[k])
        t, ep = axis[ok], raw.episode[ok]
        gap = (np.diff(t) > spec.max_gap_of(group) * (1 + 1e-9)) & (ep[1:] == ep[:-1])
        starts.append(t[:-1][gap])
        ends.append(t[1:][gap])
    a, b = np.concatenate(starts), np.concatenate(ends)
    if not a.size:
        return a, b
    order = np.argsort(a, kind="stable")
    a, b = a[order], b[order]
    new = np.r_[True, a[1:] >= np.maximum.accumulate(b)[:-1]]
    heads = np.flatnonzero(new)
    return a[heads], np.maximum.reduceat(b, heads)


def episodes_of(raw: RawLog, spec: IngestSpec, schema: StoreSchema) -> list[Episode]:
    """Split `raw` at gaps longer than max_gap, resample each piece onto dt, return the episodes."""
    axis, offset = raw.axis(margin=max(spec.max_gap_of(g) for g in GROUPS))  # episodes > max_gap apart
    gap_a, gap_b = _gap_intervals(raw, spec, axis)
    ended = np.searchsorted(gap_b, axis, side="right")
    keep = np.searchsorted(gap_a, axis, side="left") <= ended  # rows strictly inside a gap: no episode
    cut = np.r_[True, (np.diff(raw.episode) != 0) | (np.diff(ended) != 0)]
    piece = np.cumsum(cut) - 1  # piece index of each row, nondecreasing
    n_pieces = int(piece[-1]) + 1 if piece.size else 0

    # A piece's grid spans the time where every channel has readings: from the latest first reading
    # to the earliest last one, starting on a whole multiple of dt so that files line up.
    start = np.full(n_pieces, np.iinfo(np.int64).min)
    stop = np.full(n_pieces, np.iinfo(np.int64).max)
    for k in range(len(raw.data)):
        ok = keep & np.isfinite(raw.data[k])
        p, t = piece[ok], raw.time_ns[ok]
        heads = np.r_[0, np.flatnonzero(np.diff(p)) + 1] if p.size else np.zeros(0, np.int64)
        present = p[heads]
        absent = np.ones(n_pieces, bool)
        absent[present] = False
        start[present] = np.maximum(start[present], t[heads])
        stop[present] = np.minimum(stop[present], t[np.r_[heads[1:] - 1, p.size - 1]])
        start[absent], stop[absent] = 0, -1
    dt_ns = round(spec.dt * 1e9)
    start = -(-start // dt_ns) * dt_ns
    transitions = np.where(stop >= start, (stop - start) // dt_ns, -1)
    too_short = transitions < spec.min_transitions
    if too_short.any() and spec.short_episodes == "error":
        _raise_short(raw, spec, piece, int(np.flatnonzero(too_short)[0]), int(transitions[too_short][0]))

    good = np.flatnonzero(~too_short)
    lengths = transitions[good] + 1
    offsets = np.r_[0, np.cumsum(lengths)[:-1]].astype(np.int64)
    k = np.arange(int(lengths.sum())) - np.repeat(offsets, lengths)
    grid_ns = np.repeat(start[good], lengths) + dt_ns * k
    ep_of_piece = raw.episode[np.searchsorted(piece, good)]
    e = np.repeat(ep_of_piece, lengths)
    t0 = episode_starts(raw.time_ns, raw.episode, len(raw.episode_names))
    grid = e * offset + (grid_ns - t0[e]) / 1e9  # ns differences first: exact epoch times

    n_obs, n_act = len(spec.observation.channels), len(spec.action.channels)
    obs = resample_group(raw.data[:n_obs], spec.observation.resample, spec.max_gap_of("observation"),
                         axis, keep, grid)
    act = resample_group(raw.data[n_obs:n_obs + n_act], spec.action.resample, spec.max_gap_of("action"),
                         axis, keep, grid)
    if spec.reward is not None:
        rew = resample_group(raw.data[n_obs + n_act:], spec.reward.resample, spec.max_gap_of("reward"),
                             axis, keep, grid)[:, 0]
    else:
        rew = np.zeros(grid.size, np.float32)
    if schema.discrete:
        act = np.where(np.isfinite(act), np.round(act), DISCRETE_FILL).astype(np.int64)

    episodes = []
    stem = Path(raw.path).name
    n_split = np.bincount(ep_of_piece, minlength=len(raw.episode_names))
    split_index = np.zeros(len(raw.episode_names), np.int64)
    for j, (a, n) in enumerate(zip(offsets.tolist(), lengths.tolist(), strict=True)):
        b, ep = a + n, int(ep_of_piece[j])
        name = f"{stem}:{raw.episode_names[ep]}" if spec.episode_column else stem
        if n_split[ep] > 1:  # a gap split this episode: number its pieces
            name += f"/{split_index[ep]}"
        split_index[ep] += 1
        action, reward = act[a:b], rew[a:b]  # views, but their last rows belong to this episode only
        action[-1] = DISCRETE_FILL if schema.discrete else np.nan
        reward[-1] = np.nan
        truncated = np.zeros(n, bool)
        truncated[-1] = True  # a log ends (or a gap cuts it) without the system reaching a terminal state
        episodes.append(Episode(
            obs=obs[a:b], action=action, reward=reward, terminated=np.zeros(n, bool), truncated=truncated,
            time=grid_ns[a:b], episode_id=name, source=raw.path, start_time=int(grid_ns[a]),
        ))
    return episodes


def _raise_short(raw: RawLog, spec: IngestSpec, piece: np.ndarray, k: int, transitions: int) -> None:
    rows = raw.row[piece == k]
    e = raw.episode[np.searchsorted(piece, k)]
    name = f"episode {raw.episode_names[e]!r}, " if spec.episode_column else ""
    raise DataValidationError(
        f"{raw.path}: {name}{raw.where(int(rows.min()))} to {raw.where(int(rows.max()))} give "
        f"{max(transitions, 0)} transitions on the dt={spec.dt} s grid (episodes are split at gaps longer "
        "than max_gap and cover the time where every channel has readings); expected at least "
        f"{spec.min_transitions} (min_transitions), or set short_episodes: drop"
    )
