"""What every benchmark script shares: a description of the machine and the BENCHMARKS.md table."""

from __future__ import annotations

import os
import platform
from pathlib import Path

HEADER = (
    "# Benchmarks\n\nOne row per measurement; `ratio` is the result over its baseline"
    " (higher is better). Rerun the command on the machine named to reproduce.\n\n"
    "| date | benchmark | machine | command | result | baseline | ratio | target |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
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


def append_rows(out: Path, rows: list[list[str]]) -> None:
    """Append table rows to BENCHMARKS.md, creating it with its header if missing."""
    if not out.exists():
        out.write_text(HEADER)
    with out.open("a") as f:
        for row in rows:
            f.write("| " + " | ".join(row) + " |\n")
