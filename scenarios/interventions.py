"""Interventions of a scenario spec: what changes in a scenario (actuator values over time, a policy in
closed loop, sensor offsets) and how it turns recorded actions and observations into the scenario's.

Also the number types and the located-error helper the spec's models share (scenarios.spec).
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, Field, PrivateAttr, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from data_pipeline.specfile import Spec

PosInt = Annotated[int, Field(strict=True, ge=1)]
NonNegInt = Annotated[int, Field(strict=True, ge=0)]
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
"""A finite number; an integer is fine, a string or a boolean is not."""


def error_at(loc: tuple[str | int, ...], value: Any, message: str) -> ValidationError:
    """A validation error at `loc` below the validator's own key, so a cross-field rule points at the exact
    key (pydantic prefixes the validator's location)."""
    error = PydanticCustomError("scenario_spec", message)
    return ValidationError.from_exception_data("ScenarioSpec", [{"type": error, "loc": loc, "input": value}])


def _increasing(points: tuple[tuple[int, float | None], ...]) -> tuple[tuple[int, float | None], ...]:
    steps = [s for s, _ in points]
    if steps != sorted(set(steps)):
        raise PydanticCustomError("schedule", "steps {steps}; expected strictly increasing steps", {"steps": steps})
    return points


ChannelNumbers = dict[str, Number]
Schedule = Annotated[tuple[tuple[NonNegInt, Number | None], ...], Field(min_length=1), AfterValidator(_increasing)]
_CHANNEL_PARTS = ("constant", "scale", "offset", "obs_offset")


class Intervention(Spec):
    """What changes in a scenario (its name is the spec's key). Unnamed actuator channels follow the
    recorded actions.

    Applied in this order per channel: `scale` and `offset` of the recorded action, or a `constant`,
    or a `schedule` of (step, value) breakpoints (value from that step on; null = recorded).
    A `policy` (SB3 zip or module:function) sets every channel from the imagined observations.
    `obs_offset` shifts the observed channels of the history the twin assimilates (a sensor offset).
    """

    constant: ChannelNumbers = {}
    schedule: dict[str, Schedule] = {}
    scale: ChannelNumbers = {}
    offset: ChannelNumbers = {}
    policy: Annotated[str, Field(strict=True, min_length=1)] | None = None
    obs_offset: ChannelNumbers = {}
    _name: str = PrivateAttr("")

    @model_validator(mode="before")
    @classmethod
    def _no_empty_parts(cls, data: Any) -> Any:
        if data is None:  # `factual:` with nothing after it is the factual replay, as `factual: {}`
            return {}
        if isinstance(data, dict):
            for part in _CHANNEL_PARTS:
                if part in data and data[part] in (None, {}):
                    raise error_at((part,), data[part], "empty; expected {channel: number, ...}")
        return data

    @model_validator(mode="after")
    def _one_rule_per_channel(self) -> Intervention:
        if self.policy and (self.constant or self.scale or self.offset or self.schedule):
            raise PydanticCustomError("intervention", "a policy sets every actuator; drop constant/schedule/"
                                                      "scale/offset")
        groups = {"constant": set(self.constant), "schedule": set(self.schedule),
                  "scale/offset": set(self.scale) | set(self.offset)}
        for ch in sorted(set().union(*groups.values())):
            kinds = [g for g, chans in groups.items() if ch in chans]
            if len(kinds) > 1:
                raise PydanticCustomError("intervention", "channel {ch} is set by {kinds}; expected one of "
                                          "constant, schedule or scale/offset per channel",
                                          {"ch": repr(ch), "kinds": str(kinds)})
        return self

    @property
    def name(self) -> str:
        return self._name

    @property
    def is_factual(self) -> bool:
        """Replays the recorded actions from the recorded state: the factual baseline."""
        changes = (self.constant, self.schedule, self.scale, self.offset, self.policy, self.obs_offset)
        return not any(changes)

    def apply(self, recorded: np.ndarray, channels: list[str]) -> np.ndarray:
        """Open-loop actions (H, A) from the recorded future actions (H, A); a policy's rows are set later."""
        out = np.array(recorded, dtype=np.float64, copy=True)
        for c, name in enumerate(channels):
            if name in self.scale or name in self.offset:
                out[:, c] = out[:, c] * self.scale.get(name, 1.0) + self.offset.get(name, 0.0)
            if name in self.constant:
                out[:, c] = self.constant[name]
            for step, value in self.schedule.get(name, ()):
                if step < len(out):
                    out[step:, c] = recorded[step:, c] if value is None else value
        return out

    def perturb(self, obs: np.ndarray, channels: list[str]) -> np.ndarray:
        """History observations (…, obs_dim) with the sensor offsets added."""
        if not self.obs_offset:
            return obs
        delta = np.array([self.obs_offset.get(c, 0.0) for c in channels], obs.dtype)
        return obs + delta
