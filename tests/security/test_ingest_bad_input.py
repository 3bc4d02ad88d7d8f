"""Ingest (issue 13, "one bad input never costs data"): a timestamp beyond int64 nanoseconds is an error
naming the file line (never wrapped into another century, never a "duplicate"), a reading the store's
float32 cannot hold is named at its file line (not at a row of the resampled episode), a spec with a
duplicate key is refused, and random CSV cells give either a store that validates and holds every good
sample or one clear UserError."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_pipeline.errors import UserError
from data_pipeline.info import validate_store
from data_pipeline.ingest import IngestSpec, SpecError, ingest_file
from data_pipeline.store import TrajectoryStore
from data_pipeline.validate import DataValidationError

SPEC: dict[str, Any] = {
    "timestamp": {"column": "t", "unit": "s"}, "dt": 0.1, "max_gap": 0.5,
    "observation": {"channels": [{"column": "temp", "unit": "degC"}, {"column": "level", "unit": "m"}]},
    "action": {"channels": [{"column": "heater", "unit": "%", "low": 0, "high": 100}]},
    "reward": {"column": "cost", "unit": "EUR"},
}
COLUMNS = ["t", "temp", "level", "heater", "cost"]
ROWS = 30


def grid_rows() -> list[list[str]]:
    """Samples exactly on the 0.1 s grid, as CSV text: the store must give every one of them back."""
    k = np.arange(ROWS)
    t = np.round(k * 0.1, 6)
    table = np.stack([t, 20.0 + t, 1.0 + 0.01 * k, (k % 5) * 10.0, 0.5 * t], axis=1)
    return [[repr(float(v)) for v in row] for row in table]


def write_csv(path: Path, rows: list[list[str]]) -> str:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return str(path)


def write_spec(tmp_path: Path, spec: dict[str, Any] = SPEC) -> str:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def refused(log: str, spec: str, out: Path, fmt: str = "csv") -> str:
    """The message of the DataValidationError ingesting `log` raises; the store is never created."""
    with pytest.raises(DataValidationError) as err:
        ingest_file(fmt, log, spec, str(out)).close()
    assert not out.exists()
    return str(err.value)


# ---------------------------------------------------------------------- timestamps beyond int64 ns
@pytest.mark.parametrize(("cells", "shown"), [
    ({5: "1e300"}, "1e+300"),
    ({5: "1e300", 9: "1e301"}, "1e+300"),  # both wrapped to the same int64: reported as a "duplicate" before
    ({5: "-1e300"}, "-1e+300"),
    ({29: "1e20"}, "1e+20"),
    ({5: "9223372036.9"}, "9223372036.9"),  # just past int64 ns
], ids=["1e300", "two_huge", "negative", "1e20_last_row", "just_past"])
def test_timestamp_beyond_int64_ns_names_its_line(tmp_path: Path, cells: dict[int, str], shown: str) -> None:
    rows = grid_rows()
    for i, text in cells.items():
        rows[i][0] = text
    first = min(cells)
    msg = refused(write_csv(tmp_path / "log.csv", rows), write_spec(tmp_path), tmp_path / "s.zarr")
    assert f"log.csv: timestamp column 't' is {shown} at row {first} (line {first + 2})" in msg, msg
    assert "int64 nanoseconds" in msg and "duplicate" not in msg and "decreasing" not in msg, msg


def test_integer_timestamps_that_overflow_are_refused_in_csv_and_parquet(tmp_path: Path) -> None:
    df = pd.DataFrame(np.array(grid_rows(), float), columns=COLUMNS)
    df["t"] = np.arange(ROWS, dtype=np.int64)
    df.loc[29, "t"] = 10**13  # seconds: 1e22 ns wrapped into a time before the others
    spec = write_spec(tmp_path)
    df.to_csv(tmp_path / "log.csv", index=False)
    msg = refused(str(tmp_path / "log.csv"), spec, tmp_path / "a.zarr")
    assert "timestamp column 't' is 10000000000000 at row 29 (line 31)" in msg, msg
    df.to_parquet(tmp_path / "log.parquet", index=False)
    msg = refused(str(tmp_path / "log.parquet"), spec, tmp_path / "b.zarr", fmt="parquet")
    assert "log.parquet: timestamp column 't' is 10000000000000 at row 29;" in msg, msg


def test_datetimes_past_2262_are_refused_not_wrapped(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, {**SPEC, "timestamp": {"column": "t", "unit": "datetime"}})
    rows = grid_rows()
    for i, row in enumerate(rows):
        row[0] = f"2020-01-01T00:00:{i * 0.1:06.3f}"
    rows[29][0] = "3000-01-01T00:00:00"  # pandas parses it in us; a cast to ns wrapped it to 1830
    msg = refused(write_csv(tmp_path / "log.csv", rows), spec, tmp_path / "a.zarr")
    assert "timestamp column 't' is '3000-01-01T00:00:00' at row 29 (line 31)" in msg, msg
    assert "1830" not in msg and "between the years 1678 and 2262" in msg, msg

    stamps = pd.to_datetime([r[0] for r in rows[:29]]).as_unit("us").tolist() + [pd.Timestamp("3000-01-01")]
    table = pa.table({"t": pa.array(stamps, pa.timestamp("us")),
                      **{c: pa.array(np.array(grid_rows(), float)[:, j]) for j, c in enumerate(COLUMNS) if j}})
    pq.write_table(table, tmp_path / "log.parquet")  # the cast to ns raised a bare ArrowInvalid before
    msg = refused(str(tmp_path / "log.parquet"), spec, tmp_path / "b.zarr", fmt="parquet")
    assert "log.parquet: timestamp column 't' is 3000-01-01T00:00:00" in msg and "at row 29;" in msg, msg


# ---------------------------------------------------------------------- readings beyond float32
@pytest.mark.parametrize(("column", "text"), [("level", "1e300"), ("cost", "-1e39"), ("temp", "3.5e38")])
def test_reading_beyond_float32_names_its_line_not_an_episode_row(tmp_path: Path, column: str, text: str) -> None:
    rows = grid_rows()
    rows[7][COLUMNS.index(column)] = text
    msg = refused(write_csv(tmp_path / "log.csv", rows), write_spec(tmp_path), tmp_path / "s.zarr")
    assert f"log.csv: column '{column}' is {float(text)} at row 7 (line 9)" in msg, msg
    assert "float32" in msg and "episode" not in msg, msg


# ---------------------------------------------------------------------- spec
def test_ingest_spec_with_a_duplicate_key_is_refused(tmp_path: Path) -> None:
    """PyYAML keeps the last of two equal keys: a second `high` would silently widen a channel's range."""
    text = ("timestamp: {column: t, unit: s}\ndt: 0.1\nobservation:\n  channels: [temp]\n"
            "action:\n  channels:\n    - column: heater\n      low: 0\n      high: 100\n      high: 1000\n")
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(SpecError, match=r"spec.yaml:[0-9]+: duplicate key 'high'"):
        IngestSpec.from_yaml(path)


