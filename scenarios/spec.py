"""The scenario spec of generate.py: pydantic models read from YAML (docs/scenarios.md).

    spec = load_spec("configs/scenarios/pendulum.yaml")   # structure and types
    spec.check(store.schema)                               # channel names against a store's schema

A scenario is one starting point × one intervention. The models sit on `data_pipeline.specfile.Spec`
(unknown keys are errors, duplicate YAML keys too), so a bad spec fails with one line naming the file,
the key path, what was found and what was expected:

    pendulum.yaml: key 'interventions.push.constant.torque' is 'high'; input should be a valid number

Numbers are strict (`"3"` or `true` is not a number). Outcome conditions use a tiny grammar, parsed
in scenarios.outcomes: nothing is evaluated.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, PrivateAttr, WrapValidator, model_validator
from pydantic_core import PydanticCustomError

from data_pipeline.schema import StoreSchema
from data_pipeline.specfile import Spec, SpecError, parse_yaml, validate_spec
from scenarios.interventions import Intervention, NonNegInt, PosInt, error_at
from scenarios.outcomes import Condition, Outcome, ScenarioSpecError

__all__ = ["Condition", "EveryStart", "ExplicitStart", "HistoryStart", "Intervention", "Outcome", "SampleStart",
           "ScenarioSpec", "ScenarioSpecError", "SplitSpec", "Start", "load_spec", "parse_spec", "parse_spec_text"]

Fraction = Annotated[float, Field(strict=True, ge=0, lt=1)]


def _episode_ref(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PydanticCustomError("episode", "expected an episode's position (an integer) or its id (a string)")
    return value


EpisodeRef = Annotated[int | str, BeforeValidator(_episode_ref)]
"""Position in the store's episode table, or the episode's id."""


_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


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
    uncertainty: Literal["none", "own", "elites"] = "elites"
    """What an ensemble computes beside the samples (worldmodel.ensemble.Uncertainty): "elites" stores the
    members' disagreement as `uncertainty`; "none" runs each sample's own member only (several times faster)."""
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
                raise error_at(("summary", "times", i), t, f"expected a step in 1..horizon={self.horizon}")
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
