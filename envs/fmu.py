"""`FMU-v0`: an FMI 2.0 co-simulation FMU as a Gymnasium environment.

    gymnasium.make("FMU-v0", fmu="osc.fmu", config="osc.yaml")
    python -m data_pipeline record --env fmu:osc.fmu --fmu-config osc.yaml --episodes 20 --out osc.zarr

The config (`fmu.config.FMUConfig`, docs/fmu.md) names the FMU inputs that form the action and the
outputs that form the observation. An FMU holds compiled code: it runs because you name it.

- **Action space**: `Box(low, high, (n_actions,), float32)` from the config's action bounds; actions
  outside are clipped before they reach the FMU.
- **Observation space**: `Box(-inf, inf, (n_observations,), float32)`, the outputs after each step.
- **Reward**: the config's `reward` formula `f(obs, action, next_obs) -> (B,)` (batched numpy, as
  `envs.rewards`), else 0.
- **Start state**: the FMU re-initialized with the config's parameters and start values; a `[low, high]`
  range is drawn from the env's seeded generator at every reset. `reset(options={"values": {name: v}})`
  fixes some of them for one episode.
- **Episode end**: terminated by the config's `termination` formula (else never); truncated after the
  config's `max_episode_steps`.
- **Store**: channel names and units come from the FMU's model description (`store_channels`), the
  step from the config's `dt`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from data_pipeline.hooks import import_function
from fmu.config import FMUConfig, load_fmu_config
from fmu.simulator import FMUSimulator


class FMUEnv(gym.Env):
    """An FMU stepped by `dt` per action (see the module docstring for the spec)."""

    metadata = {"render_modes": []}

    def __init__(self, fmu: str | Path, config: str | Path | FMUConfig, render_mode: str | None = None) -> None:
        self.config = config if isinstance(config, FMUConfig) else load_fmu_config(config)
        self.simulator = FMUSimulator(fmu, self.config)
        self.dt = self.config.dt
        self.render_mode = render_mode
        low = np.array([a.low for a in self.config.actions], np.float32)
        high = np.array([a.high for a in self.config.actions], np.float32)
        self.action_space: spaces.Box = spaces.Box(low, high, dtype=np.float32)
        self.observation_space = spaces.Box(-np.inf, np.inf, (len(self.config.observations),), np.float32)
        checked = self.simulator.fmu
        self.store_channels = {
            "obs_channels": [v.name for v in checked.observations],
            "obs_units": [v.unit for v in checked.observations],
            "action_channels": [v.name for v in checked.actions],
            "action_units": [v.unit for v in checked.actions],
        }
        """Channel names and units a store recorded from this env takes (read by data_pipeline.record)."""
        self.store_provenance = {"fmu": str(checked.path), "fmu_guid": str(checked.description.guid),
                                 "fmu_model": str(checked.description.modelName),
                                 "fmu_config": self.config.model_dump(mode="json")}
        self._reward = import_function(self.config.reward) if self.config.reward else None
        self._termination = import_function(self.config.termination) if self.config.termination else None
        self._obs: np.ndarray | None = None
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        values = (options or {}).get("values")
        self._obs = self.simulator.reset(self.np_random, values).astype(np.float32)
        self._steps = 0
        return self._obs.copy(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self._obs is None:
            raise gym.error.ResetNeeded("FMU-v0: call reset() before step()")
        action = np.clip(np.asarray(action, np.float32).reshape(self.action_space.shape), self.action_space.low,
                         self.action_space.high)
        next_obs = self.simulator.step(action).astype(np.float32)
        batch = (self._obs[None], action[None], next_obs[None])  # (1, dim) each: the formulas are batched
        reward = float(np.asarray(self._reward(*batch)).reshape(-1)[0]) if self._reward else 0.0
        terminated = bool(np.asarray(self._termination(*batch)).reshape(-1)[0]) if self._termination else False
        self._steps += 1
        truncated = self._steps >= self.config.max_episode_steps
        self._obs = next_obs
        return next_obs.copy(), reward, terminated, truncated, {}

    def close(self) -> None:
        self.simulator.close()
