"""Counterfactual scenario generation: ensembles of imagined futures under interventions.

    python generate.py --config configs/scenarios/pendulum.yaml --model MODEL --store p.zarr \\
        --out scenarios.zarr --plot plots/ [--devices 2] [--seed 0]

MODEL is a model file, a train.py run directory or an MLflow URI (`runs:/…`, `models:/…`); STORE is
the trajectory store the starting points come from. Every scenario is one starting point × one
intervention of the spec (docs/scenarios.md): the twin assimilates the recorded history up to the
start, then imagines `samples` futures of `horizon` steps under the intervention's actions.

The output (DESIGN contract 6) is a Zarr store `(scenario, sample, time, channel)` beside a summary
CSV and a calibration CSV (factual scenarios against the recorded future); `--plot DIR` adds fan
charts. With `--devices N` the blocks of scenarios are split over N processes (Lightning Fabric,
DDP), each writing its own region of the store; the result equals a 1-process run. The run is
tracked in MLflow (`MLFLOW_TRACKING_URI`, default sqlite:///mlflow.db). Ends by printing
`scenarios: …`, `summary: …`, `calibration: …`, `plots: …` and `run_id: …`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from data_pipeline.schema import StoreSchema
from data_pipeline.store import TrajectoryStore
from data_pipeline.windows import split_episodes
from policies.behaviour import make_policy
from scenarios.spec import (
    EveryStart,
    ExplicitStart,
    HistoryStart,
    Intervention,
    SampleStart,
    ScenarioSpec,
    ScenarioSpecError,
    load_spec,
)
from scenarios.store import (
    ScenarioIndex,
    ScenarioWriter,
    block_ranges,
    create_scenario_store,
    finish_scenario_store,
    format_summary,
    plot_fans,
    summarize,
)
from worldmodel.interface import Prediction, WorldModel

PRINT_HORIZONS = (1, 5, 10, 25, 50)


# ------------------------------------------------------------------------------------ starting points
@dataclass
class StartPoint:
    """Where a scenario starts: row `t` of a recorded episode, or the end of a history file."""

    label: str
    episode: int
    """Position in the store's episode table; -1 for a history file."""
    episode_id: str
    t: int
    time_ns: int = -1
    history: tuple[np.ndarray, np.ndarray] | None = None
    """(obs (T, D), action (T, A)) of a history file."""


def _episode_position(table: pd.DataFrame, episode: int | str, key: str, source: str) -> int:
    ids = table["id"].tolist()
    if isinstance(episode, str):
        if episode not in ids:
            raise ScenarioSpecError(f"{source}: {key}.episode: no committed episode with id {episode!r}")
        return ids.index(episode)
    if not 0 <= episode < len(ids):
        raise ScenarioSpecError(f"{source}: {key}.episode: {episode} is out of range; the store has "
                                f"{len(ids)} episodes (0..{len(ids) - 1})")
    return int(episode)


def _read_history(start: HistoryStart, schema: StoreSchema, source: str) -> tuple[np.ndarray, np.ndarray]:
    path = Path(start.path)
    if not path.exists():
        raise ScenarioSpecError(f"{source}: {start.key}: {path}: no such history file")
    with np.load(path) as data:
        if "obs" not in data or "action" not in data:
            raise ScenarioSpecError(f"{source}: {start.key}: {path} holds {sorted(data)}; expected arrays "
                                    "'obs' (T, obs_dim) and 'action' (T, action_dim)")
        obs, action = np.asarray(data["obs"], np.float32), np.asarray(data["action"], np.float64)
    if action.ndim == 1:
        action = action[:, None]
    d, a = schema.obs_dim, schema.action_dim
    if obs.ndim != 2 or obs.shape[1] != d or len(obs) < 1 or action.shape != (len(obs), a):
        raise ScenarioSpecError(f"{source}: {start.key}: {path} has obs {obs.shape} and action "
                                f"{action.shape}; expected obs (T, {d}) for {schema.obs_channels} and "
                                f"action (T, {a})")
    return obs, action


