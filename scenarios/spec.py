"""The scenario spec of generate.py: typed dataclasses parsed from YAML (docs/scenarios.md).

    spec = load_spec("configs/scenarios/pendulum.yaml")   # structure and types
    spec.check(store.schema)                               # channel names against a store's schema

A scenario is one starting point × one intervention. Every error names the file, the key path
(`interventions.push.constant.torq`) and what was expected. Outcome conditions use a tiny grammar,
`[abs(]<channel>[)] <op> <number>` with op one of > >= < <=, parsed here: nothing is evaluated.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from data_pipeline.schema import StoreSchema

WHEN = ("any", "end", "fraction")
SPLITS = ("train", "val", "test", "all")
_INTERVENTION_KEYS = ("constant", "schedule", "scale", "offset", "policy", "obs_offset")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_CONDITION = re.compile(rf"^\s*(abs\(\s*(?P<abs>[A-Za-z_][\w.]*)\s*\)|(?P<name>[A-Za-z_][\w.]*))\s*"
                        rf"(?P<op>>=|<=|>|<)\s*(?P<value>{_NUMBER})\s*$")


class ScenarioSpecError(ValueError):
    """A scenario spec is malformed: the message names the file, the key path and what was expected."""


# ------------------------------------------------------------------------------------------ starts
@dataclass(frozen=True)
class ExplicitStart:
    """Start at row `t` of a recorded episode (position in the store's table, or its id)."""

    episode: int | str
    t: int
    key: str = ""
    """Key path in the spec, for errors."""


@dataclass(frozen=True)
class EveryStart:
    """Start every `every` rows of one episode, from row `first` (default: context - 1) to `last`."""

    episode: int | str
    every: int
    first: int | None = None
    last: int | None = None
    key: str = ""


@dataclass(frozen=True)
class SampleStart:
    """`count` random (episode, t) from a split; t leaves `context` rows of history and, where the
    episode is long enough, `horizon` rows of recorded future."""

    count: int
    split: str = "test"
    seed: int | None = None
    """Defaults to the spec's seed."""
    key: str = ""


@dataclass(frozen=True)
class HistoryStart:
    """A history from a `.npz` file: `obs` (T, obs_dim) and `action` (T, action_dim), row t's action
    taken at obs t (store convention). The last action is held as the factual future."""

    path: str
    key: str = ""


Start = ExplicitStart | EveryStart | SampleStart | HistoryStart


# ----------------------------------------------------------------------------------- interventions
@dataclass(frozen=True)
class Intervention:
    """What changes in a scenario. Unnamed actuator channels follow the recorded actions.

    Applied in this order per channel: `scale` and `offset` of the recorded action, or a `constant`,
    or a `schedule` of (step, value) breakpoints (value from that step on; NaN / null = recorded).
    A `policy` (SB3 zip or module:function) sets every channel from the imagined observations.
    `obs_offset` shifts the observed channels of the history the twin assimilates (a sensor offset).
    """

    name: str
    constant: dict[str, float] = field(default_factory=dict)
    schedule: dict[str, tuple[tuple[int, float], ...]] = field(default_factory=dict)
    scale: dict[str, float] = field(default_factory=dict)
    offset: dict[str, float] = field(default_factory=dict)
    policy: str | None = None
    obs_offset: dict[str, float] = field(default_factory=dict)

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
                    out[step:, c] = recorded[step:, c] if math.isnan(value) else value
        return out

    def perturb(self, obs: np.ndarray, channels: list[str]) -> np.ndarray:
        """History observations (…, obs_dim) with the sensor offsets added."""
        if not self.obs_offset:
            return obs
        delta = np.array([self.obs_offset.get(c, 0.0) for c in channels], obs.dtype)
        return obs + delta


# ---------------------------------------------------------------------------------------- outcomes
@dataclass(frozen=True)
class Condition:
    """`[abs(]channel[)] op value`, parsed from text without evaluating it."""

    channel: str
    op: str
    value: float
    absolute: bool = False

    @classmethod
    def parse(cls, text: str, key: str) -> Condition:
        match = _CONDITION.match(text) if isinstance(text, str) else None
        if match is None:
            raise ScenarioSpecError(f"{key}: condition {text!r}; expected '<channel> <op> <number>' or "
                                    "'abs(<channel>) <op> <number>' with op one of > >= < <=")
        name = match["abs"] or match["name"]
        return cls(channel=name, op=match["op"], value=float(match["value"]),
                   absolute=match["abs"] is not None)

    def holds(self, values: np.ndarray) -> np.ndarray:
        x = np.abs(values) if self.absolute else values
        with np.errstate(invalid="ignore"):
            if self.op == ">":
                return x > self.value
            if self.op == ">=":
                return x >= self.value
            if self.op == "<":
                return x < self.value
            return x <= self.value

    def __str__(self) -> str:
        name = f"abs({self.channel})" if self.absolute else self.channel
        return f"{name} {self.op} {self.value:g}"


@dataclass(frozen=True)
class Outcome:
    """A named check reported as a probability over samples: the condition holds at `any` time, at the
    `end`, or (`fraction`) the expected fraction of time it holds."""

    name: str
    condition: Condition
    when: str = "any"

    def probability(self, values: np.ndarray) -> np.ndarray:
        """(n, samples, time) values of the condition's channel -> (n,) probabilities."""
        holds = self.condition.holds(values)
        if self.when == "any":
            per_sample = holds.any(-1)
        elif self.when == "end":
            per_sample = holds[..., -1]
        else:
            per_sample = holds.mean(-1)
        return per_sample.mean(-1).astype(np.float64)


# -------------------------------------------------------------------------------------------- spec
@dataclass(frozen=True)
class SplitSpec:
    """The episode split that `sample` starts draw from (the training split's seed and fractions)."""

    seed: int = 0
    val_fraction: float = 0.1
    test_fraction: float = 0.1


@dataclass(frozen=True)
class ScenarioSpec:
    """A scenario set: every start × every intervention, `samples` futures of `horizon` steps each."""

    starts: tuple[Start, ...]
    interventions: tuple[Intervention, ...]
    horizon: int = 50
    """Imagined steps per scenario."""
    samples: int = 32
    """Imagined futures per scenario."""
    seed: int = 0
    """Seeds every block of scenarios (the result does not depend on how many processes ran)."""
    context: int = 8
    """Recorded rows the twin assimilates before the start (fewer at an episode's beginning)."""
    outcomes: tuple[Outcome, ...] = ()
    summary_channels: tuple[str, ...] = ()
    """Observed channels in the summary table and plots (default: all)."""
    summary_times: tuple[int, ...] = ()
    """Steps (1..horizon) in the summary table (default: the horizon)."""
    plot_max_starts: int = 8
    """Starting points that get a fan chart."""
    clip_actions: bool = True
    """Clip actions to the action space (the actuator's range)."""
    block_trajectories: int = 4096
    """Trajectories (scenarios × samples) per model call; bounds memory and fixes the output chunks."""
    split: SplitSpec = SplitSpec()
    source: str = "<spec>"
    text: str = ""
    """The YAML text the spec was parsed from (stored in the output's attrs)."""

    @property
    def block_scenarios(self) -> int:
        return max(1, self.block_trajectories // self.samples)

    def with_seed(self, seed: int) -> ScenarioSpec:
        return replace(self, seed=int(seed))

    @property
    def factual(self) -> Intervention | None:
        """The factual baseline: the intervention named 'factual', else the first factual one."""
        facts = [i for i in self.interventions if i.is_factual]
        named = [i for i in facts if i.name == "factual"]
        return (named or facts or [None])[0]

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
                scheduled = [v for points in iv.schedule.values() for _, v in points if not math.isnan(v)]
                values = [*iv.constant.values(), *scheduled]
                for v in values:
                    if v != int(v) or not 0 <= v < n:
                        raise ScenarioSpecError(f"{src}: {key}: action {v:g}; expected an integer in "
                                                f"[0, {n}) (a Discrete action)")
        for oc in self.outcomes:
            known([oc.condition.channel], [*obs, *act, "reward"], f"outcomes.{oc.name}.condition", "channel")
        known(self.summary_channels, obs, "summary.channels", "observed channel")


# ------------------------------------------------------------------------------------------ parsing
class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ScenarioSpecError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _Parser:
    """Typed reads from plain YAML data; every error carries the source and the key path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str) -> ScenarioSpecError:
        return ScenarioSpecError(f"{self.source}: {key}: {message}")

    def mapping(self, value: Any, key: str, allowed: tuple[str, ...] | None = None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, f"got {type(value).__name__} {value!r}; expected a mapping")
        if allowed is not None:
            for k in value:
                if k not in allowed:
                    where = f"{key}.{k}" if key else str(k)
                    raise self.fail(where, f"unknown key; expected one of {list(allowed)}")
        return value

    def integer(self, value: Any, key: str, minimum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"got {value!r}; expected an integer")
        if minimum is not None and value < minimum:
            raise self.fail(key, f"got {value}; expected an integer ≥ {minimum}")
        return int(value)

    def number(self, value: Any, key: str, allow_null: bool = False) -> float:
        if value is None and allow_null:
            return math.nan
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            expected = "a finite number or null" if allow_null else "a finite number"
            raise self.fail(key, f"got {value!r}; expected {expected}")
        return float(value)

    def fraction(self, value: Any, key: str) -> float:
        x = self.number(value, key)
        if not 0 <= x < 1:
            raise self.fail(key, f"got {x}; expected a fraction in [0, 1)")
        return x

    def episode(self, value: Any, key: str) -> int | str:
        if isinstance(value, str):
            return value
        return self.integer(value, key)

    def channel_numbers(self, value: Any, key: str) -> dict[str, float]:
        data = self.mapping(value, key)
        if not data:
            raise self.fail(key, "empty; expected {channel: number, ...}")
        return {str(k): self.number(v, f"{key}.{k}") for k, v in data.items()}

    def start(self, value: Any, key: str, base: Path) -> Start:
        data = self.mapping(value, key)
        if "history" in data:
            self.mapping(data, key, ("history",))
            path = Path(str(data["history"]))
            path = path if path.is_absolute() else base / path
            return HistoryStart(path=str(path), key=f"{key}.history")
        if "sample" in data:
            self.mapping(data, key, ("sample", "split", "seed"))
            split = data.get("split", "test")
            if split not in SPLITS:
                raise self.fail(f"{key}.split", f"got {split!r}; expected one of {list(SPLITS)}")
            seed = None if data.get("seed") is None else self.integer(data["seed"], f"{key}.seed")
            count = self.integer(data["sample"], f"{key}.sample", 1)
            return SampleStart(count=count, split=split, seed=seed, key=key)
        if "every" in data:
            self.mapping(data, key, ("episode", "every", "from", "to"))
            if "episode" not in data:
                raise self.fail(f"{key}.episode", "missing; 'every' needs the episode to walk through")
            first = None if data.get("from") is None else self.integer(data["from"], f"{key}.from", 0)
            last = None if data.get("to") is None else self.integer(data["to"], f"{key}.to", 0)
            every = self.integer(data["every"], f"{key}.every", 1)
            return EveryStart(episode=self.episode(data["episode"], f"{key}.episode"), every=every,
                              first=first, last=last, key=key)
        if "episode" in data:
            self.mapping(data, key, ("episode", "t"))
            if "t" not in data:
                raise self.fail(f"{key}.t", "missing; expected the row of the episode to start from")
            return ExplicitStart(episode=self.episode(data["episode"], f"{key}.episode"),
                                 t=self.integer(data["t"], f"{key}.t", 0), key=key)
        raise self.fail(key, "expected one of {episode: E, t: T}, {sample: N}, {episode: E, every: K} "
                             "or {history: FILE.npz}")

    def intervention(self, name: str, value: Any, key: str) -> Intervention:
        data = self.mapping(value, key, _INTERVENTION_KEYS)
        schedule: dict[str, tuple[tuple[int, float], ...]] = {}
        for ch, points in self.mapping(data.get("schedule"), f"{key}.schedule").items():
            k = f"{key}.schedule.{ch}"
            if not isinstance(points, list) or not points:
                raise self.fail(k, f"got {points!r}; expected a list of [step, value] pairs")
            pairs = []
            for i, p in enumerate(points):
                if not (isinstance(p, list | tuple) and len(p) == 2):
                    raise self.fail(f"{k}[{i}]", f"got {p!r}; expected [step, value]")
                pairs.append((self.integer(p[0], f"{k}[{i}][0]", 0), self.number(p[1], f"{k}[{i}][1]", True)))
            steps = [s for s, _ in pairs]
            if steps != sorted(set(steps)):
                raise self.fail(k, f"steps {steps}; expected strictly increasing steps")
            schedule[str(ch)] = tuple(pairs)
        parts = {p: self.channel_numbers(data[p], f"{key}.{p}") if p in data else {}
                 for p in ("constant", "scale", "offset", "obs_offset")}
        policy = data.get("policy")
        if policy is not None and (not isinstance(policy, str) or not policy):
            raise self.fail(f"{key}.policy", f"got {policy!r}; expected an SB3 .zip or 'module:function'")
        if policy and (parts["constant"] or parts["scale"] or parts["offset"] or schedule):
            raise self.fail(key, "a policy sets every actuator; drop constant/schedule/scale/offset")
        groups = {"constant": set(parts["constant"]), "schedule": set(schedule),
                  "scale/offset": set(parts["scale"]) | set(parts["offset"])}
        for ch in sorted(set().union(*groups.values())):
            kinds = [g for g, chans in groups.items() if ch in chans]
            if len(kinds) > 1:
                raise self.fail(key, f"channel {ch!r} is set by {kinds}; expected one of constant, schedule "
                                     "or scale/offset per channel")
        return Intervention(name=name, schedule=schedule, policy=policy, **parts)

    def outcome(self, name: str, value: Any, key: str) -> Outcome:
        if isinstance(value, str):
            value = {"condition": value}
        data = self.mapping(value, key, ("condition", "when"))
        if "condition" not in data:
            raise self.fail(f"{key}.condition", "missing; expected e.g. 'theta_dot > 6'")
        when = data.get("when", "any")
        if when not in WHEN:
            raise self.fail(f"{key}.when", f"got {when!r}; expected one of {list(WHEN)}")
        condition = Condition.parse(data["condition"], f"{self.source}: {key}.condition")
        return Outcome(name=name, condition=condition, when=when)


_TOP_KEYS = ("starts", "interventions", "horizon", "samples", "seed", "context", "outcomes", "summary",
             "plot", "clip_actions", "block_trajectories", "split")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def parse_spec(data: Any, source: str = "<spec>", text: str = "", base: Path | None = None) -> ScenarioSpec:
    """A ScenarioSpec from parsed YAML data; relative history paths resolve against `base`."""
    p = _Parser(source)
    top = p.mapping(data, "", _TOP_KEYS)
    for required in ("starts", "interventions"):
        if required not in top:
            raise p.fail(required, "missing (required)")
    horizon = p.integer(top.get("horizon", 50), "horizon", 1)
    samples = p.integer(top.get("samples", 32), "samples", 1)
    if not isinstance(top["starts"], list) or not top["starts"]:
        raise p.fail("starts", f"got {top['starts']!r}; expected a non-empty list")
    starts = tuple(p.start(v, f"starts[{i}]", base or Path(".")) for i, v in enumerate(top["starts"]))
    ivs = p.mapping(top["interventions"], "interventions")
    if not ivs:
        raise p.fail("interventions", "empty; expected {name: {…}, …} ({} is the factual replay)")
    outs = p.mapping(top.get("outcomes"), "outcomes")
    for key, names in (("interventions", ivs), ("outcomes", outs)):
        for name in names:
            if not isinstance(name, str) or not _NAME.match(name):
                raise p.fail(f"{key}.{name}", "bad name; expected letters, digits, '_', '-' or '.'")
    summary = p.mapping(top.get("summary"), "summary", ("channels", "times"))
    channels = summary.get("channels", [])
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise p.fail("summary.channels", f"got {channels!r}; expected a list of channel names")
    times = summary.get("times", [horizon])
    if not isinstance(times, list) or not times:
        raise p.fail("summary.times", f"got {times!r}; expected a list of steps in 1..{horizon}")
    times = [p.integer(t, f"summary.times[{i}]", 1) for i, t in enumerate(times)]
    for i, t in enumerate(times):
        if t > horizon:
            raise p.fail(f"summary.times[{i}]", f"got {t}; expected a step in 1..horizon={horizon}")
    plot = p.mapping(top.get("plot"), "plot", ("max_starts",))
    split = p.mapping(top.get("split"), "split", ("seed", "val_fraction", "test_fraction"))
    clip = top.get("clip_actions", True)
    if not isinstance(clip, bool):
        raise p.fail("clip_actions", f"got {clip!r}; expected true or false")
    return ScenarioSpec(
        starts=starts,
        interventions=tuple(p.intervention(n, v, f"interventions.{n}") for n, v in ivs.items()),
        horizon=horizon,
        samples=samples,
        seed=p.integer(top.get("seed", 0), "seed", 0),
        context=p.integer(top.get("context", 8), "context", 1),
        outcomes=tuple(p.outcome(n, v, f"outcomes.{n}") for n, v in outs.items()),
        summary_channels=tuple(channels),
        summary_times=tuple(times),
        plot_max_starts=p.integer(plot.get("max_starts", 8), "plot.max_starts", 0),
        clip_actions=clip,
        block_trajectories=p.integer(top.get("block_trajectories", 4096), "block_trajectories", 1),
        split=SplitSpec(seed=p.integer(split.get("seed", 0), "split.seed", 0),
                        val_fraction=p.fraction(split.get("val_fraction", 0.1), "split.val_fraction"),
                        test_fraction=p.fraction(split.get("test_fraction", 0.1), "split.test_fraction")),
        source=source,
        text=text,
    )


def parse_spec_text(text: str, source: str = "<spec>", base: Path | None = None) -> ScenarioSpec:
    """A ScenarioSpec from YAML text."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except ScenarioSpecError as err:
        raise ScenarioSpecError(f"{source}: {err}") from None
    except yaml.YAMLError as err:
        raise ScenarioSpecError(f"{source}: not valid YAML ({err})") from None
    return parse_spec(data, source, text, base)


def load_spec(path: str | Path) -> ScenarioSpec:
    """Read and parse a scenario spec file (raises ScenarioSpecError naming the key on a bad spec)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such scenario spec")
    return parse_spec_text(path.read_text(), str(path), path.parent)
