"""What the MCP tools do, without MCP: a `TwinTools` holds the model, the store and the server's output
folder, and answers each tool with a typed result (twin.mcp.results). twin.mcp.server registers these.

Everything here is advice: nothing writes to the plant or the source. The only files written are
scenario stores and fan charts in call folders under the server's own output folder, each new.
`simulate` and `compare_interventions` run `scenarios.generate`, the function generate.py runs, so
the same spec and seed give the same numbers as the command line.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data_pipeline.errors import UserError
from data_pipeline.store import TrajectoryStore
from data_pipeline.validate import check_schema_compatible
from policies.behaviour import Policy, make_policy
from policies.files import is_policy_file
from scenarios import generate, load_starts, parse_spec, plot_fans, resolve_starts, summarize
from scenarios.outcomes import Condition, ScenarioSpecError
from scenarios.spec import HistoryStart, ScenarioSpec
from twin.anomaly import AnomalyConfig, Calibration
from twin.mcp import results as r
from twin.mcp.limits import MAX_CONTEXT, LimitError, Limits
from twin.mcp.live import LiveFeed
from twin.mcp.planning import CEMConfig, Objective, Outcome, plan_cem, plan_policy
from twin.mcp.state import latest_state
from worldmodel.interface import WorldModel

MARKER = ".twinworld-mcp"
"""The file that marks an output folder as the MCP server's own (only such a folder is written into)."""


class ToolInputError(UserError, ValueError):
    """A tool argument that is well-typed but wrong for this twin (an unknown channel, a policy not offered)."""


@dataclass
class TwinConfig:
    """What the server was started with (the command line of `python -m twin.mcp`)."""

    model: str
    store: str
    out: Path
    policy: str | None = None
    calibration: str | None = None
    live: str | None = None
    live_spec: str | None = None
    limits: Limits = field(default_factory=Limits)


def prepare_out(out: Path) -> Path:
    """The server's output folder: created new, or one it made before (marked); never a user's folder."""
    if out.exists() and not (out / MARKER).exists() and (not out.is_dir() or any(out.iterdir())):
        raise ToolInputError(f"--out {out}: exists and is not an output folder of twin.mcp; the server writes only "
                             "into a new (or empty) folder or one it made before")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()
    return out