def resolve_starts(spec: ScenarioSpec, store: TrajectoryStore) -> list[StartPoint]:
    """The spec's starting points, in spec order, duplicates dropped; errors name the spec key."""
    table = store.episodes()
    lengths = table["length"].to_numpy(np.int64)
    ids = table["id"].astype(str).tolist()
    src, c = spec.source, spec.context
    points: list[StartPoint] = []

    def at(e: int, t: int) -> StartPoint:
        return StartPoint(label=f"ep{e}@t{t}", episode=e, episode_id=ids[e], t=t)

    for start in spec.starts:
        if isinstance(start, ExplicitStart):
            e = _episode_position(table, start.episode, start.key, src)
            if start.t > lengths[e] - 1:
                raise ScenarioSpecError(f"{src}: {start.key}.t: row {start.t} is past the end of episode {e} "
                                        f"({lengths[e]} rows); expected 0..{lengths[e] - 1}")
            points.append(at(e, start.t))
        elif isinstance(start, EveryStart):
            e = _episode_position(table, start.episode, start.key, src)
            last_row = int(lengths[e] - 1)
            first = min(c - 1, last_row) if start.first is None else start.first
            last = last_row if start.last is None else min(start.last, last_row)
            if first > last:
                raise ScenarioSpecError(f"{src}: {start.key}.from: row {first} is past row {last}, the "
                                        f"last of episode {e} ({lengths[e]} rows)")
            points.extend(at(e, t) for t in range(first, last + 1, start.every))
        elif isinstance(start, SampleStart):
            points.extend(_sample_starts(spec, store, start, lengths, at))
        else:
            obs, action = _read_history(start, store.schema, src)
            points.append(StartPoint(label=f"history:{Path(start.path).stem}", episode=-1, episode_id="",
                                     t=len(obs) - 1, history=(obs, action)))
    seen: set[str] = set()
    unique = []
    for p in points:  # the first occurrence of a start wins
        if p.label not in seen:
            seen.add(p.label)
            unique.append(p)
    if len(unique) < len(points):
        print(f"generate: {len(points) - len(unique)} duplicate starting points dropped", file=sys.stderr)
    rows = [int(table["start"].iloc[p.episode]) + p.t for p in unique if p.episode >= 0]
    if rows and store.has("time"):
        times = iter(store.array("time").get_orthogonal_selection((np.asarray(rows, np.int64),)).tolist())
        for p in unique:
            if p.episode >= 0:
                p.time_ns = int(next(times))
    return unique


def _sample_starts(spec: ScenarioSpec, store: TrajectoryStore, start: SampleStart, lengths: np.ndarray,
                   at: Callable[[int, int], StartPoint]) -> list[StartPoint]:
    """`count` distinct (episode, t) drawn uniformly from a split, with `context` rows of history and
    `horizon` rows of recorded future where the episodes allow it."""
    src, c, h = spec.source, spec.context, spec.horizon
    if start.split == "all":
        pool = np.arange(len(lengths))
    else:
        split = split_episodes(store, spec.split.seed, spec.split.val_fraction, spec.split.test_fraction)
        pool = split[start.split]
    if not len(pool):
        raise ScenarioSpecError(f"{src}: {start.key}.split: the {start.split} split of {store.path} is empty")
    first = np.minimum(c - 1, lengths[pool] - 1)
    last = lengths[pool] - 1 - h
    if not (last >= first).any():  # no episode holds a full recorded future: any row will do
        print(f"generate: {start.key}: no {start.split} episode holds context {c} + horizon {h} rows; "
              "sampling starts without a full recorded future", file=sys.stderr)
        last = lengths[pool] - 1
    counts = np.maximum(last - first + 1, 0)
    rng = np.random.default_rng(spec.seed if start.seed is None else start.seed)
    draws = np.sort(rng.choice(int(counts.sum()), size=min(start.count, int(counts.sum())), replace=False))
    edges = np.cumsum(counts)
    k = np.searchsorted(edges, draws, side="right")
    offsets = draws - (edges[k] - counts[k])
    return [at(int(pool[i]), int(first[i] + o)) for i, o in zip(k, offsets, strict=True)]


