"""`benchmarks/bench_envs.py` runs end to end (tiny sizes) and measures both uncertainty paths beside the simulators."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_bench_envs_runs_and_records(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_envs.py"), "--num-envs", "2",
                          "--precision", "32-true", "--seconds", "0.05", "--repeats", "1", "--threads", "1",
                          "--async-max", "0", "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    table = out.read_text()
    for measured in ("num_envs 2, uncertainty none", "num_envs 2, uncertainty elites",
                     "HalfCheetah-v5 (gymnasium sync vector env)", "Pendulum-v1 (gymnasium sync vector env)"):
        assert measured in table