class TwinTools:
    """The twin behind the MCP server: model, store and output folder; one method per tool."""

    def __init__(self, config: TwinConfig) -> None:
        import worldmodel

        self.config = config
        self.limits = config.limits
        self.model: WorldModel = worldmodel.load(config.model)
        self.schema = self.model.schema
        store = self.store()
        check_schema_compatible(store.schema, self.schema, use="model", where=f"--store {config.store}")
        self.calibration = Calibration.load(config.calibration) if config.calibration else None
        self.anomaly = self.calibration.anomaly_config() if self.calibration else AnomalyConfig()
        self.policy: Policy | None = None
        if config.policy is not None:
            if not is_policy_file(config.policy):
                raise ToolInputError(f"--policy {config.policy}: expected a twinworld policy file (.zip, .json or "
                                     ".safetensors); the MCP server runs no module:function hooks")
            self.policy = make_policy(config.policy, self.schema.gym_action_space())  # safe files only
        self.out = prepare_out(config.out)
        self.live: LiveFeed | None = None
        if config.live is not None:
            if config.live_spec is None:
                raise ToolInputError("--live needs --live-spec: the ingest spec that maps the stream's JSON keys to "
                                     "channels (docs/ingest.md), as for python -m twin.live")
            self.live = LiveFeed(config.live, config.live_spec, self.out / "live.zarr", self.model)

    def close(self) -> None:
        """Stop the live mirror (what arrived is committed)."""
        if self.live is not None:
            self.live.close()

    # ------------------------------------------------------------------------------ shared
    def store(self) -> TrajectoryStore:
        """The store, opened anew so each call sees the rows committed since (a live mirror appends)."""
        return TrajectoryStore.open(self.config.store)

    def _call_dir(self, tool: str) -> Path:
        n = len(list(self.out.glob("[0-9]*-*")))
        while True:
            path = self.out / f"{n:04d}-{tool}"
            try:
                path.mkdir()
                return path
            except FileExistsError:
                n += 1

    def _condition(self, text: str, key: str) -> Condition:
        condition = Condition.parse(text, key)
        known = [*self.schema.obs_channels, *self.schema.action_channels, "reward"]
        if condition.channel not in known:
            raise ToolInputError(f"{key}: unknown channel {condition.channel!r}; expected one of {known}")
        return condition

    # ------------------------------------------------------------------------------ tools
    def describe(self) -> r.TwinDescription:
        s, norm = self.schema, self.model.normalization
        obs_space, act_space = s.gym_observation_space(), s.gym_action_space()

        def bound(space: Any, attr: str, i: int) -> float | None:
            return r.finite(float(np.asarray(getattr(space, attr)).reshape(-1)[i])) if hasattr(space, attr) else None

        obs = [r.ChannelInfo(name=c, unit=u, low=bound(obs_space, "low", i), high=bound(obs_space, "high", i),
                             train_mean=r.finite(norm.obs_mean[i]), train_std=r.finite(norm.obs_std[i]))
               for i, (c, u) in enumerate(zip(s.obs_channels, s.obs_units, strict=True))]
        if s.discrete:
            n = int(s.action_space["n"])
            acts = [r.ChannelInfo(name=s.action_channels[0], unit=s.action_units[0], low=0, high=n - 1)]
        else:
            acts = [r.ChannelInfo(name=c, unit=u, low=bound(act_space, "low", i), high=bound(act_space, "high", i),
                                  train_mean=r.finite(norm.action_mean[i]), train_std=r.finite(norm.action_std[i]))
                    for i, (c, u) in enumerate(zip(s.action_channels, s.action_units, strict=True))]
        identified = self.model.describe()  # a hybrid's identified parameters; empty for black-box models
        physics = json.loads(json.dumps(identified, default=str)) if identified else None
        config = self.model.config  # type: ignore[attr-defined]
        return r.TwinDescription(
            model_kind=self.model.model_type, model_file=self.config.model,
            config=json.loads(json.dumps(asdict(config), default=str)), dt=s.dt, observations=obs, actions=acts,
            discrete_actions=int(s.action_space["n"]) if s.discrete else None, reward_unit=s.reward_unit,
            store=self.data_card(), evaluation=None,
            calibration=asdict(self.calibration) if self.calibration else None, physics=physics,
            policy=self.config.policy, limits=asdict(self.limits))

    def data_card(self) -> dict[str, Any]:
        store = self.store()
        table = store.episodes()
        card: dict[str, Any] = {"path": self.config.store, "fingerprint": store.fingerprint(),
                                "episodes": len(table), "rows": store.num_steps, "dt": store.schema.dt,
                                "provenance": store.schema.provenance}
        if len(table):
            times = store.read_rows("time", 0, 1)[0], store.read_rows("time", store.num_steps - 1, store.num_steps)[0]
            card["time_span"] = [str(np.datetime64(int(t), "ns")) + "Z" for t in times]
            card["sources"] = {str(k): int(v) for k, v in table["source"].value_counts().items()}
        return card

    def model_card(self) -> dict[str, Any]:
        d = self.describe()
        return d.model_dump(include={"model_kind", "model_file", "config", "dt", "observations", "actions",
                                     "discrete_actions", "evaluation", "calibration", "physics"})

    def current_state(self) -> r.CurrentState:
        threshold = self.calibration.threshold if self.calibration else None
        if self.live is None:
            return latest_state(self.model, self.store(), self.anomaly, threshold, f"store {self.config.store}")
        if self.live.error is not None:
            raise UserError(f"--live {self.live.name}: the stream stopped: {self.live.error}")
        return latest_state(self.model, TrajectoryStore.open(self.live.store_path), self.anomaly, threshold,
                            f"live {self.live.name}")

    def simulate(self, spec_data: dict[str, Any], source: str = "spec") -> r.SimulateResult:
        spec = self._spec(spec_data, source)
        store = self.store()
        spec.check(store.schema)
        points = resolve_starts(spec, store)
        steps = self.limits.check(samples=spec.samples, horizon=spec.horizon,
                                  scenarios=len(points) * len(spec.interventions))
        call = self._call_dir("simulate")
        out = call / "scenarios.zarr"
        generate(spec, self.model, store, out, attrs={"model": self.config.model, "spec_file": source},
                 progress=False)
        table, calibration = summarize(out, spec)
        charts = plot_fans(out, call / "plots", spec)
        outcome_cols = {f"P({o.name})": o.name for o in spec.outcomes}
        scenarios = [r.ScenarioResult(
            scenario=row["scenario"], start=row["start"], intervention=row["intervention"],
            quantiles={k: r.finite(v) for k, v in row.items() if "@" in k},
            outcomes={name: r.finite(row[col]) for col, name in outcome_cols.items()})
            for row in table.to_dict("records")]
        cal = [{k: r.finite(v) for k, v in row.items()} for row in calibration.to_dict("records")
               if row["scenarios"] > 0]
        return r.SimulateResult(output=str(out), scenarios=scenarios, calibration=cal,
                                fan_charts=[str(p) for p in charts], imagined_steps=steps)

    def _spec(self, data: dict[str, Any], source: str) -> ScenarioSpec:
        """The spec from JSON, with generate.py's validation, minus what a server must not do for an agent."""
        spec = parse_spec(data, source, text=json.dumps(data))
        if spec.context > MAX_CONTEXT:
            raise LimitError(f"{source}: context {spec.context} is over the server's cap of {MAX_CONTEXT} recorded "
                             "rows; ask for a shorter context")
        for start in spec.starts:
            if isinstance(start, HistoryStart):
                raise ScenarioSpecError(f"{source}: {start.key}: history files are not read by the MCP server; "
                                        "start from the store's episodes ({episode: E, t: T}, sample, every)")
        allowed = ["random", *([self.config.policy] if self.config.policy else [])]
        for iv in spec.interventions:
            if iv.policy is not None and iv.policy not in allowed:
                raise ScenarioSpecError(f"{source}: interventions.{iv.name}.policy: {iv.policy!r}; this server "
                                        f"offers the policies {allowed} (it runs no other policy files or hooks)")
        return spec

    def _start(self, episode: int | str | None, t: int | None) -> dict[str, Any]:
        """A spec start: row t of the episode, by default the newest committed row of the store."""
        table = self.store().episodes()
        if not len(table):
            raise ToolInputError(f"--store {self.config.store}: no committed episodes yet")
        if episode is None:
            episode = len(table) - 1
        if t is None:
            pos = episode if isinstance(episode, int) else self.store().episode_index(episode)
            if not -len(table) <= pos < len(table):
                raise ToolInputError(f"start.episode {episode}: the store has {len(table)} episodes "
                                     f"(0..{len(table) - 1})")
            t = int(table["length"].iloc[pos]) - 1
        return {"episode": episode, "t": t}

    def compare(self, interventions: dict[str, Any], outcome: str, *, when: str = "any", lower_is_better: bool = True,
                episode: int | str | None = None, t: int | None = None, horizon: int = 30, samples: int = 64,
                context: int = 8, seed: int = 0) -> r.Comparison:
        self._condition(outcome, "outcome")  # named as the agent passed it, before the spec is built
        ivs = dict(interventions)
        if "factual" not in ivs:
            ivs = {"factual": {}, **ivs}
        data = {"horizon": horizon, "samples": samples, "seed": seed, "context": context,
                "starts": [self._start(episode, t)], "interventions": ivs,
                "outcomes": {"target": {"condition": outcome, "when": when}}, "plot": {"max_starts": 1}}
        result = self.simulate(data, source="arguments")
        ranked = []
        factual = next(s.outcomes["target"] for s in result.scenarios if s.intervention == "factual")
        for s in result.scenarios:
            p = float(s.outcomes["target"] or 0.0)
            ranked.append(r.Ranked(rank=0, intervention=s.intervention, probability=p,
                                   std_error=math.sqrt(p * (1 - p) / samples), interval90=_wilson(p, samples),
                                   difference_to_factual=None if factual is None else p - factual,
                                   quantiles=s.quantiles))
        ranked.sort(key=lambda x: x.probability if lower_is_better else -x.probability)
        for i, x in enumerate(ranked):
            x.rank = i + 1
        return r.Comparison(condition=outcome, when=when, lower_is_better=lower_is_better, samples=samples,
                            ranking=ranked, fan_chart=result.fan_charts[0] if result.fan_charts else None,
                            output=result.output)

    def recommend(self, *, episode: int | str | None = None, t: int | None = None, horizon: int = 20,
                  samples: int = 16, avoid: str | None = None, method: str = "auto", population: int = 32,
                  iterations: int = 3, context: int = 8, seed: int = 0) -> r.Recommendation:
        if method == "auto":
            method = "policy" if self.policy is not None else "cem"
        if method == "policy" and self.policy is None:
            raise ToolInputError("method 'policy': the server was started without --policy; use method 'cem' "
                                 "(planning in the model)")
        objective = Objective(self._condition(avoid, "avoid") if avoid else None)
        repeats = population * iterations + 2 if method == "cem" else 2
        self.limits.check(samples=samples, horizon=horizon, repeats=repeats)
        start = self._start(episode, t)
        spec = parse_spec({"horizon": horizon, "samples": samples, "context": context, "starts": [start],
                           "interventions": {"factual": {}}}, "arguments")
        store = self.store()
        points = resolve_starts(spec, store)
        data = load_starts(store, points, context, horizon)
        if method == "policy":
            assert self.policy is not None
            plan = plan_policy(self.model, data, self.policy, horizon=horizon, samples=samples, objective=objective,
                               seed=seed)
        else:
            deadline = time.monotonic() + 0.8 * self.limits.timeout_s
            plan = plan_cem(self.model, data, horizon=horizon, samples=samples, objective=objective, seed=seed,
                            config=CEMConfig(population=population, iterations=iterations), deadline=deadline)
        return r.Recommendation(
            method=plan.method, start=points[0].label, horizon=horizon,
            action_channels=list(self.schema.action_channels),
            plan=[[float(v) for v in row] for row in plan.actions], predicted=self._outcome(plan.outcome),
            baseline=self._outcome(plan.baseline), plans_evaluated=plan.evaluations)

    def _outcome(self, o: Outcome) -> r.PlannedOutcome:
        ret = o.reward.sum(-1)  # (S,)
        q = np.quantile(o.obs[:, -1], [0.05, 0.5, 0.95], axis=0)  # (3, D)
        final = {c: {"q05": r.finite(q[0, i]), "q50": r.finite(q[1, i]), "q95": r.finite(q[2, i])}
                 for i, c in enumerate(self.schema.obs_channels)}
        return r.PlannedOutcome(return_mean=float(ret.mean()), return_q05=float(np.quantile(ret, 0.05)),
                                return_q95=float(np.quantile(ret, 0.95)), p_avoid=o.p_avoid, final=final)


def _wilson(p: float, n: int, z: float = 1.645) -> tuple[float, float]:
    """A 90% Wilson interval of a probability estimated from n samples (sound also at p = 0 or 1)."""
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