# ------------------------------------------------------------------------------------ recorded data
@dataclass
class StartData:
    """History and recorded future of a batch of starts (numpy, physical units)."""

    obs: np.ndarray
    """(n, C, D) assimilated observations (rows t-C+1..t; the first row repeated before an episode start)."""
    prev_action: np.ndarray
    """(n, C, A) action before each history row (0 where unknown)."""
    is_first: np.ndarray
    """(n, C) the history row starts an episode (or pads before its start)."""
    future_action: np.ndarray
    """(n, H, A) recorded actions a_t..a_{t+H-1}, the last one held past the recorded end."""
    factual_obs: np.ndarray
    """(n, H, D) recorded o_{t+1}..o_{t+H}, NaN past the recorded end."""


def load_starts(store: TrajectoryStore, points: list[StartPoint], context: int, horizon: int) -> StartData:
    """Read the rows a batch of starts needs with one orthogonal read per variable."""
    schema = store.schema
    n, c, h, d, a = len(points), context, horizon, schema.obs_dim, schema.action_dim
    rel = np.arange(-c, h + 1)  # rows t-C .. t+H around each start
    table = store.episodes()
    rows = np.zeros((n, len(rel)), np.int64)
    valid = np.zeros((n, len(rel)), bool)
    for i, p in enumerate(points):
        if p.episode >= 0:
            s0, length = int(table["start"].iloc[p.episode]), int(table["length"].iloc[p.episode])
            r = p.t + rel
            valid[i] = (r >= 0) & (r <= length - 1)
            rows[i] = s0 + np.clip(r, 0, length - 1)  # clipping pads with the episode's first row
    recorded = [i for i, p in enumerate(points) if p.episode >= 0]
    win_obs = np.full((n, len(rel), d), np.nan, np.float32)
    win_act = np.full((n, len(rel), a), np.nan, np.float64)
    if recorded:
        uniq, inverse = np.unique(rows[recorded], return_inverse=True)
        inverse = inverse.reshape(len(recorded), -1)
        win_obs[recorded] = store.array("obs").get_orthogonal_selection((uniq,))[inverse]
        acts = store.array("action").get_orthogonal_selection((uniq,)).astype(np.float64)
        if schema.discrete:
            acts[acts < 0] = np.nan  # the last row's fill value
        win_act[recorded] = acts[inverse]
    for i, p in enumerate(points):
        if p.history is not None:  # place a history file's rows in the same window layout
            obs, action = p.history
            k = min(len(obs), c + 1)
            win_obs[i, c + 1 - k : c + 1] = obs[-k:]
            win_act[i, c + 1 - k : c + 1] = action[-k:]
            win_obs[i, : c + 1 - k] = obs[0]
            valid[i, c + 1 - k : c + 1] = True
            win_act[i, c + 1 :] = np.nan
    hist_valid = valid[:, 1 : c + 1]
    # Row r starts an episode when r == 0; padded rows before it are marked too (observe resets on them).
    is_first = ~valid[:, :c] | ~hist_valid
    is_first[:, 0] = True  # the belief starts empty at the first history row, as in the model evaluation
    prev = np.where(is_first[..., None], 0.0, np.nan_to_num(win_act[:, :c]))
    future = win_act[:, c : c + h].copy()
    for i in range(n):
        known = np.flatnonzero(~np.isnan(future[i]).any(-1))
        if len(known) == 0:  # starting on the last row: hold the action that led there
            hold = win_act[i, c - 1] if not np.isnan(win_act[i, c - 1]).any() else np.zeros(a)
            future[i] = hold
        elif known[-1] < h - 1:
            future[i, known[-1] + 1 :] = future[i, known[-1]]
    factual = np.where(valid[:, c + 1 :, None], win_obs[:, c + 1 :], np.nan).astype(np.float32)
    return StartData(obs=win_obs[:, 1 : c + 1], prev_action=prev, is_first=is_first, future_action=future,
                     factual_obs=factual)


