"""The ingest spec: what a sensor log's columns mean and how they become episodes on a fixed step.

    spec = IngestSpec.from_yaml("configs/ingest/example_spec.yaml")
    schema = spec.schema(provenance={...})

Typed dataclasses read from YAML; every error (`SpecError`) names the key and what was expected.
The keys are documented, with a full example, in docs/ingest.md.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml
from gymnasium import spaces

from data_pipeline.schema import StoreSchema
from data_pipeline.spaces import space_to_dict

TIME_UNITS = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
RESAMPLE_METHODS = ("interpolate", "hold")
NAN_POLICIES = ("error", "drop", "fill", "interpolate")
GROUPS = ("observation", "action", "reward")
_REQUIRED = object()


class SpecError(ValueError):
    """The ingest spec is malformed: the message names the key and what was expected."""


@dataclass
class ChannelSpec:
    """One column of the log as a named channel."""

    column: str
    """Column in the log."""
    name: str
    """Channel name in the store (defaults to the column name)."""
    unit: str = ""
    """Physical unit, e.g. 'degC', 'bar', 'm/s'."""
    low: float | None = None
    """Lower bound of the Gymnasium Box (and of valid readings); None for -inf."""
    high: float | None = None
    """Upper bound of the Gymnasium Box (and of valid readings); None for +inf."""


@dataclass
class GroupSpec:
    """A channel group (observation, action or reward) and how it is put onto the fixed step."""

    channels: list[ChannelSpec]
    resample: str = "interpolate"
    """'interpolate' (linear in time) or 'hold' (the last reading, e.g. setpoints and commands)."""
    max_gap: float | None = None
    """Seconds a channel may go without a reading; a longer gap splits the episode (None: the spec's)."""
    type: str = "box"
    """Actions only: 'box' (continuous) or 'discrete' (one integer column)."""
    n: int | None = None
    """Discrete actions: number of actions."""
    start: int = 0
    """Discrete actions: the smallest action value."""


@dataclass
class TimestampSpec:
    column: str
    unit: str = "s"
    """'s', 'ms', 'us', 'ns' for numbers, or 'datetime' for date-time text (naive times are UTC)."""
    format: str | None = None
    """strftime format of date-time text (unit: datetime); None for ISO 8601."""


@dataclass
class IngestSpec:
    """What a log's columns mean and how they become episodes on a fixed step. See docs/ingest.md."""

    timestamp: TimestampSpec
    dt: float
    """The store's fixed step, in seconds."""
    observation: GroupSpec
    action: GroupSpec
    reward: GroupSpec | None = None
    """One channel, named 'reward'; None stores a reward of 0 (noted in the provenance)."""
    episode_column: str | None = None
    """Column naming the episode of each row; None for one episode per file (split at gaps)."""
    max_gap: float | None = None
    """Default max_gap of the groups, in seconds; None for 5 * dt."""
    min_transitions: int = 1
    """Shortest episode kept, in transitions on the dt grid."""
    short_episodes: str = "error"
    """'error' or 'drop': what to do with a piece shorter than min_transitions."""
    nan_policy: str = "error"
    """A written NaN/Inf: 'error', 'drop' (the row), 'fill' (fill_value) or 'interpolate' (in time)."""
    fill_value: float | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    """The YAML as read, kept in the store's provenance."""

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> IngestSpec:
        try:
            with open(path) as f:
                data = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise SpecError(f"{path}: not valid YAML ({err})") from err
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, source: str = "<spec>") -> IngestSpec:
        r = _SpecReader(source)
        r.keys(data, "", ("timestamp", "dt", "observation", "action", "reward", "episode_column", "max_gap",
                          "min_transitions", "short_episodes", "nan_policy", "fill_value"))
        ts = r.take(data, "", "timestamp", "a mapping with 'column' and 'unit'", dict)
        r.keys(ts, "timestamp", ("column", "unit", "format"))
        unit = r.choice(ts, "timestamp", "unit", (*TIME_UNITS, "datetime"), "s")
        timestamp = TimestampSpec(
            column=r.take(ts, "timestamp", "column", "the name of the timestamp column", str),
            unit=unit,
            format=r.take(ts, "timestamp", "format", "a strftime format ('%Y-%m-%d %H:%M:%S')", str, None),
        )
        if timestamp.format and unit != "datetime":
            raise SpecError(
                f"{source}: key 'timestamp.format' is set but timestamp.unit is {unit!r}; "
                "expected unit: datetime"
            )
        spec = cls(
            timestamp=timestamp,
            dt=r.positive(data, "", "dt", "the fixed step in seconds, > 0"),
            observation=r.group(data, "observation"),
            action=r.group(data, "action"),
            reward=r.reward(data),
            episode_column=r.take(data, "", "episode_column", "a column name", str, None),
            max_gap=r.positive(data, "", "max_gap", "seconds > 0", None),
            min_transitions=r.take(data, "", "min_transitions", "an integer >= 1", int, 1),
            short_episodes=r.choice(data, "", "short_episodes", ("error", "drop"), "error"),
            nan_policy=r.choice(data, "", "nan_policy", NAN_POLICIES, "error"),
            fill_value=r.take(data, "", "fill_value", "a number", (int, float), None),
            raw=json.loads(json.dumps(data, default=str)),
        )
        if spec.min_transitions < 1:
            raise r.fail("min_transitions", f"is {spec.min_transitions}", "an integer >= 1")
        if spec.nan_policy == "fill" and spec.fill_value is None:
            raise SpecError(f"{source}: key 'fill_value' is missing; expected a number (nan_policy: fill)")
        names = [ch.name for _, ch in spec.channels()]
        dup = next((n for n in names if names.count(n) > 1), None)
        if dup:
            raise SpecError(f"{source}: channel name {dup!r} is used twice; expected unique names")
        return spec

    def channels(self) -> list[tuple[str, ChannelSpec]]:
        """(group, channel) for every mapped column, observations first."""
        groups = [("observation", self.observation), ("action", self.action), ("reward", self.reward)]
        return [(name, ch) for name, g in groups if g is not None for ch in g.channels]

    def columns(self) -> list[str]:
        """Every column the spec reads, each once."""
        cols = [self.timestamp.column, *([self.episode_column] if self.episode_column else [])]
        cols += [ch.column for _, ch in self.channels()]
        return list(dict.fromkeys(cols))

    def group(self, name: str) -> GroupSpec | None:
        return {"observation": self.observation, "action": self.action, "reward": self.reward}[name]

    def max_gap_of(self, name: str) -> float:
        g = self.group(name)
        own = g.max_gap if g is not None else None
        return own if own is not None else (self.max_gap if self.max_gap is not None else 5 * self.dt)

    def schema(self, provenance: dict[str, Any]) -> StoreSchema:
        """The store schema: channels with units, Box spaces bounded by low/high (else ±inf), dt."""

        def box(chs: list[ChannelSpec]) -> spaces.Box:
            low = np.array([-np.inf if c.low is None else c.low for c in chs], np.float32)
            high = np.array([np.inf if c.high is None else c.high for c in chs], np.float32)
            return spaces.Box(low, high, dtype=np.float32)

        act = self.action
        discrete = act.type == "discrete"
        action_space = spaces.Discrete(act.n, start=act.start) if discrete else box(act.channels)
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


