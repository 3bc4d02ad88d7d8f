"""Sensor-log ingest: CSV / Parquet round trips, resampling, gaps, NaN policies, and every bad input
rejected with a message naming file, column and row, the store left untouched."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import yaml

from data_pipeline.ingest import IngestSpec, SpecError, ingest_file
from data_pipeline.store import TrajectoryStore
from data_pipeline.validate import DataValidationError

REPO = Path(__file__).resolve().parents[2]


def base_spec(**over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "timestamp": {"column": "t", "unit": "s"},
        "episode_column": "run",
        "dt": 0.1,
        "max_gap": 0.5,
        "observation": {"channels": [{"column": "temp", "name": "temperature", "unit": "degC"},
                                     {"column": "level", "unit": "m"}]},
        "action": {"channels": [{"column": "heater", "unit": "%", "low": 0, "high": 100}]},
        "reward": {"column": "cost", "unit": "EUR"},
    }
    spec.update(over)
    return spec


def regular_log(n: int = 30, runs: tuple[str, ...] = ("a", "b")) -> pd.DataFrame:
    """Samples exactly on the 0.1 s grid, so resampling must give back the input values."""
    frames = []
    for i, run in enumerate(runs):
        k = np.arange(n)
        t = np.round(k * 0.1, 6)
        frames.append(pd.DataFrame({"run": run, "t": t, "temp": 20.0 + t + i, "level": 1.0 + 0.01 * k,
                                    "heater": (k % 5) * 10.0, "cost": 0.5 * t}))
    return pd.concat(frames, ignore_index=True)


def write(tmp_path: Path, df: pd.DataFrame, spec: dict[str, Any], fmt: str = "csv",
          name: str = "log") -> tuple[str, str]:
    log = tmp_path / f"{name}.{fmt}"
    if fmt == "csv":
        df.to_csv(log, index=False)
    else:
        df.to_parquet(log, index=False)
    spec_path = tmp_path / f"{name}_spec.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    return str(log), str(spec_path)


def tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def ingest(log: str, spec: str, out: Path, fmt: str = "csv", **kw: Any) -> TrajectoryStore:
    store = ingest_file(fmt, log, spec, str(out), **kw)
    store.close()
    return TrajectoryStore.open(str(out))


# ---------------------------------------------------------------------- round trips
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_round_trip_gives_back_samples_on_the_grid(tmp_path: Path, fmt: str) -> None:
    df = regular_log()
    log, spec = write(tmp_path, df, base_spec(), fmt)
    store = ingest(log, spec, tmp_path / "s.zarr", fmt)
    assert store.num_episodes == 2 and store.num_steps == 60
    assert list(store.episodes()["id"]) == [f"log.{fmt}:a", f"log.{fmt}:b"]
    for i, run in enumerate("ab"):
        ep, rows = store.read_episode(i), df[df.run == run]
        np.testing.assert_array_equal(ep.obs, rows[["temp", "level"]].to_numpy(np.float32))
        np.testing.assert_array_equal(ep.action[:-1, 0], rows.heater.to_numpy(np.float32)[:-1])
        np.testing.assert_array_equal(ep.reward[:-1], rows.cost.to_numpy(np.float32)[:-1])
        assert np.isnan(ep.action[-1, 0]) and np.isnan(ep.reward[-1])
        np.testing.assert_array_equal(ep.time, np.arange(30) * 100_000_000)
        assert ep.truncated[-1] and not ep.terminated.any()

    ds = xr.open_zarr(str(tmp_path / "s.zarr"))
    assert list(ds.obs_channel.values) == ["temperature", "level"]
    assert list(ds.obs_unit.values) == ["degC", "m"]
    assert list(ds.action_unit.values) == ["%"]
    prov = store.schema.provenance
    assert prov["files"][0]["sha256"] == hashlib.sha256(Path(log).read_bytes()).hexdigest()
    assert prov["spec"]["dt"] == 0.1 and len(prov["spec_sha256"]) == 64
    assert store.schema.gym_action_space().high[0] == 100.0
    assert np.isinf(store.schema.gym_observation_space().high).all()


def test_csv_and_parquet_give_identical_stores(tmp_path: Path) -> None:
    df = regular_log()
    stores = []
    for fmt in ("csv", "parquet"):
        log, spec = write(tmp_path, df, base_spec(), fmt)
        stores.append(ingest(log, spec, tmp_path / f"{fmt}.zarr", fmt).to_xarray())
    names = ["obs", "action", "reward", "time", "is_first", "is_last", "episode_length"]
    csv_ds, parquet_ds = (ds[names] for ds in stores)
    csv_ds.attrs, parquet_ds.attrs = {}, {}  # provenance differs: file names and format
    xr.testing.assert_identical(csv_ds, parquet_ds)


def test_glob_ingests_every_file_in_one_store(tmp_path: Path) -> None:
    df = regular_log(runs=("a",))
    for name in ("log1", "log2"):
        write(tmp_path, df, base_spec(), name=name)
    spec = write(tmp_path, df, base_spec(), name="x")[1]
    store = ingest(str(tmp_path / "log[12].csv"), spec, tmp_path / "s.zarr")
    assert list(store.episodes()["id"]) == ["log1.csv:a", "log2.csv:a"]
    assert len(store.schema.provenance["files"]) == 2


def test_append_adds_episodes_and_records_the_files(tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    ingest(*write(tmp_path, regular_log(), base_spec(), name="day1"), out)
    store = ingest(*write(tmp_path, regular_log(runs=("c",)), base_spec(), name="day2"), out, append=True)
    assert list(store.episodes()["id"]) == ["day1.csv:a", "day1.csv:b", "day2.csv:c"]
    appended = store.attrs["ingest_appends"]
    assert [Path(f["path"]).name for f in appended[0]["files"]] == ["day2.csv"]


def test_datetime_timestamps_with_format(tmp_path: Path) -> None:
    df = regular_log(runs=("a",))
    base = pd.Timestamp("2024-05-01 12:00:00")
    df["t"] = (base + pd.to_timedelta(df.t, unit="s")).dt.strftime("%d/%m/%Y %H:%M:%S.%f")
    spec = base_spec(timestamp={"column": "t", "unit": "datetime", "format": "%d/%m/%Y %H:%M:%S.%f"})
    store = ingest(*write(tmp_path, df, spec), tmp_path / "s.zarr")
    ep = store.read_episode(0)
    assert ep.time[0] == base.value and ep.time[1] - ep.time[0] == 100_000_000
    assert ep.num_rows == 30


def test_discrete_actions(tmp_path: Path) -> None:
    df = regular_log()
    df["heater"] = np.arange(len(df)) % 3
    spec = base_spec(action={"type": "discrete", "n": 3, "resample": "hold", "channels": ["heater"]})
    store = ingest(*write(tmp_path, df, spec), tmp_path / "s.zarr")
    ep = store.read_episode(0)
    assert store.schema.discrete and ep.action.dtype == np.int64
    np.testing.assert_array_equal(ep.action[:-1, 0], (np.arange(30) % 3)[:-1])
    assert ep.action[-1, 0] == -1


# ---------------------------------------------------------------------- resampling
def test_irregular_timestamps_are_interpolated_onto_dt(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    t = np.sort(rng.uniform(0.0, 5.0, 400))
    df = pd.DataFrame({"t": t, "temp": 2.0 * t + 1.0, "level": -t, "heater": 10.0, "cost": 1.0})
    spec = base_spec(episode_column=None, max_gap=1.0)
    store = ingest(*write(tmp_path, df, spec), tmp_path / "s.zarr")
    ep = store.read_episode(0)
    grid = ep.time / 1e9
    assert grid[0] >= t[0] and grid[-1] <= t[-1] and np.allclose(np.diff(grid), 0.1)
    assert grid[0] == pytest.approx(np.ceil(t[0] / 0.1) * 0.1)  # the grid sits on multiples of dt
    np.testing.assert_allclose(ep.obs[:, 0], 2.0 * grid + 1.0, rtol=1e-6)
    np.testing.assert_allclose(ep.obs[:, 1], -grid, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("layout", "fmt"), [("same_rows", "csv"), ("separate_rows", "csv"),
                                             ("same_rows", "parquet")])
def test_multi_rate_sensors(tmp_path: Path, layout: str, fmt: str) -> None:
    """A 100 Hz sensor and a 7 Hz one: empty cells where a sensor did not report."""
    fast = np.round(np.arange(0, 300) * 0.01, 6)
    slow = np.round(np.arange(0, 22) / 7, 6)
    if layout == "same_rows":  # one row per fast sample; the slow sensor fills the nearest row
        t = np.union1d(fast, slow)
        temp = 3.0 * t
        level = np.where(np.isin(t, slow), 5.0 - t, np.nan)
        temp[~np.isin(t, fast)] = np.nan
    else:  # each sensor writes its own rows
        t = np.r_[fast, slow + 0.0005]
        temp = np.r_[3.0 * fast, np.full(slow.size, np.nan)]
        level = np.r_[np.full(fast.size, np.nan), 5.0 - (slow + 0.0005)]
        order = np.argsort(t)
        t, temp, level = t[order], temp[order], level[order]
    df = pd.DataFrame({"t": t, "temp": temp, "level": level, "heater": 1.0, "cost": 0.0})
    spec = base_spec(episode_column=None, max_gap=0.2)
    store = ingest(*write(tmp_path, df, spec, fmt), tmp_path / "s.zarr", fmt)  # pandas writes NaN as null
    assert store.num_episodes == 1
    ep = store.read_episode(0)
    grid = ep.time / 1e9
    assert grid[0] >= slow[0] and grid[-1] <= fast[-1]
    np.testing.assert_allclose(ep.obs[:, 0], 3.0 * grid, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ep.obs[:, 1], 5.0 - grid, rtol=1e-6)
    assert ep.num_rows == int((2.99 - grid[0]) / 0.1 + 1e-9) + 1


def test_gap_longer_than_max_gap_splits_the_episode(tmp_path: Path) -> None:
    t = np.round(np.r_[np.arange(0, 20) * 0.1, 4.0 + np.arange(0, 20) * 0.1], 6)
    df = pd.DataFrame({"t": t, "temp": t, "level": 1.0, "heater": 0.0, "cost": 0.0})
    store = ingest(*write(tmp_path, df, base_spec(episode_column=None, max_gap=0.5)), tmp_path / "s.zarr")
    table = store.episodes()
    assert list(table["id"]) == ["log.csv/0", "log.csv/1"]
    assert list(table["length"]) == [20, 20]
    assert store.read_episode(1).time[0] == 4_000_000_000


def test_one_silent_sensor_splits_the_episode(tmp_path: Path) -> None:
    t = np.round(np.arange(0, 60) * 0.1, 6)
    level = np.where((t > 2.0) & (t < 3.5), np.nan, 1.0)  # silent from 2.1 to 3.4 s
    df = pd.DataFrame({"t": t, "temp": t, "level": level, "heater": 0.0, "cost": 0.0})
    store = ingest(*write(tmp_path, df, base_spec(episode_column=None, max_gap=0.5)), tmp_path / "s.zarr")
    assert list(store.episodes()["length"]) == [21, 25]  # 0.0…2.0 s and 3.5…5.9 s


def test_hold_versus_interpolate(tmp_path: Path) -> None:
    t = np.round(np.arange(0, 11) * 0.25, 6)  # readings every 0.25 s, value = t
    df = pd.DataFrame({"t": t, "temp": t, "level": t, "heater": t, "cost": t})
    spec = base_spec(episode_column=None, max_gap=0.3,
                     observation={"resample": "interpolate", "channels": ["temp"]},
                     action={"resample": "hold", "channels": ["heater"]})
    store = ingest(*write(tmp_path, df, spec), tmp_path / "s.zarr")
    ep = store.read_episode(0)
    grid = ep.time / 1e9
    np.testing.assert_allclose(ep.obs[:, 0], grid, atol=1e-6)  # interpolated: the value itself
    held = np.floor(grid / 0.25 + 1e-9) * 0.25  # hold: the last reading at or before each instant
    np.testing.assert_allclose(ep.action[:-1, 0], held[:-1], atol=1e-6)
    np.testing.assert_allclose(ep.reward[:-1], held[:-1], atol=1e-6)  # reward holds by default


@pytest.mark.parametrize(("policy", "extra", "expected"), [
    ("fill", {"fill_value": -1.0}, -1.0),
    ("interpolate", {}, 0.5),
    ("drop", {}, 0.5),  # the row goes; the neighbours' interpolation covers the hole
])
def test_nan_policies(tmp_path: Path, policy: str, extra: dict, expected: float) -> None:
    df = regular_log(runs=("a",))
    df["temp"] = df["t"]
    df["temp"] = df["temp"].astype(object)
    df.loc[5, "temp"] = "nan"  # a written NaN is a bad reading, not a missing one
    spec = base_spec(nan_policy=policy, **extra)
    store = ingest(*write(tmp_path, df, spec), tmp_path / "s.zarr")
    ep = store.read_episode(0)
    assert ep.num_rows == 30
    assert ep.obs[5, 0] == pytest.approx(expected)


def test_short_pieces_can_be_dropped(tmp_path: Path) -> None:
    t = np.round(np.r_[np.arange(0, 20) * 0.1, 5.0, 5.1, 9.0 + np.arange(0, 20) * 0.1], 6)
    df = pd.DataFrame({"t": t, "temp": t, "level": 1.0, "heater": 0.0, "cost": 0.0})
    spec = base_spec(episode_column=None, min_transitions=5, short_episodes="drop")
    store = ingest(*write(tmp_path, df, spec), tmp_path / "s.zarr")
    assert list(store.episodes()["length"]) == [20, 20]


# ---------------------------------------------------------------------- bad inputs
def _nan(df: pd.DataFrame) -> pd.DataFrame:
    df["level"] = df["level"].astype(object)
    df.loc[7, "level"] = "NaN"
    return df


def _dup(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[4, "t"] = df.loc[3, "t"]
    return df


def _decreasing(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[4, "t"] = 0.15
    return df


def _text(df: pd.DataFrame) -> pd.DataFrame:
    df["heater"] = df["heater"].astype(object)
    df.loc[9, "heater"] = "on"
    return df


BAD_INPUTS = [  # (name, change to the log, change to the spec, words the message must hold)
    ("nan", _nan, {}, ["log.csv", "'level'", "row 7 (line 9)", "finite"]),
    ("duplicate_time", _dup, {}, ["log.csv", "'t'", "duplicate", "row 4 (line 6)", "'a'"]),
    ("decreasing_time", _decreasing, {}, ["log.csv", "'t'", "decreasing", "row 4 (line 6)"]),
    ("missing_column", lambda df: df.drop(columns="level"), {}, ["log.csv", "'level'", "missing"]),
    ("wrong_dtype", _text, {}, ["log.csv", "'heater'", "'on'", "row 9 (line 11)", "expected a number"]),
    ("out_of_bounds", lambda df: df.assign(heater=df.heater * 100), {},
     ["'heater'", "row 1", "[0.0, 100.0]"]),
    ("too_short", lambda df: df, {"min_transitions": 40},
     ["log.csv", "'a'", "row 0", "row 29", "min_transitions"]),
    ("schema_drift", lambda df: df, {"observation": {"channels": [{"column": "temp", "name": "temperature",
                                                                  "unit": "K"}, "level"]}},
     ["log.csv", "obs_units", "schema drift"]),
    ("duplicate_episode", lambda df: df, {}, ["log.csv:a", "already in the store"]),
]


@pytest.mark.parametrize(("name", "change_log", "change_spec", "words"), BAD_INPUTS,
                         ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_rejected_and_the_store_untouched(tmp_path: Path, name: str, change_log: Any,
                                                      change_spec: dict, words: list[str]) -> None:
    good = tmp_path / "good"
    good.mkdir()
    out = tmp_path / "s.zarr"
    ingest(*write(good, regular_log(), base_spec()), out)  # episodes "log.csv:a", "log.csv:b"
    before = tree_hash(out)
    spec = base_spec(**change_spec)
    runs = ("a",) if name == "duplicate_episode" else ("c",)
    df = change_log(regular_log(runs=runs))
    if name in ("duplicate_time", "too_short"):
        df["run"] = "a"
    log, spec_path = write(tmp_path, df, spec)
    with pytest.raises(DataValidationError) as err:
        ingest_file("csv", log, spec_path, str(out), append=True)
    for word in words:
        assert word in str(err.value), (word, str(err.value))
    assert tree_hash(out) == before
    if name not in ("schema_drift", "duplicate_episode"):  # bad data never replaces a store either
        with pytest.raises(DataValidationError):
            ingest_file("csv", log, spec_path, str(out), overwrite=True)
        assert tree_hash(out) == before


@pytest.mark.parametrize(("change", "words"), [
    ({"dt": -1}, ["'dt'", "> 0"]),
    ({"dt": None}, ["'dt'", "missing"]),
    ({"nan_policy": "ignore"}, ["'nan_policy'", "'interpolate'"]),
    ({"nan_policy": "fill"}, ["'fill_value'", "missing"]),
    ({"observation": {"channels": [{"name": "x"}]}}, ["'observation.channels.0.column'", "missing"]),
    ({"observation": {"channels": ["temp"], "resample": "cubic"}}, ["'observation.resample'", "'hold'"]),
    ({"action": {"type": "discrete", "channels": ["heater"], "resample": "hold"}}, ["'action.n'", "missing"]),
    ({"action": {"type": "discrete", "n": 2, "channels": ["heater"], "resample": "interpolate"}},
     ["'action.resample'", "'hold'"]),
    ({"sampling": 3}, ["'sampling'", "not a known key"]),
    ({"timestamp": {"column": "t", "unit": "minutes"}}, ["'timestamp.unit'", "'ms'"]),
    ({"timestamp": {"column": "t", "unit": "s", "format": "%H:%M"}}, ["'timestamp.format'", "unit: datetime"]),
    ({"observation": {"channels": ["temp", {"column": "level", "name": "temp"}]}},
     ["'observation.channels.1.name'", "'temp'", "observation.channels.0.name"]),
    ({"observation": {"channels": [{"column": "temp", "low": 5, "high": 1}]}},
     ["'observation.channels.0.high'", "high > low"]),
    ({"observation": {"channels": ["temp"], "type": "box"}}, ["'observation.type'", "not a known key"]),
    ({"min_transitions": 0}, ["'min_transitions'", "greater than or equal to 1"]),
    ({"action": {"type": "discrete", "n": 3, "channels": ["heater", "temp"]}}, ["'action.channels'", "exactly one"]),
])
def test_spec_errors_name_the_key(change: dict, words: list[str]) -> None:
    spec = base_spec(**change)
    spec = {k: v for k, v in spec.items() if v is not None}
    with pytest.raises(SpecError) as err:
        IngestSpec.from_dict(spec, source="spec.yaml")
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_spec_file_refuses_duplicate_keys_and_reads_null_as_absent(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(base_spec()) + "dt: 0.2\n")  # dt twice: PyYAML would keep the last
    with pytest.raises(SpecError, match="spec.yaml:[0-9]+: duplicate key 'dt'"):
        IngestSpec.from_yaml(path)
    spec = IngestSpec.from_dict(base_spec(max_gap=None, reward=None, min_transitions=None))
    assert spec.max_gap is None and spec.reward is None and spec.min_transitions == 1
    assert spec.max_gap_of("observation") == pytest.approx(0.5)  # 5 * dt
    assert spec.raw["max_gap"] is None  # the provenance keeps the spec as written


def test_example_spec_ingests_a_tank_log_and_is_the_documented_one(tmp_path: Path) -> None:
    example = REPO / "configs/ingest/example_spec.yaml"
    assert example.read_text() in (REPO / "docs/ingest.md").read_text()
    spec = IngestSpec.from_yaml(example)
    assert spec.max_gap_of("action") == 2.0 and spec.max_gap_of("observation") == 0.5
    rng = np.random.default_rng(0)
    frames = []
    for run in ("r1", "r2"):
        t = np.unique(np.round(rng.uniform(0, 10, 400), 4))
        slow = np.arange(t.size) % 7 == 0  # the flow meter reports in one row out of seven
        frames.append(pd.DataFrame({
            "t": t, "run": run, "temp_top": 20 + t, "temp_bottom": 15 + 0.5 * t, "level": 1.0,
            "flow_in": np.where(slow, 3.0, np.nan), "heater_pct": np.round(t) * 5, "valve_pct": 50.0,
            "energy_cost": 0.01 * np.round(t),
        }))
    log = tmp_path / "tank.csv"
    pd.concat(frames).to_csv(log, index=False)
    store = ingest(str(log), str(example), tmp_path / "tank.zarr")
    assert store.num_episodes == 2 and store.schema.obs_units == ["degC", "degC", "m", "l/min"]
    ep = store.read_episode("tank.csv:r1")
    np.testing.assert_allclose(ep.obs[:, 0], 20 + ep.time / 1e9, rtol=1e-6)


# ---------------------------------------------------------------------- command line
def test_cli_ingest_csv(tmp_path: Path) -> None:
    log, spec = write(tmp_path, regular_log(), base_spec())
    out = tmp_path / "cli.zarr"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "data_pipeline", "ingest", "csv", log, "--spec", spec, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(": ", 1) for line in proc.stdout.strip().splitlines())
    assert lines["store"] == str(out) and lines["episodes"] == "2" and lines["steps"] == "60"
    ds = xr.open_zarr(str(out))
    assert ds.sizes["step"] == 60 and list(ds.obs_channel.values) == ["temperature", "level"]