# ------------------------------------------------------------------------------------------ rollout
def block_seed(seed: int, block: int) -> int:
    """The generator seed of a block of scenarios: fixed by (spec seed, block), not by the rank."""
    return int(np.random.SeedSequence([seed, block]).generate_state(1)[0])


def _action_tensor(values: np.ndarray, schema: StoreSchema) -> torch.Tensor:
    if schema.discrete:
        return torch.as_tensor(np.rint(values[..., 0]), dtype=torch.int64)
    return torch.as_tensor(values, dtype=torch.float32)


def imagine_block(
    model: WorldModel,
    obs: np.ndarray,
    prev_action: np.ndarray,
    is_first: np.ndarray,
    actions: np.ndarray,
    samples: int,
    seed: int,
    policies: list[tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]] = (),
    clip: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Imagine `samples` futures per scenario in one batch of n·samples trajectories.

    obs (n, C, D), prev_action (n, C, A), is_first (n, C), actions (n, H, A). `policies` are (scenario
    rows, batched policy) pairs that choose their rows' actions from the imagined observations (closed
    loop); other rows follow `actions`. The batch layout and the generator are those of
    `worldmodel.evaluation.rollout_samples`, so factual scenarios reproduce the model evaluation.
    """
    schema = model.schema
    n, horizon = actions.shape[:2]
    device = model.device

    def rep(x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(samples, dim=0).to(device)

    generator = torch.Generator().manual_seed(seed)
    plan = rep(_action_tensor(actions, schema))  # (B, H, …)
    with torch.no_grad():
        state = model.initial_state(n * samples)
        state = model.observe(state, rep(torch.as_tensor(obs, dtype=torch.float32)),
                              rep(_action_tensor(prev_action, schema)), rep(torch.as_tensor(is_first)))
        if not policies:
            _, pred = model.imagine(state, plan, generator)
        else:
            rows = [(torch.as_tensor(r).repeat_interleave(samples) * samples
                     + torch.arange(samples).repeat(len(r)), fn) for r, fn in policies]
            current = rep(torch.as_tensor(obs[:, -1], dtype=torch.float32))
            steps = []
            for k in range(horizon):
                for idx, fn in rows:
                    chosen = np.asarray(fn(current[idx].cpu().numpy()), np.float64)
                    chosen = chosen.reshape(len(idx), -1)
                    if clip is not None:
                        chosen = np.clip(chosen, *clip)
                    plan[idx, k] = _action_tensor(chosen, schema).to(device)
                state, p = model.step(state, plan[:, k], generator)
                steps.append(p)
                current = p.obs
            pred = Prediction.stack(steps)

    def out(x: torch.Tensor) -> np.ndarray:
        x = x.detach().cpu().numpy()
        return x.reshape(n, samples, *x.shape[1:])

    action = out(plan)
    return {"obs": out(pred.obs.float()), "action": action[..., None] if schema.discrete else action,
            "reward": out(pred.reward.float()), "terminated": out(pred.terminated.float()),
            "uncertainty": out(pred.uncertainty.float())}


class ScenarioRunner:
    """Turns blocks of scenarios (start-major × interventions) into imagined arrays."""

    def __init__(self, spec: ScenarioSpec, model: WorldModel, store: TrajectoryStore,
                 points: list[StartPoint]) -> None:
        self.spec, self.model, self.store, self.points = spec, model, store, points
        self.schema = store.schema
        space = self.schema.gym_action_space()
        self.clip = (np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)) if (
            spec.clip_actions and not self.schema.discrete) else None
        self._policies: dict[str, Callable[[np.ndarray], np.ndarray]] = {}

    def policy(self, iv: Intervention, seed: int) -> Callable[[np.ndarray], np.ndarray]:
        if iv.policy == "random":  # reseeded per block, so the draw does not depend on the rank
            return make_policy("random", self.schema.gym_action_space(), seed)
        if iv.policy not in self._policies:
            self._policies[iv.policy] = make_policy(iv.policy, self.schema.gym_action_space())
        return self._policies[iv.policy]

    def run(self, block: int, a: int, b: int) -> dict[str, np.ndarray]:
        spec, channels = self.spec, self.schema.action_channels
        n_iv = len(spec.interventions)
        first, last = a // n_iv, (b - 1) // n_iv
        data = load_starts(self.store, self.points[first : last + 1], spec.context, spec.horizon)
        seed = block_seed(spec.seed, block)
        obs, prev, is_first, actions, factual, policies = [], [], [], [], [], {}
        for i in range(a, b):
            s, iv = i // n_iv - first, spec.interventions[i % n_iv]
            obs.append(iv.perturb(data.obs[s], self.schema.obs_channels))
            prev.append(data.prev_action[s])
            is_first.append(data.is_first[s])
            act = iv.apply(data.future_action[s], channels)
            actions.append(np.clip(act, *self.clip) if self.clip is not None else act)
            factual.append(data.factual_obs[s])
            if iv.policy:
                policies.setdefault(iv.name, (iv, []))[1].append(i - a)
        obs_arr = np.stack(obs)
        closed_loop = [(np.asarray(r), self.policy(iv, seed)) for iv, r in policies.values()]
        result = imagine_block(self.model, obs_arr, np.stack(prev), np.stack(is_first), np.stack(actions),
                               spec.samples, seed, closed_loop, self.clip)
        result["factual_obs"] = np.stack(factual)
        result["start_obs"] = obs_arr[:, -1]
        return result


# ------------------------------------------------------------------------------------------ driver
def scenario_index(spec: ScenarioSpec, points: list[StartPoint]) -> ScenarioIndex:
    pairs = [(p, iv) for p in points for iv in spec.interventions]
    return ScenarioIndex(
        name=[f"{p.label}/{iv.name}" for p, iv in pairs],
        start=[p.label for p, _ in pairs],
        intervention=[iv.name for _, iv in pairs],
        start_episode=[p.episode_id for p, _ in pairs],
        start_episode_index=[p.episode for p, _ in pairs],
        start_t=[p.t for p, _ in pairs],
        start_time=[p.time_ns for p, _ in pairs],
    )


def generate(
    spec: ScenarioSpec,
    model: WorldModel,
    store: TrajectoryStore,
    out: str | Path,
    *,
    attrs: dict[str, object],
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
    overwrite: bool = False,
    progress: bool = True,
) -> ScenarioIndex:
    """Write the scenario store at `out`; this rank imagines its contiguous share of the blocks.

    Rank 0 creates the store; every rank must call this (it synchronizes with `barrier`).
    """
    spec.check(store.schema)
    ours, theirs = store.schema, model.schema
    if (ours.obs_channels, ours.action_channels) != (theirs.obs_channels, theirs.action_channels):
        raise ValueError(f"{store.path}: channels {ours.obs_channels} / {ours.action_channels} differ from "
                         f"the model's {theirs.obs_channels} / {theirs.action_channels}")
    points = resolve_starts(spec, store)
    index = scenario_index(spec, points)
    blocks = block_ranges(len(index), spec.block_scenarios)
    exists = Path(out).exists() and not overwrite
    barrier()  # every rank has looked at `out` before rank 0 creates it
    if exists:
        raise FileExistsError(f"{out} already exists; pass --overwrite or choose another --out")
    if rank == 0:
        attrs = {"store": str(store.path), "store_fingerprint": store.fingerprint(), **attrs,
                 "obs_std": [float(x) for x in model.normalization.obs_std], "spec": spec.text,
                 "seed": spec.seed, "horizon": spec.horizon, "samples": spec.samples, "context": spec.context,
                 "model_type": model.model_type}
        create_scenario_store(out, index, store.schema, samples=spec.samples, horizon=spec.horizon,
                              block=spec.block_scenarios, overwrite=overwrite, attrs=attrs)
    barrier()
    mine = range(rank * len(blocks) // world_size, (rank + 1) * len(blocks) // world_size)
    runner = ScenarioRunner(spec, model, store, points)
    writer = ScenarioWriter(out)
    total = sum(blocks[k][1] - blocks[k][0] for k in mine)
    with tqdm(total=total, unit="scenario", desc="scenarios", disable=not progress or rank != 0) as bar:
        for k in mine:
            a, b = blocks[k]
            writer.write(a, runner.run(k, a, b))
            bar.update(b - a)
    barrier()
    if rank == 0:
        finish_scenario_store(out)
    barrier()
    return index


# ------------------------------------------------------------------------------------------ tracking
def track(args: argparse.Namespace, spec: ScenarioSpec, fingerprint: str, n_scenarios: int,
          files: dict[str, Path], plot_dir: Path | None, table: pd.DataFrame,
          calibration: pd.DataFrame) -> str:
    """Log the run to MLflow: spec, CSVs and plots as artifacts, outcome probabilities and calibration
    as metrics, tags linking the model's run and the store. Returns the run id."""
    import mlflow
    from mlflow.entities import Metric

    from tracking.lineage import lineage_tags
    from tracking.logger import configure_client, tracking_uri

    configure_client()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(tracking_uri())
    mlflow.set_experiment(args.experiment)
    tags = {"twinworld.stage": "scenarios", "twinworld.model_uri": args.model, "data.store": args.store,
            "data.fingerprint": fingerprint, **lineage_tags(args.model)}
    metrics: dict[str, float] = {}
    for col in [c for c in table.columns if c.startswith("P(") and not c.endswith(":diff")]:
        check = col[2:-1]
        for scenario, p in zip(table["scenario"], table[col], strict=True):
            metrics[f"outcome/{check}/{re.sub(r'[^A-Za-z0-9_./ -]', '_', scenario)}"] = float(p)
        for iv, p in table.groupby("intervention")[col].mean().items():
            metrics[f"outcome_mean/{check}/{iv}"] = float(p)
    for row in calibration.itertuples():
        if row.scenarios > 0:
            for name in ("coverage90", "nrmse", "nrmse_median"):
                metrics[f"calibration/{name}/h{row.horizon}"] = float(getattr(row, name))
    with mlflow.start_run(run_name=f"scenarios-{Path(args.config).stem}-s{spec.seed}", tags=tags) as run:
        mlflow.log_params({"config": args.config, "model": args.model, "store": args.store, "out": args.out,
                           "seed": spec.seed, "horizon": spec.horizon, "samples": spec.samples,
                           "context": spec.context, "scenarios": n_scenarios, "devices": args.devices,
                           "interventions": ",".join(i.name for i in spec.interventions)[:6000]})
        mlflow.log_text(spec.text, f"spec/{Path(args.config).name}")
        for path in files.values():
            mlflow.log_artifact(str(path), artifact_path="summary")
        if plot_dir is not None:
            mlflow.log_artifacts(str(plot_dir), artifact_path="plots")
        client, now = mlflow.MlflowClient(), int(1000 * time.time())
        rows = [Metric(k, v, now, 0) for k, v in metrics.items() if np.isfinite(v)]
        for i in range(0, len(rows), 1000):  # log_batch takes at most 1000 metrics per call
            client.log_batch(run.info.run_id, metrics=rows[i : i + 1000])
        return run.info.run_id


