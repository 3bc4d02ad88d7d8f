"""The FMU config (`--fmu-config F.yaml`): which FMU inputs are actions, which outputs are observations,
the parameters and start values (fixed, or a range drawn per episode), the communication step and an
optional reward / termination formula.

    actions:                # FMU inputs the agent drives, in this order
      - {name: u, low: -2, high: 2}
    observations:           # FMU outputs the agent sees, in this order; units come from the FMU
      - {name: x, unit: m}  # `unit` is optional: given, it must match the FMU's
      - {name: v}
    parameters: {k: 4.0, c: [0.3, 0.5]}   # causality="parameter"; [low, high]: uniform per episode
    start: {x: [-1.0, 1.0], v: 0.0}       # variables with a start value (states), same forms
    dt: 0.05                              # communication step, seconds
    max_episode_steps: 200
    reward: envs.rewards:my_reward        # optional f(obs, action, next_obs) -> (B,), batched numpy
    termination: null
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, FiniteFloat, field_validator, model_validator

from data_pipeline.specfile import Spec, load_spec_file

Value = FiniteFloat | tuple[FiniteFloat, FiniteFloat]
"""A fixed value, or a [low, high] range drawn uniformly at every reset (finite: a NaN or an infinity set in an
FMU, or bounding an action space, would only show up as NaN rows in the recorded store)."""


class ActionChannel(Spec):
    """An FMU input the agent sets before every step, bounded by the action space."""

    name: str = Field(min_length=1)
    """The FMU variable's name (causality "input")."""
    low: FiniteFloat
    """Smallest action value (the action space's bound)."""
    high: FiniteFloat
    """Largest action value."""
    unit: str | None = None
    """Expected unit; given, it must equal the FMU's declared unit."""

    @model_validator(mode="after")
    def _ordered(self) -> ActionChannel:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        return self


class ObservationChannel(Spec):
    """An FMU output read after every step."""

    name: str = Field(min_length=1)
    """The FMU variable's name (causality "output")."""
    unit: str | None = None
    """Expected unit; given, it must equal the FMU's declared unit."""


class FMUConfig(Spec):
    """How an FMU becomes an environment (see the module docstring)."""

    actions: list[ActionChannel] = Field(min_length=1)
    """FMU inputs the agent drives, in the order of the action vector."""
    observations: list[ObservationChannel] = Field(min_length=1)
    """FMU outputs the agent sees, in the order of the observation vector."""
    parameters: dict[str, Value] = Field(default_factory=dict)
    """Parameter values set before initialization: a number, or [low, high] drawn at every reset."""
    start: dict[str, Value] = Field(default_factory=dict)
    """Start values (e.g. of states) set before initialization: a number, or [low, high] per reset."""
    dt: FiniteFloat = Field(gt=0)
    """Communication step in seconds: the FMU advances this much per env step."""
    max_episode_steps: int = Field(default=200, ge=1)
    """Episodes are truncated after this many steps."""
    reward: str | None = None
    """`module:function` computing the reward from (obs, action, next_obs), batched; none: reward 0."""
    termination: str | None = None
    """`module:function` computing termination from (obs, action, next_obs), batched; none: never."""

    @field_validator("parameters", "start")
    @classmethod
    def _ranges_ordered(cls, values: dict[str, Value]) -> dict[str, Value]:
        for name, value in values.items():
            if isinstance(value, tuple) and not value[0] <= value[1]:
                raise ValueError(f"{name}: range [{value[0]}, {value[1]}] must have low <= high")
        return values

    @model_validator(mode="after")
    def _distinct(self) -> FMUConfig:
        for what, names in (("actions", [a.name for a in self.actions]),
                            ("observations", [o.name for o in self.observations])):
            if len(set(names)) != len(names):
                raise ValueError(f"{what} name a variable twice ({', '.join(names)}); expected distinct names")
        return self


def load_fmu_config(path: str | Path) -> FMUConfig:
    """Read and validate an FMU config file; errors are one line naming the file and key."""
    return load_spec_file(FMUConfig, path)
