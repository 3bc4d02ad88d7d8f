"""The ingest spec: what a sensor log's columns mean and how they become episodes on a fixed step.

    spec = IngestSpec.from_yaml("configs/ingest/example_spec.yaml")
    schema = spec.schema(provenance={...})

pydantic v2 models on `data_pipeline.specfile.Spec`, read with `load_spec_file` (duplicate YAML keys
are refused there). The rules that tie keys together (units per channel, a discrete action's single
held column, fill_value for `nan_policy: fill`, unique channel names) are validators, so every error
is one `SpecError` line naming the file, the key path, the value found and what was expected. The
keys are documented, with a full example, in docs/ingest.md.
"""

from __future__ import annotations

import json
import os
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import numpy as np
from gymnasium import spaces
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from data_pipeline.schema import StoreSchema
from data_pipeline.spaces import space_to_dict
from data_pipeline.specfile import Spec, SpecError, load_spec_file, validate_spec

TimeUnit = Literal["s", "ms", "us", "ns", "datetime"]
Resample = Literal["interpolate", "hold"]
NanPolicy = Literal["error", "drop", "fill", "interpolate"]
RESAMPLE_METHODS: tuple[str, ...] = get_args(Resample)
NAN_POLICIES: tuple[str, ...] = get_args(NanPolicy)
Duplicates = Literal["error", "first", "last", "mean"]
DUPLICATE_RULES: tuple[str, ...] = get_args(Duplicates)
GROUPS = ("observation", "action", "reward")


class _Missing:
    """Stands for a key that is absent, so an error reads "key 'action.n' is missing; expected ..."."""

    def __repr__(self) -> str:
        return "missing"


def _invalid(loc: tuple[str | int, ...], found: Any, expected: str) -> ValidationError:
    """A validation error at the key path `loc` (relative to the model raising it), for cross-field rules."""
    error = PydanticCustomError("ingest_spec", f"expected {expected}")
    return ValidationError.from_exception_data("IngestSpec", [InitErrorDetails(type=error, loc=loc, input=found)])


def _positive(value: float) -> float:
    if not value > 0:
        raise PydanticCustomError("positive", "expected a number of seconds > 0")
    return value


def _not_negative(value: float) -> float:
    if not value >= 0:
        raise PydanticCustomError("not_negative", "expected a number of seconds >= 0")
    return value


def _unit_text(value: Any) -> Any:
    """A unit may be written as a bare number (`unit: 1`); YAML reads it as a number."""
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else value


Number = Annotated[float, Field(strict=True)]
"""An int or a float; never a bool or text."""
Integer = Annotated[int, Field(strict=True)]
Seconds = Annotated[float, Field(strict=True), AfterValidator(_positive)]
Unit = Annotated[str, BeforeValidator(_unit_text)]
Tolerance = Annotated[float, Field(strict=True), AfterValidator(_not_negative)]
Flag = Annotated[bool, Field(strict=True)]


class _SpecModel(Spec):
    """The ingest spec's models: field docstrings are their descriptions; `key: null` means the key is
    absent (as the YAML `key:` with nothing after it), so defaults apply and required keys are missing."""

    model_config = ConfigDict(use_attribute_docstrings=True)

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class ChannelSpec(_SpecModel):
    """One column of the log as a named channel; in YAML a mapping, or just the column name."""

    column: str
    """Column in the log."""
    name: str = ""
    """Channel name in the store (defaults to the column name)."""
    unit: Unit = ""
    """Physical unit, e.g. 'degC', 'bar', 'm/s'."""
    low: Number | None = None
    """Lower bound of the Gymnasium Box (and of valid readings); None for -inf."""
    high: Number | None = None
    """Upper bound of the Gymnasium Box (and of valid readings); None for +inf."""

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"column": data, "name": data}
        if isinstance(data, dict) and data.get("name") is None and isinstance(data.get("column"), str):
            return {**data, "name": data["column"]}
        return data

    @model_validator(mode="after")
    def _bounds(self) -> ChannelSpec:
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise _invalid(("high",), self.high, f"high > low (low is {self.low})")
        return self


class GroupSpec(_SpecModel):
    """The observation group: its channels and how they are put onto the fixed step."""

    channels: list[ChannelSpec] = Field(min_length=1)
    """The group's channels, at least one."""
    resample: Resample = "interpolate"
    """'interpolate' (linear in time) or 'hold' (the last reading, e.g. setpoints and commands)."""
    max_gap: Seconds | None = None
    """Seconds a channel may go without a reading; a longer gap splits the episode (None: the spec's)."""