# ---------------------------------------------------------------------- random cells
CELLS = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", "nan", "NaN", "inf", "-inf", "1e300", "-1e39", "3e38", "9" * 40, "1e-320", "0x1A",
                     "1,5", "true", " 1 ", '"', "\x00", "1e19", "-9223372036.9", "1\r", "2\n3", "+nan", "1_0"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=st.lists(st.tuples(st.integers(1, ROWS - 2), st.integers(0, len(COLUMNS) - 1), CELLS),
                        min_size=1, max_size=3, unique_by=lambda c: c[0]))
def test_random_cells_store_every_good_sample_or_raise_one_clear_error(
        tmp_path_factory: pytest.TempPathFactory, changes: list[tuple[int, int, str]]) -> None:
    tmp_path = tmp_path_factory.mktemp("cells")
    rows = grid_rows()
    for i, j, text in changes:
        rows[i][j] = text
    log = write_csv(tmp_path / "log.csv", rows)
    out = tmp_path / "s.zarr"
    try:
        ingest_file("csv", log, write_spec(tmp_path), str(out)).close()
    except UserError as err:  # the one documented outcome besides success
        msg = str(err)
        assert msg.startswith(log) and "\n" not in msg and "expected" in msg, msg
        assert any(f"(line {i + 2})" in msg for i, _, _ in changes), msg  # a changed line, never a resampled row
        assert not out.exists()
        return
    assert validate_store(str(out))["status"] == "ok"
    good = np.array([row for i, row in enumerate(grid_rows()) if i not in {c[0] for c in changes}], float)
    with TrajectoryStore.open(str(out)) as store:
        times = np.concatenate([store.read_episode(e).time for e in range(store.num_episodes)])
        obs = np.concatenate([store.read_episode(e).obs for e in range(store.num_episodes)])
    at = np.searchsorted(times, np.round(good[:, 0] * 1e9).astype(np.int64))
    assert (at < times.size).all() and (times[np.minimum(at, times.size - 1)] == np.round(good[:, 0] * 1e9)).all()
    np.testing.assert_allclose(obs[at], good[:, 1:3], rtol=1e-6)
