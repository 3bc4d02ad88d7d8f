"""Messy historian logs (issue 14): clock jitter, swapped rows and duplicate timestamps, in the file ingest
and the stream, under the spec's `sort`, `jitter` and `duplicates` rules (docs/ingest.md, "Messy logs")."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from data_pipeline.ingest import IngestSpec, SpecError, ingest_file
from data_pipeline.store import TrajectoryStore
from data_pipeline.stream import Sample, StreamIngest
from data_pipeline.stream.reorder import ReorderBuffer
from data_pipeline.validate import DataValidationError


def spec_of(**over: Any) -> dict[str, Any]:
    return {"timestamp": {"column": "t", "unit": "s"}, "dt": 0.1, "max_gap": 0.5,
            "observation": {"channels": ["temp"]}, "action": {"channels": ["heater"]}, **over}


def clean_log(n: int = 21) -> pd.DataFrame:
    t = np.round(np.arange(n) * 0.1, 6)
    return pd.DataFrame({"t": t, "temp": 20.0 + 10 * t, "heater": 1.0})


def run(tmp_path: Path, df: pd.DataFrame, **over: Any) -> TrajectoryStore:
    log, spec = tmp_path / "log.csv", tmp_path / "spec.yaml"
    df.to_csv(log, index=False)
    spec.write_text(yaml.safe_dump(spec_of(**over)))
    ingest_file("csv", str(log), str(spec), str(tmp_path / "s.zarr"), overwrite=True).close()
    return TrajectoryStore.open(str(tmp_path / "s.zarr"))


def swapped(df: pd.DataFrame, late_by: float) -> pd.DataFrame:
    """Row 6 written `late_by` seconds before row 5's time (after it in the file)."""
    df.loc[6, "t"] = df.loc[5, "t"] - late_by
    df.loc[6, "temp"] = 20.0 + 10 * df.loc[6, "t"]
    return df


def test_1ms_jitter_is_refused_by_default_naming_the_line_and_sort(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"log.csv: timestamp column 't' is decreasing at row 6 \(line 8\) "
                                                  r".*row 5 \(line 7\).*0.001 s earlier.*sort: true"):
        run(tmp_path, swapped(clean_log(), 0.001))


def test_jitter_tolerance_sorts_small_disorder_silently(tmp_path: Path) -> None:
    ep = run(tmp_path, swapped(clean_log(), 0.001), jitter=0.002).read_episode(0)
    np.testing.assert_allclose(ep.obs[:, 0], 20.0 + 10 * ep.time / 1e9, rtol=1e-6)  # linear: exact after sorting
    with pytest.raises(DataValidationError, match=r"jitter: 0.002 s.*sort: true"):  # more than the jitter
        run(tmp_path, swapped(clean_log(), 0.05), jitter=0.002)


def test_sort_true_takes_swapped_rows(tmp_path: Path) -> None:
    df = clean_log()
    df.iloc[[4, 9]] = df.iloc[[9, 4]].to_numpy()  # two whole rows swapped
    ep = run(tmp_path, df, sort=True).read_episode(0)
    assert ep.num_rows == 21
    np.testing.assert_allclose(ep.obs[:, 0], 20.0 + 10 * ep.time / 1e9, rtol=1e-6)


def duplicated(df: pd.DataFrame) -> pd.DataFrame:
    """Row 3 again, with another temperature (a second report of the same instant)."""
    extra = df.iloc[[3]].assign(temp=99.0)
    return pd.concat([df.iloc[:4], extra, df.iloc[4:]], ignore_index=True)


@pytest.mark.parametrize(("rule", "expected"), [("first", 23.0), ("last", 99.0), ("mean", (23.0 + 99.0) / 2)])
def test_duplicate_timestamp_rules(tmp_path: Path, rule: str, expected: float) -> None:
    ep = run(tmp_path, duplicated(clean_log()), duplicates=rule).read_episode(0)
    assert ep.num_rows == 21
    assert ep.obs[3, 0] == pytest.approx(expected)
    assert ep.obs[2, 0] == pytest.approx(22.0) and ep.obs[4, 0] == pytest.approx(24.0)


