"""The oscillator FMU simulated through fmpy: correct physics, seeded episode randomization, reset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from fmu_helpers import RECORD_CONFIG, osc_fmu  # noqa: F401  (fixture)

from fmu.config import FMUConfig
from fmu.simulator import FMUSimulator


def test_a_free_oscillation_matches_the_closed_form(osc_fmu: Path) -> None:
    config = FMUConfig.model_validate({**RECORD_CONFIG, "start": {"x": 1.0, "v": 0.0}})
    with FMUSimulator(osc_fmu, config) as sim:
        assert np.allclose(sim.reset(), [1.0, 0.0])
        xs = np.array([sim.step(np.zeros(1))[0] for _ in range(40)])
    k, c, m = 4.0, 0.4, 1.0  # underdamped: x(t) = e^{-ζωt} (cos ω_d t + ζω/ω_d sin ω_d t)
    w, zeta = np.sqrt(k / m), c / (2 * np.sqrt(k * m))
    wd, t = w * np.sqrt(1 - zeta**2), 0.05 * np.arange(1, 41)
    expected = np.exp(-zeta * w * t) * (np.cos(wd * t) + zeta * w / wd * np.sin(wd * t))
    assert np.max(np.abs(xs - expected)) < 1e-6


def test_ranges_are_drawn_per_episode_and_seeded(osc_fmu: Path) -> None:
    config = FMUConfig.model_validate({**RECORD_CONFIG, "parameters": {"c": [0.1, 0.9]}})
    with FMUSimulator(osc_fmu, config) as sim:
        first = [sim.reset(np.random.default_rng(3)) for _ in range(2)]
        starts = np.array([sim.reset(np.random.default_rng(s)) for s in range(20)])
        assert np.array_equal(first[0], first[1])
        assert np.all((starts >= -1) & (starts <= 1)) and len(np.unique(starts[:, 0])) == 20
        # a reset after stepping starts over at t = 0 with the values given
        sim.reset(values={"x": 0.5, "v": 0.0, "c": 0.4})
        a = [sim.step(np.ones(1)) for _ in range(5)]
        sim.reset(values={"x": 0.5, "v": 0.0, "c": 0.4})
        assert sim.time == 0.0
        assert np.array_equal(a, [sim.step(np.ones(1)) for _ in range(5)])
