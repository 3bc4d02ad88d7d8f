"""The sampler loop: imagined futures for blocks of scenarios, batched on the model's device.

A block is a contiguous range of scenarios (start-major × interventions). `ScenarioRunner.run` reads
the block's recorded rows, applies the interventions and calls `imagine_block`, which assimilates
the histories and imagines `samples` futures per scenario in one batch. Each block's generator is
seeded from (spec seed, block index), never from the rank, so any number of processes gives the
same result.

A block's memory is fixed by `block_trajectories` (scenarios × samples per block), not by the number of
scenarios; `check_memory` refuses a spec whose block would not fit before anything is written.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from gymnasium import spaces

from data_pipeline.errors import UserError
from data_pipeline.schema import StoreSchema
from data_pipeline.store import TrajectoryStore
from policies.behaviour import Policy, make_policy
from scenarios.spec import Intervention, ScenarioSpec
from scenarios.starts import StartPoint, load_starts
from worldmodel.ensemble import Uncertainty, uncertainty_mode
from worldmodel.interface import Prediction, WorldModel

COPIES_PER_VALUE = 8
"""Copies of each imagined float32 value alive at a block's peak: the model's per-step outputs and their
stack, the numpy arrays, the encoded chunks, and the summary's float64 copy and quantile sort
(measured: 6-10x the raw arrays on CPU with a tiny ensemble)."""


class MemoryBudgetError(UserError, ValueError):
    """A scenario spec whose blocks cannot fit the memory budget: names the spec, the block and the budget."""


def block_bytes(spec: ScenarioSpec, schema: StoreSchema, scenarios: int) -> int:
    """Rough peak memory of the largest block of `scenarios`: its trajectories × horizon × values per
    step, times the copies a block goes through. It stops growing once a block is full (at
    `block_trajectories`); a model's own activations come on top."""
    trajectories = min(spec.block_scenarios, scenarios) * spec.samples  # ≤ max(block_trajectories, samples)
    values = schema.obs_dim + schema.action_dim + 3  # obs, action, reward, terminated, uncertainty
    return trajectories * spec.horizon * values * 4 * COPIES_PER_VALUE


def memory_budget(fraction: float = 0.5) -> int:
    """The default budget of a block: a fraction of the memory available now (psutil)."""
    import psutil

    return int(psutil.virtual_memory().available * fraction)


def check_memory(spec: ScenarioSpec, schema: StoreSchema, scenarios: int, budget: int) -> None:
    """Refuse, before anything is written, a spec whose block would need more than `budget` bytes."""
    need = block_bytes(spec, schema, scenarios)
    if need <= budget:
        return
    block = min(spec.block_scenarios, scenarios)
    if block > 1:
        hint = f"lower block_trajectories (now {spec.block_trajectories})"
    else:  # one scenario's samples alone are the block
        hint = f"lower samples (now {spec.samples}) or horizon (now {spec.horizon})"
    raise MemoryBudgetError(
        f"{spec.source}: a block of {block} scenario(s) × {spec.samples} samples × {spec.horizon} "
        f"steps × {schema.obs_dim + schema.action_dim + 3} values needs about {_size(need)}, over the memory "
        f"budget of {_size(budget)} (--max-memory); {hint} in the spec, or raise --max-memory"
    )


def _size(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


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
    policies: Sequence[tuple[np.ndarray, Policy]] = (),
    clip: tuple[np.ndarray, np.ndarray] | None = None,
    uncertainty: Uncertainty = "elites",
) -> dict[str, np.ndarray]:
    """Imagine `samples` futures per scenario in one batch of n·samples trajectories.

    obs (n, C, D), prev_action (n, C, A), is_first (n, C), actions (n, H, A). `policies` are (scenario
    rows, batched policy) pairs that choose their rows' actions from the imagined observations (closed
    loop); other rows follow `actions`. The batch layout and the generator are those of
    `worldmodel.evaluation.rollout_samples`, so factual scenarios reproduce the model evaluation.
    `uncertainty` (`worldmodel.ensemble.Uncertainty`): "elites" (the default, the stored `uncertainty` is
    the ensemble's disagreement) or "none"/"own" for a plain rollout (the same futures, `uncertainty` 0,
    each trajectory's member run alone).
    """
    schema = model.schema
    n, horizon = actions.shape[:2]
    device = model.device

    def rep(x: torch.Tensor) -> torch.Tensor:  # (n, …) -> (n·samples, …), a scenario's samples adjacent
        return x.repeat_interleave(samples, dim=0).to(device)

    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode(), uncertainty_mode(model, uncertainty):
        plan = rep(_action_tensor(actions, schema))  # (B, H, …)
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

    def out(x: torch.Tensor) -> np.ndarray:  # (n·samples, H, …) -> (n, samples, H, …)
        values = x.detach().cpu().numpy()
        return values.reshape(n, samples, *values.shape[1:])

    action = out(plan)
    return {"obs": out(pred.obs.float()), "action": action[..., None] if schema.discrete else action,
            "reward": out(pred.reward.float()), "terminated": out(pred.terminated.float()),
            "uncertainty": out(pred.uncertainty.float())}


class ScenarioRunner:
    """Turns blocks of scenarios (start-major × interventions) into imagined arrays."""

    def __init__(self, spec: ScenarioSpec, model: WorldModel, store: TrajectoryStore,
                 points: list[StartPoint], uncertainty: Uncertainty = "elites") -> None:
        self.spec, self.model, self.store, self.points = spec, model, store, points
        self.uncertainty = uncertainty  # see `imagine_block`
        self.schema = store.schema
        space = self.schema.gym_action_space()
        self.clip: tuple[np.ndarray, np.ndarray] | None = None
        if spec.clip_actions and isinstance(space, spaces.Box):  # a Discrete action needs no clipping
            self.clip = (np.asarray(space.low, np.float64), np.asarray(space.high, np.float64))
        self._policies: dict[str, Policy] = {}

    def policy(self, name: str, seed: int) -> Policy:
        """The policy an intervention names; `random` is reseeded per block, so its draw does not depend
        on the rank, and the others are loaded once."""
        if name == "random":
            return make_policy("random", self.schema.gym_action_space(), seed)
        if name not in self._policies:
            self._policies[name] = make_policy(name, self.schema.gym_action_space())
        return self._policies[name]

    def run(self, block: int, a: int, b: int) -> dict[str, np.ndarray]:
        """The arrays of scenarios [a, b) (block number `block`), first dimension b - a."""
        spec, channels = self.spec, self.schema.action_channels
        n_iv = len(spec.interventions)
        first, last = a // n_iv, (b - 1) // n_iv
        data = load_starts(self.store, self.points[first : last + 1], spec.context, spec.horizon)
        seed = block_seed(spec.seed, block)
        obs, prev, is_first, actions, factual = [], [], [], [], []
        policies: dict[str, tuple[Intervention, list[int]]] = {}
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
        closed_loop = [(np.asarray(r), self.policy(iv.policy, seed)) for iv, r in policies.values() if iv.policy]
        result = imagine_block(self.model, obs_arr, np.stack(prev), np.stack(is_first), np.stack(actions),
                               spec.samples, seed, closed_loop, self.clip, self.uncertainty)
        result["factual_obs"] = np.stack(factual)
        result["start_obs"] = obs_arr[:, -1]
        return result