# ------------------------------------------------------------------------------------------ command line
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="generate.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="scenario spec YAML (configs/scenarios/*.yaml)")
    parser.add_argument("--model", required=True, help="model file, train.py run dir, or MLflow URI")
    parser.add_argument("--store", required=True, help="trajectory store the starting points come from")
    parser.add_argument("--out", required=True, help="output scenario store (.zarr); CSVs go beside it")
    parser.add_argument("--plot", default=None, metavar="DIR", help="write PNG fan charts into DIR")
    parser.add_argument("--devices", type=int, default=1, help="processes to split the scenarios over (DDP)")
    parser.add_argument("--num-nodes", type=int, default=1, help="nodes (on a cluster, e.g. under SLURM)")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu, cuda, mps or auto (Lightning names)")
    parser.add_argument("--seed", type=int, default=None, help="override the spec's seed")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out store")
    parser.add_argument("--experiment", default="twinworld", help="MLflow experiment name")
    parser.add_argument("--no-mlflow", action="store_true", help="skip MLflow tracking (no run_id)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def held_out(spec: ScenarioSpec, store: TrajectoryStore, index: ScenarioIndex) -> str:
    """How many factual scenarios start in held-out (test split) episodes, as words."""
    split = split_episodes(store, spec.split.seed, spec.split.val_fraction, spec.split.test_fraction)
    test = set(split["test"].tolist())
    name = spec.factual.name if spec.factual else None
    episodes = [e for e, iv in zip(index.start_episode_index, index.intervention, strict=True) if iv == name]
    return f"{sum(e in test for e in episodes)} of {len(episodes)} starting in held-out test episodes"


def single_device(accelerator: str) -> torch.device:
    """The device of a 1-process run, from a Lightning accelerator name."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    if accelerator == "mps" or (accelerator == "auto" and torch.backends.mps.is_available()):
        return torch.device("mps")
    if accelerator in ("cpu", "auto"):
        return torch.device("cpu")
    raise ValueError(f"--accelerator {accelerator!r}; expected cpu, gpu, cuda, mps or auto")


def main(argv: list[str] | None = None) -> dict[str, str]:
    """Run the command line; returns the printed `key: value` results (on rank 0)."""
    args = parse_args(argv)
    spec = load_spec(args.config)
    if args.seed is not None:
        spec = spec.with_seed(args.seed)
    rank, world_size, barrier = 0, 1, lambda: None
    if args.devices > 1 or args.num_nodes > 1:
        # Lightning launches the other ranks (this script again, under DDP) and finds them on a cluster.
        from lightning.fabric import Fabric

        fabric = Fabric(accelerator=args.accelerator, devices=args.devices, num_nodes=args.num_nodes,
                        strategy="ddp")
        fabric.launch()
        rank, world_size, barrier = fabric.global_rank, fabric.world_size, fabric.barrier
        device = fabric.device
        if device.type == "cpu":  # ranks share the cores instead of oversubscribing them
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    else:
        device = single_device(args.accelerator)  # one process: no need to import Lightning
    if args.model.startswith(("runs:/", "models:/")):
        import mlflow

        from tracking.logger import tracking_uri

        mlflow.set_tracking_uri(tracking_uri())
    import worldmodel

    model = worldmodel.load(args.model, map_location=device)
    store = TrajectoryStore.open(args.store)
    fingerprint = store.fingerprint()
    attrs = {"model": args.model, "spec_file": str(args.config)}
    index = generate(spec, model, store, args.out, attrs=attrs, rank=rank, world_size=world_size,
                     barrier=barrier, overwrite=args.overwrite, progress=not args.no_progress)
    if rank != 0:
        return {}
    stem = str(args.out).rstrip("/").removesuffix(".zarr")
    files = {"summary": Path(f"{stem}.summary.csv"), "calibration": Path(f"{stem}.calibration.csv")}
    table, calibration = summarize(args.out, spec)
    table.to_csv(files["summary"], index=False)
    calibration.to_csv(files["calibration"], index=False)
    print(format_summary(table, spec))
    shown = calibration[calibration["horizon"].isin([*(h for h in PRINT_HORIZONS if h <= spec.horizon),
                                                     spec.horizon]) & (calibration["scenarios"] > 0)]
    if len(shown):
        print(f"\ncalibration of the factual scenarios against the recorded future, "
              f"{held_out(spec, store, index)} (coverage90: fraction inside the 90% band; "
              "nrmse: error of the sample mean / median):")
        print(shown.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    plot_dir = Path(args.plot) if args.plot else None
    if plot_dir is not None:
        plot_fans(args.out, plot_dir, spec)
    result = {"scenarios": str(args.out), **{k: str(v) for k, v in files.items()}}
    if plot_dir is not None:
        result["plots"] = str(plot_dir)
    if not args.no_mlflow:
        result["run_id"] = track(args, spec, fingerprint, len(index), files, plot_dir, table, calibration)
    for key, value in result.items():
        print(f"{key}: {value}")
    return result


if __name__ == "__main__":
    try:
        main()
    except (ScenarioSpecError, FileExistsError, FileNotFoundError) as err:
        raise SystemExit(f"generate: {err}") from None
