"""Fixtures of the FMU tests: the oscillator FMU compiled once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from fmu_helpers import oscillator_fmu


@pytest.fixture(scope="session")
def osc_fmu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return oscillator_fmu(tmp_path_factory)


@pytest.fixture(scope="session")
def me_only_fmu(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return oscillator_fmu(tmp_path_factory, model_exchange_only=True)
