"""The zoo's own Gymnasium env with a structured (Dict) observation, recorded as `zoo_envs:TwoMassMotor-v0`.

    python -m data_pipeline record --env zoo_envs:TwoMassMotor-v0 --episodes 20 --out motor.zarr
    (with benchmarks/ on PYTHONPATH: importing this module registers the env)

A DC motor drives a load through a flexible shaft (a two-mass drive, as in conveyors and robot joints):
motor current i, motor speed w_m, shaft twist phi, load speed w_l; the action is the armature voltage.
The observation is a nested Dict, as a drive's fieldbus reports it, which `record` flattens into the
channels load.speed, load.twist, motor.current, motor.speed (keys in sorted order).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

DT = 0.01  # s
ENV_ID = "TwoMassMotor-v0"


class TwoMassMotor(gym.Env):
    """Euler-integrated two-mass drive at 100 Hz with a little process noise; 200 steps per episode."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self) -> None:
        scalar = spaces.Box(-np.inf, np.inf, (), np.float32)
        self.observation_space = spaces.Dict({
            "motor": spaces.Dict({"current": scalar, "speed": scalar}),
            "load": spaces.Dict({"speed": scalar, "twist": scalar}),
        })
        self.action_space = spaces.Box(-24.0, 24.0, (1,), np.float32)  # armature voltage, V
        self.state = np.zeros(4)

    def _obs(self) -> dict[str, dict[str, np.ndarray]]:
        i, w_m, phi, w_l = (np.float32(v) for v in self.state)
        return {"motor": {"current": np.array(i), "speed": np.array(w_m)},
                "load": {"speed": np.array(w_l), "twist": np.array(phi)}}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        super().reset(seed=seed)
        self.state = self.np_random.normal(0, [0.5, 5.0, 0.05, 5.0])
        return self._obs(), {}

    def step(self, action: np.ndarray) -> tuple[Any, float, bool, bool, dict]:
        i, w_m, phi, w_l = self.state
        u = float(np.clip(np.asarray(action, np.float64).reshape(-1)[0], -24.0, 24.0))
        # R = 1 Ω, L = 0.05 H, k = 0.1 V·s, J_m = 0.01, J_l = 0.05 kg·m², shaft c = 2 N·m/rad, d = 0.05, friction.
        torque = 2.0 * phi + 0.05 * (w_m - w_l)
        rates = np.array([(u - 1.0 * i - 0.1 * w_m) / 0.05, (0.1 * i - torque - 0.002 * w_m) / 0.01,
                          w_m - w_l, (torque - 0.02 * w_l) / 0.05])
        self.state = self.state + DT * rates + self.np_random.normal(0, [0.01, 0.05, 1e-4, 0.02])
        reward = -float(self.state[3] - 10.0) ** 2 * 1e-2  # track 10 rad/s at the load
        return self._obs(), reward, False, False, {}


if ENV_ID not in gym.registry:
    gym.register(ENV_ID, entry_point=f"{__name__}:TwoMassMotor", max_episode_steps=200)
