"""`info` and `validate`: what a store holds, and whether every chunk of it reads back intact."""

from __future__ import annotations

import numpy as np

from data_pipeline.stats import channel_stats
from data_pipeline.store import TrajectoryStore, damage
from data_pipeline.store.paths import local_path


def _fmt_time(ns: int) -> str:
    return np.datetime_as_string(np.datetime64(int(ns), "ns"), unit="ms") + "Z"


def _discrete_stats(store: TrajectoryStore) -> dict[str, np.ndarray]:
    """Statistics of a Discrete action over the rows that have one (not the -1 of last rows)."""
    values = []
    chunk = store.array("action").chunks[0]
    for c0 in range(0, store.num_steps, chunk):
        c1 = min(c0 + chunk, store.num_steps)
        action = store.read_rows("action", c0, c1)[:, 0]
        values.append(action[~store.read_rows("is_last", c0, c1)])
    v = np.concatenate(values).astype(np.float64) if values else np.zeros(0)
    if not v.size:
        return {k: np.array([np.nan]) for k in ("mean", "std", "min", "max")}
    return {"mean": v.mean(keepdims=True), "std": v.std(keepdims=True), "min": v.min(keepdims=True),
            "max": v.max(keepdims=True)}


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
        lines.append(
            f"episode_length: min {lengths.min()}  mean {lengths.mean():.1f}  max {lengths.max()} transitions"
        )
        t0 = int(store.read_rows("time", 0, 1)[0])
        t1 = int(store.read_rows("time", store.num_steps - 1, store.num_steps)[0])
        lines.append(f"time_span: {_fmt_time(t0)} .. {_fmt_time(t1)} ({(t1 - t0) / 1e9:.3f} s)")
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
        st = None
        if stats and len(table) and channels:
            st = _discrete_stats(store) if var == "action" and s.discrete else channel_stats(store, var)
        for i, (ch, unit) in enumerate(zip(channels, units, strict=True)):
            row = f"{var:<8} {ch:<24} {unit or '-':<14}"
            if st is not None:
                row += "".join(f" {st[k][i]:>11.4g}" for k in ("mean", "std", "min", "max"))
            lines.append(row)
    return "\n".join(lines)


def _check_rows(store: TrajectoryStore) -> str | None:
    """Flags and time against the episode table: what is wrong, or None."""
    table = store.episodes()
    end = store.num_steps
    starts = table["start"].to_numpy()
    lengths = table["length"].to_numpy()
    if len(table) and (starts[0] != 0 or np.any(starts[1:] != starts[:-1] + lengths[:-1])):
        return "episode table: episodes are not back to back along 'step'"
    if len(table) and lengths.min() < 2:
        i = int(np.argmin(lengths))
        return f"episode table: episode {i} has {lengths[i]} rows; expected at least 2"
    first = np.zeros(end, bool)
    first[starts] = True
    last = np.zeros(end, bool)
    last[starts + lengths - 1] = True
    for name, want in (("is_first", first), ("is_last", last)):
        got = store.read_rows(name, 0, end)
        if (got != want).any():
            row = int(np.flatnonzero(got != want)[0])
            return (f"array '{name}' is {bool(got[row])} at row {row}; "
                    f"the episode table implies {bool(want[row])}")
    time = store.read_rows("time", 0, end)
    bad = np.flatnonzero((np.diff(time) <= 0) & ~last[:-1])
    if bad.size:
        row = int(bad[0]) + 1
        return f"array 'time' does not increase at row {row} ({time[row - 1]} then {time[row]} ns)"
    return None


def validate_store(path: str, repair: bool = False) -> dict[str, str]:
    """Check structure, commit state, every metadata file and every committed chunk (present, crc32c
    checksum, decodable); optionally repair.

    Returns `key: value` lines for the CLI; `status` is `ok` or `corrupted`. When corrupted, `error` is
    the first problem in full, `damaged` counts the damaged parts and `damage` lists them (array and
    chunk or zarr.json). `repair` opens the store for writing, which drops an uncommitted tail; it
    refuses a damaged store (nothing is cut off a store whose table cannot be trusted).
    """
    report: dict[str, str] = {"store": path}
    local = local_path(path)
    if local is not None and not local.exists():
        raise FileNotFoundError(f"{path}: no trajectory store here (no such directory)")
    found = damage.scan(path)
    if found.damage:
        report["status"] = "corrupted"
        report["error"] = found.damage[0].message
        report["damaged"] = str(len(found.damage))
        report["damage"] = "; ".join(str(d) for d in found.damage)
        return report
    if repair:
        with TrajectoryStore.open(path) as reader:
            tail = max(reader.array(n).shape[0] for n in reader.step_vars) - reader.num_steps
        if tail:
            with TrajectoryStore.open(path, mode="a"):  # opening for writing drops the uncommitted tail
                report["dropped_rows"] = str(tail)
    with TrajectoryStore.open(path) as store:
        end = store.num_steps
        tails = {name: store.array(name).shape[0] - end for name in store.step_vars}
        if any(tails.values()):
            report["uncommitted_rows"] = str(max(tails.values()))
        problem = _check_rows(store)
        if problem:
            report["status"] = "corrupted"
            report["error"] = f"{path}: {problem}"
            return report
        report["episodes"] = str(len(store.episodes()))
        report["steps"] = str(end)
        report["status"] = "ok"
    return report
