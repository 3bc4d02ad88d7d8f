"""Helpers of the FMU tests: the oscillator FMU built once per session (fmu/oscillator.py) and configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fmu.oscillator import build

RECORD_CONFIG = {
    "actions": [{"name": "u", "low": -2.0, "high": 2.0, "unit": "N"}],
    "observations": [{"name": "x", "unit": "m"}, {"name": "v"}],
    "start": {"x": [-1.0, 1.0], "v": [-1.0, 1.0]},
    "dt": 0.05,
    "max_episode_steps": 40,
}
"""Episodes of the oscillator at its true parameters (k=4, c=0.4, m=1) from random start states."""


def oscillator_fmu(tmp_path_factory: pytest.TempPathFactory, model_exchange_only: bool = False) -> Path:
    """The oscillator FMU, built the first time a session asks for it (tests/envs uses it too)."""
    name = "oscillator-me.fmu" if model_exchange_only else "oscillator.fmu"
    path = tmp_path_factory.getbasetemp() / "fmu-build" / name
    if not path.exists():
        build(path, model_exchange_only=model_exchange_only)
    return path


@pytest.fixture(scope="session")
def osc_fmu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The oscillator FMU (co-simulation), built once per session."""
    return oscillator_fmu(tmp_path_factory)


@pytest.fixture(scope="session")
def me_only_fmu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The oscillator as a model-exchange-only FMU (refused where co-simulation is needed)."""
    return oscillator_fmu(tmp_path_factory, model_exchange_only=True)


def write_config(path: Path, data: dict, **changes: object) -> Path:
    """Write an FMU config (RECORD_CONFIG-like `data` with `changes` applied) as YAML; returns its path."""
    path.write_text(yaml.safe_dump({**data, **changes}), encoding="utf-8")
    return path
