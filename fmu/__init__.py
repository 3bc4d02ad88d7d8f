"""FMUs (FMI 2.0 co-simulation units exported from Modelica, Simulink, Dymola, OpenModelica) as simulators:
the config that maps an FMU to actions and observations, the checks of an FMU against it, and the
stepping simulator behind `FMU-v0` (envs/fmu.py) and the FMU physics prior (worldmodel/fmu_prior.py).
Read through fmpy; docs/fmu.md is the guide. Imports only data_pipeline.

An FMU holds compiled code: it runs because the user names it, like a `module:function` hook.

| module | job |
| --- | --- |
| `config.py` | `FMUConfig`: actions, observations, parameters and start values (fixed or ranges), `dt`, reward |
| `model.py` | `check_fmu`: co-simulation required, every named variable present with its causality, type, unit |
| `simulator.py` | `FMUSimulator`: reset with drawn or given values, step by `dt`; failures name the FMU's message |
| `oscillator.py` | `python -m fmu.oscillator OUT.fmu`: compile the damped oscillator example (`oscillator.c`) |
"""

from fmu.config import FMUConfig, load_fmu_config
from fmu.model import CheckedFMU, FMUError, Variable, check_fmu
from fmu.simulator import FMUSimulator

__all__ = ["CheckedFMU", "FMUConfig", "FMUError", "FMUSimulator", "Variable", "check_fmu", "load_fmu_config"]