class ActionSpec(_SpecModel):
    """The action group: a Box of channels, or one integer column of a Discrete action."""

    type: Literal["box", "discrete"] = "box"
    """'box' (continuous) or 'discrete' (one integer column)."""
    n: Integer | None = None
    """Discrete actions: number of actions."""
    start: Integer = 0
    """Discrete actions: the smallest action value."""
    channels: list[ChannelSpec] = Field(min_length=1)
    """The actuator channels, at least one."""
    resample: Resample = "hold"
    """'hold' (a command holds until the next one) or 'interpolate'."""
    max_gap: Seconds | None = None
    """Seconds a channel may go without a reading; a longer gap splits the episode (None: the spec's)."""

    @model_validator(mode="after")
    def _discrete(self) -> ActionSpec:
        if self.type != "discrete":
            return self
        if self.n is None:
            raise _invalid(("n",), _Missing(), "the number of discrete actions, an integer >= 1 (type: discrete)")
        if self.n < 1:
            raise _invalid(("n",), self.n, "an integer >= 1")
        if len(self.channels) != 1:
            raise _invalid(("channels",), [c.column for c in self.channels],
                           "exactly one integer column for a discrete action")
        if self.resample != "hold":
            raise _invalid(("resample",), self.resample, "'hold' (discrete action)")
        return self


class RewardSpec(_SpecModel):
    """The reward: one column, stored as the channel 'reward'."""

    column: str
    """The reward column in the log."""
    unit: Unit = ""
    """Unit of the reward, e.g. 'EUR/s'."""
    resample: Resample = "hold"
    """'hold' (the default) or 'interpolate'."""
    max_gap: Seconds | None = None
    """Seconds the reward may go without a reading; a longer gap splits the episode (None: the spec's)."""

    @cached_property
    def channels(self) -> list[ChannelSpec]:
        return [ChannelSpec(column=self.column, name="reward", unit=self.unit)]


class TimestampSpec(_SpecModel):
    """The timestamp column and how to read it."""

    column: str
    """The timestamp column."""
    unit: TimeUnit = "s"
    """'s', 'ms', 'us', 'ns' for numbers, or 'datetime' for date-time text (naive times are UTC)."""
    format: str | None = None
    """strftime format of date-time text (unit: datetime); None for ISO 8601."""

    @model_validator(mode="after")
    def _format_needs_datetime(self) -> TimestampSpec:
        if self.format and self.unit != "datetime":
            raise _invalid(("format",), self.format, f"no format with timestamp.unit {self.unit!r}, or unit: datetime")
        return self


