"""One FMU instance that resets with drawn start values and parameters and steps by the config's `dt`.

The FMU is extracted into a private temporary folder (removed on `close`), instantiated once through
fmpy and re-initialized with `fmi2Reset` at every episode, which is far cheaper than a new instance.
Messages the FMU logs are kept (the last few) and quoted when a call fails.
"""

from __future__ import annotations

import collections
import shutil
import tempfile
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fmu.config import FMUConfig, Value
from fmu.model import CheckedFMU, FMUError, check_fmu


def draw(values: Mapping[str, Value], rng: np.random.Generator) -> dict[str, float]:
    """Each value as a number: a fixed one as is, a [low, high] range drawn uniformly."""
    return {name: float(rng.uniform(v[0], v[1])) if isinstance(v, tuple) else float(v) for name, v in values.items()}


class FMUSimulator:
    """An FMU stepped as a discrete-time system: `reset` -> observation, `step(action)` -> observation."""

    def __init__(self, path: str | Path, config: FMUConfig, instance_name: str = "twinworld") -> None:
        from fmpy import extract
        from fmpy.simulation import instantiate_fmu

        self.config = config
        self.fmu: CheckedFMU = check_fmu(path, config)
        self.time = 0.0
        self.messages: collections.deque[str] = collections.deque(maxlen=5)
        self._initialized = False
        self._unzipdir = tempfile.mkdtemp(prefix="twinworld-fmu-")
        self._cleanup = weakref.finalize(self, shutil.rmtree, self._unzipdir, True)
        extract(str(self.fmu.path), self._unzipdir)
        self._action_refs = [v.value_reference for v in self.fmu.actions]
        self._obs_refs = [v.value_reference for v in self.fmu.observations]
        self._refs = {**{n: v.value_reference for n, v in self.fmu.parameters.items()},
                      **{n: v.value_reference for n, v in self.fmu.start.items()}}
        try:
            self._instance: Any = instantiate_fmu(self._unzipdir, self.fmu.description, fmi_type="CoSimulation",
                                                  logger=self._log)
        except Exception as err:  # a missing binary for this platform, or fmi2Instantiate returned NULL
            self._cleanup()
            raise FMUError(f"{self.fmu.path}: instantiating the FMU failed ({err}){self._said()}") from err
        self._instance.instanceName = instance_name

    def _log(self, env: Any, instance: Any, status: int, category: Any, message: Any) -> None:
        text = message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)
        self.messages.append(" ".join(text.split()))

    def _said(self) -> str:
        return f"; the FMU said: {' | '.join(self.messages)}" if self.messages else ""

    def settable(self, name: str) -> bool:
        """Whether `name` is a parameter or start value of the config (set at `reset`)."""
        return name in self._refs

    def reset(self, rng: np.random.Generator | None = None, values: Mapping[str, float] | None = None) -> np.ndarray:
        """Re-initialize the FMU at time 0: the config's parameters and start values (ranges drawn from `rng`),
        then `values` (name -> number, overriding them; each a configured parameter or start value).
        Returns the observation (obs_dim,) float64. An FMU that fails to initialize is named with the values."""
        rng = rng if rng is not None else np.random.default_rng()
        chosen = {**draw(self.config.parameters, rng), **draw(self.config.start, rng), **(values or {})}
        unknown = sorted(set(chosen) - set(self._refs))
        if unknown:
            raise FMUError(f"{self.fmu.path}: {', '.join(unknown)} is not a parameter or start value of the config")
        from fmpy.fmi1 import FMICallException

        instance = self._instance
        self.messages.clear()
        try:
            if self._initialized:
                instance.reset()
            self._initialized = False
            instance.setupExperiment(startTime=0.0)
            if chosen:
                instance.setReal([self._refs[n] for n in chosen], list(chosen.values()))
            instance.enterInitializationMode()
            instance.exitInitializationMode()
        except FMICallException as err:
            shown = ", ".join(f"{n}={v:g}" for n, v in chosen.items())
            raise FMUError(f"{self.fmu.path}: the FMU failed to initialize with {shown or 'its defaults'} "
                           f"({err}){self._said()}; expected values it accepts") from err
        self._initialized = True
        self.time = 0.0
        return np.asarray(instance.getReal(self._obs_refs), np.float64)

    def step(self, action: np.ndarray, dt: float | None = None) -> np.ndarray:
        """Set the inputs to `action` (action_dim,), advance `dt` (default: the config's); the observation
        (obs_dim,) float64."""
        from fmpy.fmi1 import FMICallException

        if not self._initialized:
            raise RuntimeError("FMUSimulator.step before reset")
        step = self.config.dt if dt is None else float(dt)
        try:
            self._instance.setReal(self._action_refs, [float(a) for a in np.asarray(action).reshape(-1)])
            self._instance.doStep(currentCommunicationPoint=self.time, communicationStepSize=step)
        except FMICallException as err:
            raise FMUError(f"{self.fmu.path}: the FMU failed to step at t={self.time:g} s ({err}){self._said()}") \
                from err
        self.time += step
        return np.asarray(self._instance.getReal(self._obs_refs), np.float64)

    def close(self) -> None:
        """Terminate and free the instance, remove the extracted files; safe to call twice."""
        instance, self._instance = getattr(self, "_instance", None), None
        if instance is not None:
            try:
                if self._initialized:
                    instance.terminate()
                instance.freeInstance()
            except Exception:  # closing a failed FMU must not hide the error that closed it
                pass
        self._initialized = False
        self._cleanup()

    def __enter__(self) -> FMUSimulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
