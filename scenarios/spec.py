"""The scenario spec of generate.py: pydantic models read from YAML (docs/scenarios.md).

    spec = load_spec("configs/scenarios/pendulum.yaml")   # structure and types
    spec.check(store.schema)                               # channel names against a store's schema

A scenario is one starting point × one intervention. The models sit on `data_pipeline.specfile.Spec`
(unknown keys are errors, duplicate YAML keys too), so a bad spec fails with one line naming the file,
the key path, what was found and what was expected:

    pendulum.yaml: key 'interventions.push.constant.torq' is 'high'; input should be a valid number

Numbers are strict (`"3"` or `true` is not a number). Outcome conditions use a tiny grammar, parsed
in scenarios.outcomes: nothing is evaluated.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, ConfigDict, Field, PrivateAttr, ValidationError, WrapValidator, model_validator
from pydantic_core import PydanticCustomError

from data_pipeline.schema import StoreSchema
from data_pipeline.specfile import Spec, SpecError, parse_yaml, validate_spec
from scenarios.outcomes import Condition, Outcome, ScenarioSpecError

__all__ = ["Condition", "EveryStart", "ExplicitStart", "HistoryStart", "Intervention", "Outcome", "SampleStart",
           "ScenarioSpec", "ScenarioSpecError", "SplitSpec", "Start", "load_spec", "parse_spec", "parse_spec_text"]

PosInt = Annotated[int, Field(strict=True, ge=1)]
NonNegInt = Annotated[int, Field(strict=True, ge=0)]
Number = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Fraction = Annotated[float, Field(strict=True, ge=0, lt=1)]
EpisodeRef = Annotated[int, Field(strict=True)] | Annotated[str, Field(strict=True)]
"""Position in the store's episode table, or the episode's id."""


_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def _fail(loc: tuple[str | int, ...], value: Any, message: str) -> ValidationError:
    """A validation error at `loc` below the validator's own key: cross-field rules point at the exact key."""
    error = PydanticCustomError("scenario_spec", message)
    return ValidationError.from_exception_data("ScenarioSpec", [{"type": error, "loc": loc, "input": value}])


def _named(name: str) -> str:
    if not _NAME.match(name):
        raise PydanticCustomError("name", "expected a name of letters, digits, '_', '-' or '.'")
    return name


Name = Annotated[str, Field(strict=True), AfterValidator(_named)]


# ------------------------------------------------------------------------------------------ starts
class _Start(Spec):
    """A starting point; `key` is its key path in the spec (`starts.2`), set by ScenarioSpec, for errors."""

    _key: str = PrivateAttr("")

    def __init__(self, /, key: str = "", **data: Any) -> None:
        super().__init__(**data)  # YAML is validated with model_validate, which never sees `key`
        self._key = key

    @property
    def key(self) -> str:
        return self._key


class ExplicitStart(_Start):
    """Start at row `t` of a recorded episode (position in the store's table, or its id)."""

    episode: EpisodeRef
    t: NonNegInt


class EveryStart(_Start):
    """Start every `every` rows of one episode, from row `from` (default: context - 1) to `to`."""

    episode: EpisodeRef
    every: PosInt
    first: NonNegInt | None = Field(default=None, alias="from")
    last: NonNegInt | None = Field(default=None, alias="to")


class SampleStart(_Start):
    """`sample` random (episode, t) from a split; t leaves `context` rows of history and, where the
    episode is long enough, `horizon` rows of recorded future."""

    count: PosInt = Field(alias="sample")
    split: Literal["train", "val", "test", "all"] = "test"
    seed: NonNegInt | None = None
    """Defaults to the spec's seed."""


class HistoryStart(_Start):
    """A history from a `.npz` file: `obs` (T, obs_dim) and `action` (T, action_dim), row t's action
    taken at obs t (store convention). The last action is held as the factual future."""

    model_config = ConfigDict(validate_by_name=True)  # HistoryStart(path=...) in Python, `history:` in YAML
    path: str = Field(alias="history", min_length=1)


