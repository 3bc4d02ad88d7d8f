"""Behaviour policies named on a command line: `random`, a stable-baselines3 zip, or `module:function`.

Every policy maps a batch of observations (batch, *obs_shape) to a batch of actions
(batch, *action_shape), as numpy arrays.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from gymnasium import spaces

from data_pipeline.hooks import import_function

Policy = Callable[[np.ndarray], np.ndarray]

_SB3_ALGOS = ("SAC", "TD3", "DDPG", "PPO", "A2C", "DQN")


def sb3_algorithm_of(path: str | Path) -> str:
    """The stable-baselines3 algorithm class name a saved zip was made by (read from its metadata)."""
    with zipfile.ZipFile(path) as zf:
        data = json.loads(zf.read("data"))
    module = str(data.get("policy_class", {}).get(":serialized:", "")) + json.dumps(data.get("policy_class"))
    for name in _SB3_ALGOS:
        if f"stable_baselines3.{name.lower()}." in module:
            return name
    if "stable_baselines3.common.policies" in module:  # PPO and A2C share ActorCriticPolicy
        return "PPO" if "clip_range" in data else "A2C"
    raise ValueError(f"{path}: cannot tell which stable-baselines3 algorithm saved this zip")


def load_sb3(path: str | Path, device: str = "cpu"):  # noqa: ANN201 - returns an SB3 BaseAlgorithm
    """Load a stable-baselines3 model zip, whatever algorithm saved it."""
    import stable_baselines3

    algo = getattr(stable_baselines3, sb3_algorithm_of(path))
    return algo.load(str(path), device=device)


def make_policy(spec: str, action_space: spaces.Space, seed: int | None = None) -> Policy:
    """Build a batched policy from `random`, a path to an SB3 `.zip`, or `module:function`."""
    if spec == "random":
        space = action_space
        space.seed(seed)

        def random_policy(obs: np.ndarray) -> np.ndarray:
            return np.stack([np.asarray(space.sample()) for _ in range(len(obs))])

        return random_policy
    if spec.endswith(".zip"):
        if not Path(spec).exists():
            raise FileNotFoundError(f"policy {spec!r}: no such file")
        model = load_sb3(spec)

        def sb3_policy(obs: np.ndarray) -> np.ndarray:
            action, _ = model.predict(obs, deterministic=True)
            return np.asarray(action)

        return sb3_policy
    func = import_function(spec)

    def function_policy(obs: np.ndarray) -> np.ndarray:
        return np.asarray(func(obs))

    return function_policy
