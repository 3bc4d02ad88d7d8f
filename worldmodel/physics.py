"""The physics prior contract: what a user writes so the hybrid model can start from known physics.

A prior is user code named in a config as `module:Class` (it runs because the user names it, like
every other hook). The class is constructed with no arguments and offers:

- `state_names`: the names of its physical state variables, e.g. `["theta", "theta_dot"]`;
- `parameters`: named physical parameters (`PhysicalParameter`: initial guess, bounds, unit, learnable);
- `obs_to_state(obs)` and `state_to_obs(x)`: the maps between observation channels and state,
  `(B, obs_dim) <-> (B, state_dim)` (e.g. θ = atan2(sin θ, cos θ)); identity where they coincide;
- either `derivative(x, u, params) -> dx/dt` (continuous time, integrated over the store's dt by an
  ODE solver; must be written in torch so gradients reach the parameters), or
  `step(x, u, params, dt) -> x_next` (discrete time, e.g. a non-differentiable FMU simulation).

`u` is the action in physical units `(B, action_dim)`; `params` maps each parameter name to a
tensor broadcastable against the batch: `(B,)` when members carry their own values, or a scalar.
The full user guide is docs/hybrid.md.
"""

from __future__ import annotations

import inspect
import math
import sys
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from data_pipeline.errors import InputError
from data_pipeline.hooks import import_function


@dataclass(frozen=True)
class PhysicalParameter:
    """A named physical parameter of a prior: its initial guess, hard bounds, unit and whether it is learned."""

    init: float
    """The engineer's initial guess (what `physics_only` starts from)."""
    low: float = -math.inf
    """Lower bound: the identified value never leaves [low, high]."""
    high: float = math.inf
    unit: str = ""
    """Physical unit, reported beside the identified value (e.g. "m/s^2")."""
    learnable: bool = True
    """False freezes the parameter at `init` (a known constant)."""

    def __post_init__(self) -> None:
        if not self.low <= self.init <= self.high:
            raise InputError(f"physical parameter: init={self.init} is outside its bounds [{self.low}, {self.high}]")


@runtime_checkable
class PhysicsPrior(Protocol):
    """Known physics of a system (see the module docstring); `derivative` or `step` is implemented."""

    state_names: list[str]
    parameters: dict[str, PhysicalParameter]

    def obs_to_state(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, obs_dim) observation in physical units -> (B, state_dim) physical state."""
        ...

    def state_to_obs(self, x: torch.Tensor) -> torch.Tensor:
        """(B, state_dim) physical state -> (B, obs_dim) observation in physical units."""
        ...


def has_derivative(prior: object) -> bool:
    """The prior is continuous-time (`derivative`), to be integrated by an ODE solver."""
    return callable(getattr(prior, "derivative", None))


def has_step(prior: object) -> bool:
    """The prior is discrete-time (`step(x, u, params, dt)`)."""
    return callable(getattr(prior, "step", None))


def load_prior(spec: str) -> PhysicsPrior:
    """Construct the prior class named `module:Class`; one clear error if it breaks the contract."""
    module = spec.split(":", 1)[0]
    # A model file names its prior, and importing runs the module's top-level code: a module of Python's own
    # library (`this`, `antigravity` opens a browser, `idlelib.idle` a window) or a package's `__main__` (its
    # command line) is never a prior, so it is refused unimported.
    if module.split(".")[0] in sys.stdlib_module_names or "__main__" in module.split("."):
        raise InputError(f"physics prior {spec!r}: {module!r} is "
                         + ("a command line" if "__main__" in module.split(".") else "a module of Python's library")
                         + ", not a prior; expected the module:Class of a prior you installed (see docs/hybrid.md); "
                           "nothing was imported")
    cls = import_function(spec)
    # A model file names its prior: only a class with the prior's methods is constructed, never another callable.
    if not (inspect.isclass(cls) and all(callable(getattr(cls, m, None)) for m in ("obs_to_state", "state_to_obs"))
            and (has_derivative(cls) or has_step(cls))):
        raise InputError(f"physics prior {spec!r}: not a prior class (expected a class with obs_to_state, "
                         "state_to_obs and derivative or step; see docs/hybrid.md); nothing was called")
    try:
        prior = cls()
    except Exception as err:  # user code: report it as one line naming the class
        raise InputError(f"physics prior {spec!r}: constructing it failed: {err}") from err
    if not isinstance(prior, PhysicsPrior):
        raise InputError(f"physics prior {spec!r}: expected state_names, parameters, obs_to_state and state_to_obs "
                         "(see docs/hybrid.md)")
    if not (has_derivative(prior) or has_step(prior)):
        raise InputError(f"physics prior {spec!r}: expected a method derivative(x, u, params) or "
                         "step(x, u, params, dt) (see docs/hybrid.md)")
    for name, param in prior.parameters.items():
        if not isinstance(param, PhysicalParameter):
            raise InputError(f"physics prior {spec!r}: parameters[{name!r}] is a {type(param).__name__}; "
                             "expected worldmodel.physics.PhysicalParameter")
    return prior
