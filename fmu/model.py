"""An FMU checked against its config before anything runs: fmpy reads the model description, and every
named variable must exist with the right causality, a real type and the expected unit.

An FMU holds compiled code: loading it runs that code, so an FMU runs because the user names it, like
a `module:function` hook (docs/security.md). What is checked here is only the model description.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_pipeline.errors import InputError
from fmu.config import FMUConfig


class FMUError(InputError):
    """An FMU that cannot serve its config: the message names the FMU, the variable and what was expected."""


@dataclass(frozen=True)
class Variable:
    """One FMU variable the config uses."""

    name: str
    value_reference: int
    causality: str
    unit: str
    """The unit the model description declares (its own or its declared type's); "" when none."""
    start: float | None


@dataclass(frozen=True)
class CheckedFMU:
    """The model description of an FMU and the config's variables resolved in it."""

    path: Path
    description: Any
    """fmpy's ModelDescription."""
    actions: list[Variable]
    observations: list[Variable]
    parameters: dict[str, Variable]
    start: dict[str, Variable]

    @property
    def model_identifier(self) -> str:
        return str(self.description.coSimulation.modelIdentifier)


def read_description(path: str | Path) -> Any:
    """fmpy's ModelDescription of the FMU at `path`; a missing file or a broken archive is named."""
    from fmpy import read_model_description

    path = Path(path)
    if not path.is_file():
        raise FMUError(f"{path}: no such FMU file")
    if not zipfile.is_zipfile(path):
        raise FMUError(f"{path}: not an FMU (an FMU is a zip archive holding modelDescription.xml)")
    try:
        return read_model_description(str(path))
    except Exception as err:  # fmpy raises plain Exceptions (and lxml errors) for a malformed description
        raise FMUError(f"{path}: cannot read its model description ({' '.join(str(err).split())})") from err


def _unit(variable: Any) -> str:
    if variable.unit:
        return str(variable.unit)
    declared = variable.declaredType
    return str(declared.unit) if declared is not None and getattr(declared, "unit", None) else ""


def _start(variable: Any) -> float | None:
    try:
        return None if variable.start is None else float(variable.start)
    except (TypeError, ValueError):
        return None


def check_fmu(path: str | Path, config: FMUConfig) -> CheckedFMU:
    """Check that the FMU at `path` can run `config`: FMI 2.0 co-simulation, every named variable present,
    of type Real, with the expected causality and unit. Raises FMUError naming the first problem."""
    path = Path(path)
    md = read_description(path)
    if md.fmiVersion != "2.0":
        raise FMUError(f"{path}: FMI version {md.fmiVersion}; expected an FMI 2.0 FMU")
    if md.coSimulation is None:
        raise FMUError(f"{path}: the FMU supports model exchange only; expected a co-simulation FMU (export it "
                       "with co-simulation, which brings its own solver)")
    by_name = {v.name: v for v in md.modelVariables}

    def resolve(name: str, key: str, causalities: tuple[str, ...]) -> Variable:
        variable = by_name.get(name)
        if variable is None:
            candidates = sorted(v.name for v in md.modelVariables if v.causality in causalities)
            raise FMUError(f"{path}: config key '{key}' names variable {name!r}, which the FMU does not have; "
                           f"expected one of its {'/'.join(causalities)} variables: {', '.join(candidates) or 'none'}")
        if variable.causality not in causalities:
            raise FMUError(f"{path}: config key '{key}': variable {name!r} has causality {variable.causality!r}; "
                           f"expected {' or '.join(repr(c) for c in causalities)}")
        if variable.type != "Real":
            raise FMUError(f"{path}: config key '{key}': variable {name!r} is of type {variable.type}; expected Real")
        return Variable(name, int(variable.valueReference), str(variable.causality), _unit(variable),
                        _start(variable))

    def unit_matches(variable: Variable, expected: str | None, key: str) -> Variable:
        if expected is not None and expected != variable.unit:
            found = variable.unit or "no unit"
            raise FMUError(f"{path}: config key '{key}': variable {variable.name!r} is in {found!r} in the FMU; "
                           f"the config expects {expected!r}")
        return variable

    actions = [unit_matches(resolve(a.name, f"actions.{i}.name", ("input",)), a.unit, f"actions.{i}.unit")
               for i, a in enumerate(config.actions)]
    observations = [unit_matches(resolve(o.name, f"observations.{i}.name", ("output",)), o.unit,
                                 f"observations.{i}.unit") for i, o in enumerate(config.observations)]
    parameters = {name: resolve(name, f"parameters.{name}", ("parameter",)) for name in config.parameters}
    start = {}
    for name in config.start:
        variable = resolve(name, f"start.{name}", ("output", "local"))
        if by_name[name].initial not in ("exact", "approx"):
            raise FMUError(f"{path}: config key 'start.{name}': variable {name!r} has initial="
                           f"{by_name[name].initial!r}, so its start value cannot be set; expected 'exact' or 'approx'")
        start[name] = variable
    return CheckedFMU(path, md, actions, observations, parameters, start)
