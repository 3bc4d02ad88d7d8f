"""Behaviour policies named on a command line: `random`, a policy file, or `module:function`.

Every policy maps a batch of observations (batch, *obs_shape) to a batch of actions
(batch, *action_shape), as numpy arrays.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from gymnasium import spaces

from data_pipeline.hooks import import_function
from policies.files import check_action_space, is_policy_file, load_sb3, read_policy_info

Policy = Callable[[np.ndarray], np.ndarray]
"""A batched policy: observations (B, *obs_shape) -> actions (B, *action_shape)."""


class Agent(Protocol):
    """What a trained stable-baselines3 agent offers an evaluator: `predict`."""

    def predict(self, observation: Any, state: Any = None, episode_start: Any = None,
                deterministic: bool = False) -> tuple[Any, Any]: ...


def deterministic_policy(agent: Agent) -> Policy:
    """An SB3 agent's deterministic actions as a batched policy."""

    def sb3_policy(obs: np.ndarray) -> np.ndarray:
        action, _ = agent.predict(obs, deterministic=True)
        return np.asarray(action)

    return sb3_policy


def make_policy(spec: str, action_space: spaces.Space, seed: int | None = None, trust_pickle: bool = False) -> Policy:
    """Build a batched policy from `random`, a policy file (`policy.zip`, `.json` or `.safetensors`: see
    `policies.files`), or `module:function` (a hook the user names, imported and run as code).

    A policy file is rebuilt from its JSON and weights; a bare SB3 zip is loaded only with `trust_pickle`.
    """
    if spec == "random":
        space = action_space
        space.seed(seed)

        def random_policy(obs: np.ndarray) -> np.ndarray:
            return np.stack([np.asarray(space.sample()) for _ in range(len(obs))])

        return random_policy
    if is_policy_file(spec):
        if not Path(spec).exists():
            raise FileNotFoundError(f"policy {spec!r}: no such file")
        check_action_space(spec, read_policy_info(spec), action_space)
        return deterministic_policy(load_sb3(spec, trust_pickle=trust_pickle))
    func = import_function(spec)

    def function_policy(obs: np.ndarray) -> np.ndarray:
        return np.asarray(func(obs))

    return function_policy