Start = ExplicitStart | EveryStart | SampleStart | HistoryStart
_START_FORMS = "expected one of {episode: E, t: T}, {sample: N}, {episode: E, every: K} or {history: FILE.npz}"


def _start(value: Any, _handler: Any) -> Start:
    """Pick the kind of start from its keys, so an error names the keys of that kind only."""
    if isinstance(value, _Start):
        return value  # type: ignore[return-value]
    if isinstance(value, dict):
        kinds: tuple[tuple[str, type[Start]], ...] = (
            ("history", HistoryStart), ("sample", SampleStart), ("every", EveryStart), ("episode", ExplicitStart))
        for key, kind in kinds:
            if key in value:
                return kind.model_validate(value)
    raise PydanticCustomError("start", _START_FORMS)


# ----------------------------------------------------------------------------------- interventions
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
                    raise _fail((part,), data[part], "empty; expected {channel: number, ...}")
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


# -------------------------------------------------------------------------------------------- spec
class SummarySpec(Spec):
    channels: list[Annotated[str, Field(strict=True)]] = []
    """Observed channels in the summary table and plots (default: all)."""
    times: list[PosInt] | None = Field(default=None, min_length=1)
    """Steps (1..horizon) in the summary table (default: the horizon)."""


class PlotSpec(Spec):
    max_starts: NonNegInt = 8
    """Starting points that get a fan chart."""


class SplitSpec(Spec):
    """The episode split that `sample` starts draw from (the training split's seed and fractions)."""

    seed: NonNegInt = 0
    val_fraction: Fraction = 0.1
    test_fraction: Fraction = 0.1


_MAPPINGS = ("outcomes", "summary", "plot", "split")