class _SpecReader:
    """Typed reads from the parsed YAML; every error names the key and what was expected."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, problem: str, expect: str) -> SpecError:
        return SpecError(f"{self.source}: key '{key}' {problem}; expected {expect}")

    def keys(self, data: Any, where: str, allowed: tuple[str, ...]) -> None:
        if not isinstance(data, dict):
            raise self.fail(where or "<top level>", f"is {data!r}", f"a mapping with keys {list(allowed)}")
        unknown = [k for k in data if k not in allowed]
        if unknown:
            raise self.fail(_join(where, str(unknown[0])), "is not a spec key", f"one of {list(allowed)}")

    def take(
        self, data: dict, where: str, key: str, expect: str, kinds: type | tuple, default: Any = _REQUIRED
    ) -> Any:
        value = data.get(key)
        if value is None:
            if default is _REQUIRED:
                raise self.fail(_join(where, key), "is missing", expect)
            return default
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise self.fail(_join(where, key), f"is {value!r}", expect)
        return float(value) if isinstance(value, int) and float in kinds and str not in kinds else value

    def positive(self, data: dict, where: str, key: str, expect: str, default: Any = _REQUIRED) -> Any:
        value = self.take(data, where, key, expect, (int, float), default)
        if value is not None and not value > 0:
            raise self.fail(_join(where, key), f"is {value!r}", expect)
        return value

    def choice(self, data: dict, where: str, key: str, options: tuple[str, ...], default: str) -> str:
        value = self.take(data, where, key, f"one of {list(options)}", str, default)
        if value not in options:
            raise self.fail(_join(where, key), f"is {value!r}", f"one of {list(options)}")
        return value

    def unit(self, data: dict, where: str) -> str:
        return str(self.take(data, where, "unit", "a unit such as 'degC' (text)", (str, int, float), ""))

    def channel(self, data: Any, where: str) -> ChannelSpec:
        if isinstance(data, str):  # shorthand: just the column name
            return ChannelSpec(column=data, name=data)
        self.keys(data, where, ("column", "name", "unit", "low", "high"))
        column = self.take(data, where, "column", "the name of a column in the log", str)
        ch = ChannelSpec(
            column=column,
            name=self.take(data, where, "name", "a channel name (text)", str, column),
            unit=self.unit(data, where),
            low=self.take(data, where, "low", "a number", (int, float), None),
            high=self.take(data, where, "high", "a number", (int, float), None),
        )
        if ch.low is not None and ch.high is not None and not ch.low < ch.high:
            raise self.fail(_join(where, "high"), f"is {ch.high} with low {ch.low}", "high > low")
        return ch

    def group(self, data: dict, name: str) -> GroupSpec:
        g = self.take(data, "", name, "a mapping with 'channels' (a list)", dict)
        allowed = ("channels", "resample", "max_gap") + (("type", "n", "start") if name == "action" else ())
        self.keys(g, name, allowed)
        chans = self.take(g, name, "channels", "a non-empty list of channels", list)
        if not chans:
            raise self.fail(f"{name}.channels", "is empty", "at least one channel")
        group = GroupSpec(
            channels=[self.channel(c, f"{name}.channels[{i}]") for i, c in enumerate(chans)],
            resample=self.choice(g, name, "resample", RESAMPLE_METHODS, "interpolate" if name == "observation"
                                 else "hold"),
            max_gap=self.positive(g, name, "max_gap", "seconds > 0", None),
        )
        if name == "action":
            group.type = self.choice(g, name, "type", ("box", "discrete"), "box")
            if group.type == "discrete":
                group.n = self.take(g, name, "n", "the number of discrete actions (an integer >= 1)", int)
                group.start = self.take(g, name, "start", "an integer", int, 0)
                if group.n < 1:
                    raise self.fail("action.n", f"is {group.n}", "an integer >= 1")
                if len(group.channels) != 1:
                    raise self.fail("action.channels", f"has {len(group.channels)} channels",
                                    "exactly one integer column for a discrete action")
                if group.resample != "hold":
                    raise self.fail("action.resample", f"is {group.resample!r}", "'hold' (discrete action)")
        return group

    def reward(self, data: dict) -> GroupSpec | None:
        g = self.take(data, "", "reward", "a mapping with 'column'", dict, None)
        if g is None:
            return None
        self.keys(g, "reward", ("column", "unit", "resample", "max_gap"))
        column = self.take(g, "reward", "column", "the name of the reward column", str)
        return GroupSpec(
            channels=[ChannelSpec(column=column, name="reward", unit=self.unit(g, "reward"))],
            resample=self.choice(g, "reward", "resample", RESAMPLE_METHODS, "hold"),
            max_gap=self.positive(g, "reward", "max_gap", "seconds > 0", None),
        )


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key