class IngestSpec(_SpecModel):
    """What a log's columns mean and how they become episodes on a fixed step. See docs/ingest.md."""

    timestamp: TimestampSpec
    """The timestamp column and its unit."""
    dt: Seconds
    """The store's fixed step, in seconds."""
    observation: GroupSpec
    """The observation channels."""
    action: ActionSpec
    """The action channels (Box) or column (Discrete)."""
    reward: RewardSpec | None = None
    """One column, stored as the channel 'reward'; None stores a reward of 0 (noted in the provenance)."""
    episode_column: str | None = None
    """Column naming the episode of each row; None for one episode per file (split at gaps)."""
    max_gap: Seconds | None = None
    """Default max_gap of the groups, in seconds; None for 5 * dt."""
    min_transitions: Integer = Field(1, ge=1)
    """Shortest episode kept, in transitions on the dt grid."""
    short_episodes: Literal["error", "drop"] = "error"
    """'error' or 'drop': what to do with a piece shorter than min_transitions."""
    nan_policy: NanPolicy = "error"
    """A written NaN/Inf: 'error', 'drop' (the row), 'fill' (fill_value) or 'interpolate' (in time)."""
    fill_value: Number | None = None
    """The value of a written NaN/Inf under nan_policy: fill."""
    sort: Flag = False
    """Sort each episode's rows by time before the checks; false refuses a row earlier than an earlier row
    by more than `jitter` (naming its line). The stream always sorts (its reorder buffer)."""
    duplicates: Duplicates = "error"
    """A channel reported twice at one instant: 'error', or keep the 'first' / 'last' reading, or their 'mean'."""
    jitter: Tolerance = 0.0
    """Clock jitter in seconds: a row earlier than an earlier row of its episode by at most this is sorted
    into place even without `sort` (it never merges rows at different times)."""
    _raw: dict[str, Any] = PrivateAttr(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_raw(cls, data: Any, handler: ModelWrapValidatorHandler[IngestSpec]) -> IngestSpec:
        spec = handler(data)
        if isinstance(data, dict):
            spec._raw = json.loads(json.dumps(data, default=str))
        return spec

    @model_validator(mode="after")
    def _cross_checks(self) -> IngestSpec:
        if self.nan_policy == "fill" and self.fill_value is None:
            raise _invalid(("fill_value",), _Missing(), "a number (nan_policy: fill)")
        seen: dict[str, str] = {}
        places = [(f"{g}.channels.{i}.name", ch.name) for g, grp in (("observation", self.observation),
                                                                   ("action", self.action))
                  for i, ch in enumerate(grp.channels)]
        places += [("reward.column", "reward")] if self.reward is not None else []
        for place, name in places:
            if name in seen:
                raise _invalid(tuple(place.split(".")), name, f"a name no other channel has ({seen[name]} is "
                                                              f"also {name!r})")
            seen[name] = place
        return self

    @property
    def raw(self) -> dict[str, Any]:
        """The spec as read (JSON-safe), kept in the store's provenance."""
        return self._raw

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> IngestSpec:
        """Read and validate a spec file; raises SpecError naming the file, the key and what was expected."""
        return load_spec_file(cls, Path(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<spec>") -> IngestSpec:
        """Validate spec data already parsed (`source` names it in errors)."""
        return validate_spec(cls, data, source)

    @property
    def jitter_ns(self) -> int:
        """`jitter` in integer nanoseconds, the unit of the time axis."""
        return round(self.jitter * 1e9)

    def channels(self) -> list[tuple[str, ChannelSpec]]:
        """(group, channel) for every mapped column, observations first."""
        groups: list[tuple[str, GroupSpec | ActionSpec | RewardSpec | None]] = [
            ("observation", self.observation), ("action", self.action), ("reward", self.reward)]
        return [(name, ch) for name, g in groups if g is not None for ch in g.channels]

    def columns(self) -> list[str]:
        """Every column the spec reads, each once."""
        cols = [self.timestamp.column, *([self.episode_column] if self.episode_column else [])]
        cols += [ch.column for _, ch in self.channels()]
        return list(dict.fromkeys(cols))

    def group(self, name: str) -> GroupSpec | ActionSpec | RewardSpec | None:
        return {"observation": self.observation, "action": self.action, "reward": self.reward}[name]

    def resample_of(self, name: str) -> str:
        """The group's resampling method, 'interpolate' or 'hold'."""
        g = self.group(name)
        if g is None:
            raise KeyError(f"the spec has no {name} group")
        return g.resample

    def max_gap_of(self, name: str) -> float:
        """The group's max_gap in seconds: its own, else the spec's, else 5 * dt."""
        g = self.group(name)
        own = g.max_gap if g is not None else None
        return own if own is not None else (self.max_gap if self.max_gap is not None else 5 * self.dt)

    # BaseModel.schema is pydantic v1's deprecated JSON-schema classmethod; here the name is the
    # ingest's public API (the store schema a spec describes), kept from before the spec was pydantic.
    def schema(self, provenance: dict[str, Any]) -> StoreSchema:  # type: ignore[override]
        """The store schema: channels with units, Box spaces bounded by low/high (else ±inf), dt."""

        def box(chs: list[ChannelSpec]) -> spaces.Box:
            low = np.array([-np.inf if c.low is None else c.low for c in chs], np.float32)
            high = np.array([np.inf if c.high is None else c.high for c in chs], np.float32)
            return spaces.Box(low, high, dtype=np.float32)

        act = self.action
        action_space = spaces.Discrete(act.n or 0, start=act.start) if act.type == "discrete" else box(act.channels)
        return StoreSchema(
            obs_channels=[c.name for c in self.observation.channels],
            obs_units=[c.unit for c in self.observation.channels],
            action_channels=[c.name for c in act.channels],
            action_units=[c.unit for c in act.channels],
            observation_space=space_to_dict(box(self.observation.channels)),
            action_space=space_to_dict(action_space),
            dt=self.dt,
            reward_unit=self.reward.channels[0].unit if self.reward else "",
            provenance=provenance,
        )


__all__ = ["DUPLICATE_RULES", "GROUPS", "NAN_POLICIES", "RESAMPLE_METHODS", "ActionSpec", "ChannelSpec", "GroupSpec",
           "IngestSpec", "RewardSpec", "SpecError", "TimestampSpec"]
