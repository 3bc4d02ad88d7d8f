"""An FMU config (`--fmu-config`, fmu/config.py) with a NaN or an infinity is refused in one line naming the
file and key: before, `start: {x: .inf}` recorded NaN observations from the first step, `dt: .inf` and
infinite action bounds were accepted, and nothing named the config as the cause."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from data_pipeline.specfile import SpecError
from fmu.config import load_fmu_config

GOOD = {"actions": [{"name": "u", "low": -2.0, "high": 2.0}], "observations": [{"name": "x"}, {"name": "v"}],
        "dt": 0.05, "parameters": {"k": [3.0, 5.0]}, "start": {"x": 0.5}}


@pytest.mark.parametrize(("changes", "key", "value"), [
    ({"dt": float("inf")}, "dt", "inf"),
    ({"actions": [{"name": "u", "low": float("-inf"), "high": 2.0}]}, "actions.0.low", "-inf"),
    ({"actions": [{"name": "u", "low": -2.0, "high": float("inf")}]}, "actions.0.high", "inf"),
    ({"parameters": {"k": float("nan")}}, "parameters.k", "nan"),
    ({"parameters": {"k": [0.0, float("inf")]}}, "parameters.k", "inf"),
    ({"start": {"x": float("-inf")}}, "start.x", "-inf"),
])
def test_a_nan_or_infinity_in_an_fmu_config_is_named(tmp_path: Path, changes: dict, key: str, value: str) -> None:
    path = tmp_path / "plant.yaml"
    path.write_text(yaml.safe_dump({**GOOD, **changes}), encoding="utf-8")
    with pytest.raises(SpecError, match=rf"plant.yaml: key '{key}[.\w]*' is [^;]*{value}"):
        load_fmu_config(path)


def test_finite_values_still_load(tmp_path: Path) -> None:
    path = tmp_path / "plant.yaml"
    path.write_text(yaml.safe_dump(GOOD), encoding="utf-8")
    config = load_fmu_config(path)
    assert config.parameters == {"k": (3.0, 5.0)} and config.start == {"x": 0.5}