def test_duplicate_timestamp_error_names_both_lines(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"'t' is duplicate at row 4 \(line 6\) \(the same time as row 3 "
                                                  r"\(line 5\).*column 'temp'.*duplicates: first, last or mean"):
        run(tmp_path, duplicated(clean_log()))


def test_sensors_in_separate_rows_at_one_instant_merge_under_every_rule(tmp_path: Path) -> None:
    """Two sensors logged in their own rows with the same time: no conflict, each channel kept."""
    df = clean_log()
    df["heater"] = np.nan
    heater = pd.DataFrame({"t": df["t"], "temp": np.nan, "heater": 2.0})
    ep = run(tmp_path, pd.concat([df, heater]).sort_values("t", kind="stable")).read_episode(0)
    assert ep.num_rows == 21 and np.all(ep.action[:-1, 0] == 2.0)
    np.testing.assert_allclose(ep.obs[:, 0], 20.0 + 10 * ep.time / 1e9, rtol=1e-6)


def test_spec_rules_are_checked() -> None:
    with pytest.raises(SpecError, match="duplicates"):
        IngestSpec.from_dict(spec_of(duplicates="median"))
    with pytest.raises(SpecError, match="jitter"):
        IngestSpec.from_dict(spec_of(jitter=-0.001))
    spec = IngestSpec.from_dict(spec_of(sort=True, jitter=0.001, duplicates="mean"))
    assert (spec.sort, spec.jitter_ns, spec.duplicates) == (True, 1_000_000, "mean")


# ---------------------------------------------------------------------- the stream
def sample(t: float, seq: int, temp: float) -> Sample:
    return Sample(time_ns=round(t * 1e9), values=np.array([temp, np.nan]), seq=seq)


@pytest.mark.parametrize(("rule", "expected"), [("first", 1.0), ("last", 6.0), ("mean", 3.0)])
def test_reorder_buffer_applies_the_duplicate_rule(rule: str, expected: float) -> None:
    buf = ReorderBuffer(window=1.0, duplicates=rule)
    assert [buf.push(sample(0.1, i, v)) for i, v in enumerate([1.0, 2.0, 6.0])] == ["ok"] * 3
    (merged,) = buf.drain()
    assert merged.values[0] == pytest.approx(expected)


def test_reorder_buffer_refuses_a_conflicting_sample_under_error() -> None:
    buf = ReorderBuffer(window=1.0)
    assert buf.push(sample(0.1, 1, 1.0)) == "ok"
    assert buf.push(sample(0.1, 2, 3.0)) == "conflict"  # same time, another seq, the same channel
    assert buf.push(sample(0.1, 1, 1.0)) == "duplicate"  # the same seq stays a plain duplicate
    assert buf.drain()[0].values[0] == 1.0


def test_stream_with_duplicates(tmp_path: Path) -> None:
    """Same-timestamp samples with different seq: refused (counted, named) under `error`, merged under `mean`."""
    rows = [{"t": round(0.1 * i, 6), "seq": i, "temp": float(i), "heater": 0.0} for i in range(30)]
    rows.insert(11, {"t": 1.0, "seq": 100, "temp": 30.0})
    for rule in ("error", "mean"):
        spec = IngestSpec.from_dict(spec_of(duplicates=rule))
        store = TrajectoryStore.create(str(tmp_path / f"{rule}.zarr"), spec.schema({}))
        ingest = StreamIngest(spec, store, "test")
        ingest.feed(json.dumps(rows), arrival=0.0)
        ingest.finish()
        ep = TrajectoryStore.open(str(tmp_path / f"{rule}.zarr")).read_episode(0)
        at_1s = ep.obs[np.flatnonzero(ep.time == 1_000_000_000)[0], 0]
        if rule == "error":
            assert ingest.stats.rejected == 1 and "duplicates" in ingest.stats.errors[0] and at_1s == 10.0
        else:
            assert ingest.stats.rejected == 0 and at_1s == pytest.approx(20.0)
        store.close()
