"""`info` and `validate`: what a store holds, and whether every chunk of it reads back intact."""

from __future__ import annotations

import numpy as np

from data_pipeline.stats import channel_stats
from data_pipeline.store import StoreCorruptionError, TrajectoryStore


def _fmt_time(ns: int) -> str:
    return np.datetime_as_string(np.datetime64(int(ns), "ns"), unit="ms") + "Z"


def describe(path: str, stats: bool = True) -> str:
    """A human-readable summary: episodes, steps, channels with units, time span, statistics."""
    store = TrajectoryStore.open(path)
    s = store.schema
    table = store.episodes()
    lines = [
        f"store: {path}",
        f"schema_version: {store.attrs.get('schema_version')}",
        f"fingerprint: {store.fingerprint()}",
        f"episodes: {len(table)}",
        f"steps: {store.num_steps} rows ({store.num_steps - len(table)} transitions)",
        f"dt: {s.dt} s",
        f"observation_space: {s.gym_observation_space()}",
        f"action_space: {s.gym_action_space()}",
    ]
    if len(table):
        lengths = table["length"].to_numpy() - 1
        lines.append(f"episode_length: min {lengths.min()}  mean {lengths.mean():.1f}  max {lengths.max()} transitions")
        t0 = int(store.read_rows("time", 0, 1)[0])
        t1 = int(store.read_rows("time", store.num_steps - 1, store.num_steps)[0])
        lines.append(f"time_span: {_fmt_time(t0)} .. {_fmt_time(t1)}")
        sources = table["source"].value_counts()
        lines.append("sources: " + ", ".join(f"{k} ({v})" for k, v in sources.items()))
    if s.image_shape:
        lines.append(f"image: {tuple(s.image_shape)} uint8")
    header = f"{'variable':<8} {'channel':<24} {'unit':<14}"
    if stats and len(table):
        header += f" {'mean':>11} {'std':>11} {'min':>11} {'max':>11}"
    lines += ["", header, "-" * len(header)]
    groups = [("obs", s.obs_channels, s.obs_units), ("action", s.action_channels, s.action_units),
              ("reward", ["reward"], [s.reward_unit])]
    for var, channels, units in groups:
        st = channel_stats(store, var) if stats and len(table) and channels else None
        for i, (ch, unit) in enumerate(zip(channels, units, strict=True)):
            row = f"{var:<8} {ch:<24} {unit or '-':<14}"
            if st is not None:
                row += "".join(f" {st[k][i]:>11.4g}" for k in ("mean", "std", "min", "max"))
            lines.append(row)
    return "\n".join(lines)


def validate_store(path: str, repair: bool = False) -> dict[str, str]:
    """Check structure (lengths, commit state) and read every chunk (checksums); optionally repair."""
    store = TrajectoryStore.open(path, mode="a" if repair else "r")
    report: dict[str, str] = {"store": path}
    end = store.num_steps
    tails = {name: store.array(name).shape[0] - end for name in store.step_vars}
    bad_tail = {k: v for k, v in tails.items() if v}
    if bad_tail and not repair:
        report["uncommitted_rows"] = str(max(bad_tail.values()))
    for name in store.step_vars:
        chunk = store.array(name).chunks[0]
        for c0 in range(0, end, chunk):
            try:
                store.read_rows(name, c0, min(c0 + chunk, end))
            except StoreCorruptionError as err:
                report["status"] = "corrupted"
                report["error"] = str(err)
                return report
    table = store.episodes()
    starts = table["start"].to_numpy()
    lengths = table["length"].to_numpy()
    if len(table) and (starts[0] != 0 or np.any(starts[1:] != starts[:-1] + lengths[:-1])):
        report["status"] = "corrupted"
        report["error"] = "episode table: episodes are not back to back along 'step'"
        return report
    report["episodes"] = str(len(table))
    report["steps"] = str(end)
    report["status"] = "ok"
    store.close()
    return report
