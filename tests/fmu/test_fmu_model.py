"""The FMU config and its check against a real FMU: each bad input is one clear error naming the variable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fmu_helpers import RECORD_CONFIG, me_only_fmu, osc_fmu  # noqa: F401  (fixtures)

from data_pipeline.specfile import SpecError, validate_spec
from fmu.config import FMUConfig
from fmu.model import FMUError, check_fmu
from fmu.simulator import FMUSimulator


def config(**changes: object) -> FMUConfig:
    return validate_spec(FMUConfig, {**RECORD_CONFIG, **changes}, "osc.yaml")


def test_the_fmu_description_gives_units_and_references(osc_fmu: Path) -> None:
    checked = check_fmu(osc_fmu, config())
    assert [(v.name, v.unit) for v in checked.observations] == [("x", "m"), ("v", "m/s")]
    assert [(v.name, v.unit, v.causality) for v in checked.actions] == [("u", "N", "input")]
    assert checked.model_identifier == "oscillator"


def test_a_missing_input_is_named_with_the_inputs_there_are(osc_fmu: Path) -> None:
    with pytest.raises(FMUError, match=r"actions\.0\.name' names variable 'force'.*does not have.*: u$"):
        check_fmu(osc_fmu, config(actions=[{"name": "force", "low": -1, "high": 1}]))


def test_a_missing_output_is_named(osc_fmu: Path) -> None:
    with pytest.raises(FMUError, match=r"observations\.1\.name' names variable 'speed'.*: v, x$"):
        check_fmu(osc_fmu, config(observations=[{"name": "x"}, {"name": "speed"}]))


def test_a_variable_of_the_wrong_causality_is_named(osc_fmu: Path) -> None:
    with pytest.raises(FMUError, match=r"observations\.0\.name': variable 'k' has causality 'parameter'; "
                                       r"expected 'output'"):
        check_fmu(osc_fmu, config(observations=[{"name": "k"}]))
    with pytest.raises(FMUError, match=r"parameters\.x': variable 'x' has causality 'output'; expected 'parameter'"):
        check_fmu(osc_fmu, config(parameters={"x": 1.0}))


def test_a_wrong_unit_is_named_with_both_units(osc_fmu: Path) -> None:
    with pytest.raises(FMUError, match=r"observations\.0\.unit': variable 'x' is in 'm' in the FMU; the config "
                                       r"expects 'cm'"):
        check_fmu(osc_fmu, config(observations=[{"name": "x", "unit": "cm"}]))


def test_a_model_exchange_only_fmu_is_refused(me_only_fmu: Path) -> None:
    with pytest.raises(FMUError, match="model exchange only; expected a co-simulation FMU"):
        check_fmu(me_only_fmu, config())


def test_a_file_that_is_not_an_fmu_is_named(tmp_path: Path) -> None:
    bogus = tmp_path / "plant.fmu"
    bogus.write_text("not a zip")
    with pytest.raises(FMUError, match="plant.fmu: not an FMU"):
        check_fmu(bogus, config())
    with pytest.raises(FMUError, match="no such FMU file"):
        check_fmu(tmp_path / "absent.fmu", config())


def test_an_fmu_that_fails_to_initialize_is_named_with_its_values_and_message(osc_fmu: Path) -> None:
    with FMUSimulator(osc_fmu, config(parameters={"m": 0.0})) as sim, \
            pytest.raises(FMUError, match=r"failed to initialize with m=0.*fmi2ExitInitializationMode.*"
                                          r"the FMU said: m must be > 0"):
        sim.reset(np.random.default_rng(0))


@pytest.mark.parametrize(("changes", "message"), [
    ({"actions": [{"name": "u", "low": 1, "high": -1}]}, r"key 'actions\.0'.*low \(1\.0\) must be below high"),
    ({"start": {"x": [1.0, -1.0]}}, r"key 'start'.*x: range \[1\.0, -1\.0\] must have low <= high"),
    ({"dt": 0}, r"key 'dt' is 0; input should be greater than 0"),
    ({"observation": []}, r"key 'observation' is not a known key"),
    ({"observations": [{"name": "x"}, {"name": "x"}]}, r"observations name a variable twice"),
])
def test_config_errors_name_the_file_and_key(changes: dict, message: str) -> None:
    with pytest.raises(SpecError, match=f"osc.yaml: {message}" if "known key" in message else message):
        config(**changes)
