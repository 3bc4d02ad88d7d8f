"""What every benchmark script shares: a description of the machine and its table in BENCHMARKS.md.

BENCHMARKS.md holds one `## bench_X` section per benchmark, each with one table per kind of measurement,
latest run first (the project's rule: a tidy table per benchmark, not an append-only log). `record_rows`
puts a run's rows at the top of its benchmark's table and leaves every other byte of the file as it was.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path

from data_pipeline.store.files import atomic_write

COLUMNS = ("date", "measurement", "machine", "command", "result", "baseline", "ratio", "target")
INTRO = (
    "# Benchmarks\n\nOne section per benchmark script, one table per kind of measurement, latest run first;"
    " `ratio` is the result over its baseline measured side by side in the same run (higher is better)."
    " Rerun the command on the machine named to reproduce; the scripts record their rows here.\n"
)


def machine(versions: str) -> str:
    """Cores, CPU model, current load (the machine may be shared), Python and the given versions."""
    cpu = platform.processor() or platform.machine()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()[0]
    return f"{os.cpu_count()}-core {cpu} (load avg {load:.1f}), Python {platform.python_version()}, {versions}"


def table_row(cells: Sequence[str]) -> str:
    """One Markdown table line; a `|` or newline inside a cell would break the table, so they are escaped."""
    return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |\n"


def table_header(columns: Sequence[str]) -> str:
    return table_row(columns) + "| " + " | ".join("---" for _ in columns) + " |\n"


def record_rows(out: Path, benchmark: str, rows: Sequence[Sequence[str]], columns: Sequence[str] = COLUMNS) -> None:
    """Put `rows` at the top of `benchmark`'s table with these `columns` in `out` (BENCHMARKS.md).

    The section is `## {benchmark}`; within it the first table whose header is `columns` gets the rows
    (in the order given) right under its header. A missing file starts with the intro, a missing section
    is added at the end of the file, a section without such a table gets one at its end. Nothing else in
    the file changes, and the file is replaced atomically, so an interrupted run never leaves half a table.
    """
    for row in rows:
        if len(row) != len(columns):
            raise ValueError(f"{benchmark}: a row has {len(row)} cells, its table {len(columns)} columns "
                             f"({', '.join(columns)}): {list(row)}")
    body = "".join(table_row(r) for r in rows)
    text = out.read_text() if out.exists() else INTRO
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    heading = f"## {benchmark}"
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        lines.append(f"\n{heading}\n\n{table_header(columns)}{body}")
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        header = table_row(columns)
        at = next((i + 2 for i in range(start + 1, end - 1) if lines[i] == header and lines[i + 1].startswith("|")),
                  None)
        if at is not None:
            lines.insert(at, body)
        else:
            while end > start + 1 and not lines[end - 1].strip():  # the new table goes after the section's text
                end -= 1
            lines.insert(end, f"\n{table_header(columns)}{body}")
    new = "".join(lines)
    atomic_write(out, lambda tmp: tmp.write_text(new))