class ScenarioSpec(Spec):
    """A scenario set: every start × every intervention, `samples` futures of `horizon` steps each."""

    horizon: PosInt = 50
    """Imagined steps per scenario."""
    samples: PosInt = 32
    """Imagined futures per scenario."""
    seed: NonNegInt = 0
    """Seeds every block of scenarios (the result does not depend on how many processes ran)."""
    context: PosInt = 8
    """Recorded rows the twin assimilates before the start (fewer at an episode's beginning)."""
    starts: list[Annotated[Start, WrapValidator(_start)]] = Field(min_length=1)
    intervention_map: dict[Name, Intervention] = Field(alias="interventions", min_length=1)
    outcome_map: dict[Name, Outcome] = Field(default_factory=dict, alias="outcomes")
    summary: SummarySpec = SummarySpec()
    plot: PlotSpec = PlotSpec()
    clip_actions: Annotated[bool, Field(strict=True)] = True
    """Clip actions to the action space (the actuator's range)."""
    block_trajectories: PosInt = 4096
    """Trajectories (scenarios × samples) per model call; bounds memory and fixes the output chunks."""
    split: SplitSpec = SplitSpec()
    _source: str = PrivateAttr("<spec>")
    _text: str = PrivateAttr("")

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        """`outcomes:` (or summary, plot, split) with nothing after it means the defaults, as `{}`."""
        if isinstance(data, dict):
            return {k: {} if k in _MAPPINGS and v is None else v for k, v in data.items()}
        return data

    @model_validator(mode="after")
    def _name_and_bound(self) -> ScenarioSpec:
        for name, iv in self.intervention_map.items():
            iv._name = name
        for name, oc in self.outcome_map.items():
            oc._name = name
        for i, start in enumerate(self.starts):
            start._key = f"starts.{i}"
        for i, t in enumerate(self.summary.times or ()):
            if t > self.horizon:
                raise _fail(("summary", "times", i), t, f"expected a step in 1..horizon={self.horizon}")
        return self

    @property
    def interventions(self) -> tuple[Intervention, ...]:
        return tuple(self.intervention_map.values())

    @property
    def outcomes(self) -> tuple[Outcome, ...]:
        return tuple(self.outcome_map.values())

    @property
    def summary_channels(self) -> tuple[str, ...]:
        return tuple(self.summary.channels)

    @property
    def summary_times(self) -> tuple[int, ...]:
        return tuple(self.summary.times or (self.horizon,))

    @property
    def plot_max_starts(self) -> int:
        return self.plot.max_starts

    @property
    def source(self) -> str:
        """The file (or label) the spec was read from, for errors."""
        return self._source

    @property
    def text(self) -> str:
        """The YAML text the spec was parsed from (stored in the output's attrs)."""
        return self._text

    @property
    def block_scenarios(self) -> int:
        return max(1, self.block_trajectories // self.samples)

    def with_seed(self, seed: int) -> ScenarioSpec:
        return self.model_copy(update={"seed": int(seed)})

    @property
    def factual(self) -> Intervention | None:
        """The factual baseline: the intervention named 'factual', else the first factual one."""
        facts = [i for i in self.interventions if i.is_factual]
        named = [i for i in facts if i.name == "factual"]
        return (named or facts)[0] if facts else None

    def check(self, schema: StoreSchema) -> None:
        """Check channel names and action values against a store's schema (raises ScenarioSpecError)."""
        src = self.source
        obs, act = list(schema.obs_channels), list(schema.action_channels)
        if not obs:
            raise ScenarioSpecError(f"{src}: the store has no vector observation channels; generate.py "
                                    "needs vector observations (image-only stores are not supported)")

        def known(names: Any, allowed: list[str], key: str, what: str) -> None:
            for name in names:
                if name not in allowed:
                    raise ScenarioSpecError(f"{src}: {key}.{name}: unknown {what}; expected one of {allowed}")

        for iv in self.interventions:
            key = f"interventions.{iv.name}"
            for part in ("constant", "schedule", "scale", "offset"):
                known(getattr(iv, part), act, f"{key}.{part}", "actuator channel")
            known(iv.obs_offset, obs, f"{key}.obs_offset", "observed channel")
            if schema.discrete:
                if iv.scale or iv.offset:
                    raise ScenarioSpecError(f"{src}: {key}: scale/offset need continuous actions; the "
                                            "store's actions are Discrete (use constant or schedule)")
                n = int(schema.action_space["n"])
                scheduled = [v for points in iv.schedule.values() for _, v in points if v is not None]
                for v in [*iv.constant.values(), *scheduled]:
                    if v != int(v) or not 0 <= v < n:
                        raise ScenarioSpecError(f"{src}: {key}: action {v:g}; expected an integer in "
                                                f"[0, {n}) (a Discrete action)")
        for oc in self.outcomes:
            known([oc.condition.channel], [*obs, *act, "reward"], f"outcomes.{oc.name}.condition", "channel")
        known(self.summary_channels, obs, "summary.channels", "observed channel")


# ------------------------------------------------------------------------------------------ reading
def parse_spec(data: Any, source: str = "<spec>", text: str = "", base: Path | None = None) -> ScenarioSpec:
    """A ScenarioSpec from parsed YAML data; relative history paths resolve against `base`."""
    spec = validate_spec(ScenarioSpec, data, source, error=ScenarioSpecError)
    spec._source, spec._text = source, text
    for start in spec.starts:
        if isinstance(start, HistoryStart) and not Path(start.path).is_absolute():
            start.path = str((base or Path(".")) / start.path)
    return spec


def parse_spec_text(text: str, source: str = "<spec>", base: Path | None = None) -> ScenarioSpec:
    """A ScenarioSpec from YAML text (duplicate keys are errors)."""
    try:
        data = parse_yaml(text, source)
    except SpecError as err:
        raise ScenarioSpecError(str(err)) from None
    return parse_spec(data, source, text, base)


def load_spec(path: str | Path) -> ScenarioSpec:
    """Read and parse a scenario spec file (raises ScenarioSpecError naming the key on a bad spec)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such scenario spec")
    return parse_spec_text(path.read_text(), str(path), path.parent)
