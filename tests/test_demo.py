"""The README's main command, end to end with tiny budgets (`demo.py --quick`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_quick_prints_summary(tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    proc = subprocess.run([sys.executable, "demo.py", "--quick", "--out", str(tmp_path / "out")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = proc.stdout.split("twinworld demo summary", 1)[1]
    fields = dict(line.split(": ", 1) for line in summary.splitlines() if ": " in line)
    assert fields["model_uri"].startswith("models:/demo-pendulum-ensemble/")
    assert list(Path(fields["scenario_plots"]).glob("*.png"))
    assert "obs" in xr.open_zarr(fields["scenarios"]).data_vars
    assert Path(fields["policy"]).exists()
    float(fields["policy_real_return"])
    float(fields["random_policy_real_return"])
    # Lineage: data → model → scenarios → policy runs are all in the same MLflow store.
    import mlflow

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    stages = {r.data.tags.get("twinworld.stage") for r in mlflow.search_runs(search_all_experiments=True,
                                                                               output_format="list")}
    assert {"model", "scenarios", "policy"} <= stages
