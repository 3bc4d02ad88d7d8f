"""The FMU as a physics prior: the contract of worldmodel/physics.py, and calibration of its parameters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fmu_helpers import RECORD_CONFIG, osc_fmu, write_config  # noqa: F401  (fixture)

from data_pipeline.record import record
from fmu.config import FMUConfig
from fmu.simulator import FMUSimulator
from worldmodel.fmu_prior import FMUPrior, calibrate, main
from worldmodel.physics import has_step, load_prior

ROOT = Path(__file__).resolve().parents[2]
PRIOR_CONFIG = {**RECORD_CONFIG, "parameters": {"k": [1.0, 10.0], "c": [0.05, 2.0], "m": 1.0}}
"""Stiffness and damping to identify within wide bounds (truth: k=4 N/m, c=0.4 N.s/m); the mass is known."""


@pytest.fixture(scope="module")
def osc_store(osc_fmu: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Six episodes of the oscillator at its true parameters under random forcing."""
    root = tmp_path_factory.mktemp("osc-store")
    config = write_config(root / "record.yaml", RECORD_CONFIG)
    out = str(root / "osc.zarr")
    record(f"fmu:{osc_fmu}", 6, out, seed=0, progress=False, env_kwargs={"config": str(config)},
           start_time=0).close()
    return out


def test_load_prior_finds_the_fmu_through_a_one_line_module(osc_fmu: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_config(tmp_path / "prior.yaml", PRIOR_CONFIG)
    (tmp_path / "my_priors.py").write_text(
        f"from worldmodel.fmu_prior import fmu_prior\nOscPrior = fmu_prior({str(osc_fmu)!r}, {str(config)!r})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(ROOT)
    prior = load_prior("my_priors:OscPrior")
    assert has_step(prior) and prior.state_names == ["x", "v"]
    assert {n: (p.init, p.low, p.high, p.unit, p.learnable) for n, p in prior.parameters.items() if p.learnable} == {
        "k": (5.5, 1.0, 10.0, "N/m", True), "c": (1.025, 0.05, 2.0, "N.s/m", True)}
    mass = prior.parameters["m"]
    assert (mass.init, mass.unit, mass.learnable) == (1.0, "kg", False)


def test_step_simulates_each_row_with_its_own_state_and_parameters(osc_fmu: Path) -> None:
    prior = FMUPrior(osc_fmu, FMUConfig.model_validate(PRIOR_CONFIG))
    x = torch.tensor([[1.0, 0.0], [0.5, -0.2], [1.0, 0.0]])
    u = torch.tensor([[0.0], [1.0], [0.0]])
    k = torch.tensor([4.0, 4.0, 9.0])  # (B,): rows 0 and 2 differ only in stiffness
    nxt = prior.step(x, u, {"k": k, "c": torch.tensor(0.4), "m": torch.tensor(1.0)}, 0.05)
    assert nxt.shape == (3, 2) and nxt.dtype == torch.float32 and not nxt.requires_grad
    with FMUSimulator(osc_fmu, FMUConfig.model_validate({**RECORD_CONFIG, "start": {"x": 0.0, "v": 0.0}})) as sim:
        sim.reset(values={"x": 0.5, "v": -0.2})
        assert np.allclose(nxt[1].numpy(), sim.step(np.ones(1)), atol=1e-6)
    assert nxt[2, 1] < nxt[0, 1] < 0  # stiffer spring: pulled back faster
    prior.close()


def test_calibration_recovers_the_true_stiffness_and_damping(osc_fmu: Path, osc_store: str) -> None:
    prior = FMUPrior(osc_fmu, FMUConfig.model_validate(PRIOR_CONFIG))
    result = calibrate(prior, osc_store, horizon=20, windows=16)
    prior.close()
    assert result.values["k"] == pytest.approx(4.0, rel=0.02)
    assert result.values["c"] == pytest.approx(0.4, rel=0.02)
    assert result.initial == {"k": 5.5, "c": 1.025}
    assert result.lines()[0].startswith("k: 4") and result.lines()[0].endswith("N/m (from 5.5)")


def test_calibrate_command_prints_values_and_writes_a_new_config_only(osc_fmu: Path, osc_store: str,
                                                                      tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path / "prior.yaml", PRIOR_CONFIG)
    out = tmp_path / "calibrated.yaml"
    args = ["--fmu", str(osc_fmu), "--config", str(config), "--store", osc_store, "--windows", "8", "--out", str(out)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "k: 4" in printed and "N.s/m" in printed and f"config: {out}" in printed
    fixed = FMUConfig.model_validate(__import__("yaml").safe_load(out.read_text()))
    assert fixed.parameters["k"] == pytest.approx(4.0, rel=0.02) and isinstance(fixed.parameters["k"], float)
    before = out.read_text()
    with pytest.raises(ValueError, match="calibrated.yaml: exists; expected a new file"):
        main(args)
    assert out.read_text() == before


@pytest.mark.slow
def test_calibrate_runs_as_a_command(osc_fmu: Path, osc_store: str, tmp_path: Path) -> None:
    config = write_config(tmp_path / "prior.yaml", PRIOR_CONFIG)
    done = subprocess.run([sys.executable, "-m", "worldmodel.fmu_prior", "--fmu", str(osc_fmu), "--config",
                           str(config), "--store", osc_store, "--windows", "8"], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "\nk: 4" in done.stdout and "c: 0.4" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "worldmodel.fmu_prior", "--fmu", str(osc_fmu), "--config",
                          str(config), "--store", str(tmp_path / "none.zarr")], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}, timeout=300)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "none.zarr" in bad.stderr


def test_the_oscillator_builder_runs_as_a_command_and_keeps_existing_files(tmp_path: Path) -> None:
    out = tmp_path / "osc.fmu"
    cmd = [sys.executable, "-m", "fmu.oscillator", str(out)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"fmu: {out}\n"
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 1 and "exists; expected a new path" in again.stderr
