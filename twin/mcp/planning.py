"""Action plans from one start: the cross-entropy method over the learned model, or a trained policy in
closed loop. Both imagine with `scenarios.rollout.imagine_block`, the sampler generate.py uses.

    plan = plan_cem(model, start, horizon=30, samples=8, config=CEMConfig(), objective=Objective(), seed=0)

A plan is judged by its imagined futures: first by the probability of the outcome to avoid (when one is
given), then by the mean return (the model's predicted reward summed over the horizon). CEM draws
`population` open-loop action sequences, keeps the `elites` best, refits its sampling distribution
(a Gaussian per step and channel inside the action box, or per-step category probabilities for a
Discrete action) and repeats `iterations` times; the plan is the final mean (most likely categories).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from gymnasium import spaces

from policies.behaviour import Policy
from scenarios.outcomes import Condition
from scenarios.rollout import block_seed, imagine_block
from scenarios.starts import StartData
from twin.mcp.limits import LimitError
from worldmodel.interface import WorldModel


@dataclass(frozen=True)
class CEMConfig:
    """The cross-entropy method's budget (each iteration imagines population × samples futures)."""

    population: int = 32
    """Candidate action sequences per iteration."""
    elites: int = 4
    """Best candidates the sampling distribution is refitted to."""
    iterations: int = 3
    """Refits of the sampling distribution."""
    init_std: float = 0.5
    """First standard deviation, as a fraction of each action channel's range."""


@dataclass(frozen=True)
class Objective:
    """How plans are ranked: lowest probability of `avoid` (if given), then highest mean return."""

    avoid: Condition | None = None


@dataclass
class Outcome:
    """Imagined futures of one plan: obs (S, H, D), action (S, H, A), reward (S, H)."""

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    p_avoid: float | None


@dataclass
class Plan:
    """The recommended open-loop actions (H, A) and their imagined outcome; `baseline` is the outcome of
    holding the recorded (or last) actions, for comparison."""

    actions: np.ndarray
    outcome: Outcome
    baseline: Outcome
    method: str
    evaluations: int


def _judge(values: dict[str, np.ndarray], schema_obs: list[str], schema_act: list[str],
           objective: Objective) -> tuple[np.ndarray, np.ndarray]:
    """(n,) mean return and (n,) probability of the outcome to avoid (0 where none) of n candidates."""
    ret = values["reward"].sum(-1).mean(-1)  # (n, S, H) -> (n,)
    if objective.avoid is None:
        return ret, np.zeros_like(ret)
    c = objective.avoid.channel
    series = (values["reward"] if c == "reward" else values["obs"][..., schema_obs.index(c)] if c in schema_obs
              else values["action"][..., schema_act.index(c)])
    return ret, objective.avoid.holds(series).any(-1).mean(-1)


def _outcome(values: dict[str, np.ndarray], row: int, p: np.ndarray, objective: Objective) -> Outcome:
    return Outcome(obs=values["obs"][row], action=values["action"][row], reward=values["reward"][row],
                   p_avoid=float(p[row]) if objective.avoid is not None else None)


def _imagine(model: WorldModel, start: StartData, actions: np.ndarray, samples: int, seed: int,
             policy: Policy | None = None) -> dict[str, np.ndarray]:
    """Imagine n candidate plans (n, H, A) from the one start in `start` (all arrays with a leading 1)."""
    n = len(actions)
    rep = [np.repeat(x, n, 0) for x in (start.obs, start.prev_action, start.is_first)]
    policies = [(np.arange(n), policy)] if policy is not None else []
    return imagine_block(model, rep[0], rep[1], rep[2], actions, samples, seed, policies)


def _box(model: WorldModel) -> tuple[np.ndarray, np.ndarray] | None:
    space = model.schema.gym_action_space()
    if isinstance(space, spaces.Box):
        return np.asarray(space.low, np.float64), np.asarray(space.high, np.float64)
    return None


