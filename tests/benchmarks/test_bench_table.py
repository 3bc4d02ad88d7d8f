"""BENCHMARKS.md stays one table per benchmark, latest run first: record_rows puts new rows at the top of theirs."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_common() -> ModuleType:
    """benchmarks/ is a folder of scripts, not a package: load its shared module by path."""
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "benchmarks" / "common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = load_common()


def row(date: str, what: str) -> list[str]:
    return [date, what, "2-core CPU", "`python benchmarks/bench_x.py`", "10", "5", "2.00", "≥ 1"]


def test_record_rows_creates_the_file_with_its_section(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    common.record_rows(out, "bench_data", [row("2026-12-01", "ingest")])
    text = out.read_text()
    assert text.startswith("# Benchmarks\n")
    section = text.split("## bench_data\n", 1)[1]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert lines[0] == "| date | measurement | machine | command | result | baseline | ratio | target |"
    assert lines[2].startswith("| 2026-12-01 | ingest |")


def test_record_rows_puts_the_new_run_first_and_leaves_other_sections_alone(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    common.record_rows(out, "bench_data", [row("2026-11-01", "old a"), row("2026-11-01", "old b")])
    common.record_rows(out, "bench_envs", [row("2026-11-02", "envs")])
    before = out.read_text()
    envs_before = before[before.index("## bench_envs"):]
    head_before = before[: before.index("## bench_data")]
    common.record_rows(out, "bench_data", [row("2026-12-01", "new a"), row("2026-12-01", "new b")])
    after = out.read_text()
    assert after[after.index("## bench_envs"):] == envs_before
    assert after[: after.index("## bench_data")] == head_before
    data = after[after.index("## bench_data"): after.index("## bench_envs")]
    measured = [line.split(" | ")[1] for line in data.splitlines() if line.startswith("| 20")]
    assert measured == ["new a", "new b", "old a", "old b"]
    assert after.replace("".join(common.table_row(row("2026-12-01", w)) for w in ("new a", "new b")), "") == before


def test_record_rows_adds_a_missing_section_with_its_own_columns(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    common.record_rows(out, "bench_data", [row("2026-11-01", "ingest")])
    before = out.read_text()
    columns = ("date", "machine", "command", "model", "h50")
    common.record_rows(out, "bench_models", [["2026-12-01", "cpu", "`x`", "ensemble", "0.19"]], columns)
    common.record_rows(out, "bench_models", [["2026-12-02", "cpu", "`x`", "rssm", "0.18"]], columns)
    after = out.read_text()
    assert after.startswith(before)
    section = after[after.index("## bench_models"):]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert lines[0] == "| date | machine | command | model | h50 |"
    assert [line.split(" | ")[3] for line in lines[2:]] == ["rssm", "ensemble"]
    with pytest.raises(ValueError, match="bench_models: a row has 2 cells"):
        common.record_rows(out, "bench_models", [["2026-12-03", "cpu"]], columns)


def test_benchmarks_md_has_one_section_per_benchmark() -> None:
    text = (ROOT / "BENCHMARKS.md").read_text()
    headings = [line for line in text.splitlines() if line.startswith("## ")]
    assert len(headings) == len(set(headings))
    assert "## bench_data" in headings and "## bench_anomaly" in headings
