"""How good a policy is: its mean return on the real system, or in the learned env.

`real_return` is the one real-env return loop (the policy loop, the demo and the benchmarks use it):
it takes a trained SB3 agent (deterministic actions) or any batched policy (`policies.behaviour.Policy`,
e.g. `make_policy("random", space, seed)`), and runs episode k from `env.reset(seed=seed + k)`.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from policies.behaviour import Agent, Policy, deterministic_policy


def real_return(policy: Agent | Policy, env_id: str, episodes: int, seed: int) -> float:
    """Mean undiscounted return of `policy` over `episodes` episodes of the Gymnasium env `env_id`."""
    act = policy if callable(policy) else deterministic_policy(policy)
    env = gym.make(env_id)
    returns = []
    try:
        for k in range(episodes):
            obs, _ = env.reset(seed=seed + k)
            total, done = 0.0, False
            while not done:
                action = np.asarray(act(np.asarray(obs)[None]))[0]  # a batch of one
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return float(np.mean(returns))


def model_return(agent: Any, venv: Any, episodes: int) -> float:
    """Mean return of an SB3 agent's deterministic actions in the learned env (an SB3 VecEnv), over
    `episodes` finished episodes."""
    from stable_baselines3.common.evaluation import evaluate_policy

    mean, _ = evaluate_policy(agent, venv, n_eval_episodes=episodes, deterministic=True, warn=False)
    return float(np.mean(mean))