def plan_cem(model: WorldModel, start: StartData, *, horizon: int, samples: int, config: CEMConfig,
             objective: Objective, seed: int, deadline: float | None = None) -> Plan:
    """The CEM plan from `start` (one start's StartData); stops refitting at `deadline` (time.monotonic)."""
    schema = model.schema
    obs_names, act_names = list(schema.obs_channels), list(schema.action_channels)
    rng = np.random.default_rng(seed)
    baseline_actions = start.future_action[:, :horizon]  # (1, H, A) the recorded future, held past its end
    box = _box(model)
    if box is not None:
        low, high = box
        finite = np.isfinite(low) & np.isfinite(high)
        span = np.where(finite, high - low, 2.0)
        mean = np.clip(np.nan_to_num(baseline_actions[0]), low, high)  # (H, A) start from the recorded plan
        std = np.broadcast_to(config.init_std * span, mean.shape).copy()
    else:
        n_act = int(schema.action_space["n"])
        probs = np.full((horizon, n_act), 1.0 / n_act)  # (H, n) category probabilities per step
    evaluations = 0
    for it in range(config.iterations):
        if deadline is not None and time.monotonic() > deadline:
            if it == 0:
                raise LimitError("no time left to plan before the server's timeout")
            break
        if box is not None:
            draws = rng.normal(mean, std, size=(config.population, *mean.shape))
            cands = np.clip(draws, low, high)  # (P, H, A)
            cands[0] = mean  # the current mean is always a candidate
        else:
            cands = np.stack([[rng.choice(len(p), p=p) for p in probs] for _ in range(config.population)])[..., None]
            cands[0, :, 0] = probs.argmax(-1)
        values = _imagine(model, start, cands.astype(np.float64), samples, block_seed(seed, it))
        evaluations += len(cands)
        ret, p_avoid = _judge(values, obs_names, act_names, objective)
        elite = np.lexsort((-ret, p_avoid))[: config.elites]  # lowest risk first, then highest return
        if box is not None:
            mean = cands[elite].mean(0)
            std = np.maximum(cands[elite].std(0), 1e-3 * span)
        else:
            counts = np.stack([np.bincount(cands[elite, t, 0].astype(np.int64), minlength=probs.shape[1])
                               for t in range(horizon)])
            probs = 0.8 * counts / counts.sum(-1, keepdims=True) + 0.2 * probs  # smoothed, never a zero
    final = mean if box is not None else probs.argmax(-1)[:, None].astype(np.float64)
    pair = np.stack([final, np.nan_to_num(baseline_actions[0])])  # (2, H, A) plan and baseline, same draws
    values = _imagine(model, start, pair, samples, block_seed(seed, config.iterations))
    _, p_avoid = _judge(values, obs_names, act_names, objective)
    return Plan(actions=final, outcome=_outcome(values, 0, p_avoid, objective),
                baseline=_outcome(values, 1, p_avoid, objective), method="cem", evaluations=evaluations + 2)


def plan_policy(model: WorldModel, start: StartData, policy: Policy, *, horizon: int, samples: int,
                objective: Objective, seed: int) -> Plan:
    """A trained policy in closed loop over the imagined futures; the plan is the median action per step."""
    schema = model.schema
    baseline_actions = np.nan_to_num(start.future_action[:, :horizon])  # (1, H, A)
    seed = block_seed(seed, 0)
    closed = _imagine(model, start, baseline_actions, samples, seed, policy)
    held = _imagine(model, start, baseline_actions, samples, seed)
    _, p_closed = _judge(closed, list(schema.obs_channels), list(schema.action_channels), objective)
    _, p_held = _judge(held, list(schema.obs_channels), list(schema.action_channels), objective)
    actions = np.median(closed["action"][0], axis=0)  # (S, H, A) -> (H, A)
    return Plan(actions=actions, outcome=_outcome(closed, 0, p_closed, objective),
                baseline=_outcome(held, 0, p_held, objective), method="policy", evaluations=2)
