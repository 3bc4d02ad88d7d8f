"""Known reward and termination formulas of common systems, for `reward_fn` / `termination_fn`.

Every function takes batched numpy arrays in physical units, `obs` (B, obs_dim), `action` (B, action_dim)
(or (B,) for Discrete), `next_obs` (B, obs_dim), and returns (B,) values:

    gymnasium.make("WorldModel-v0", model=..., store=..., reward_fn="envs.rewards:pendulum")

A digital twin's cost is usually a known formula of the state; a learned reward head is only needed
when it is not.
"""

from __future__ import annotations

import numpy as np


def _angle_normalize(x: np.ndarray) -> np.ndarray:
    return ((x + np.pi) % (2 * np.pi)) - np.pi


def pendulum(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """Pendulum-v1's reward: -(θ² + 0.1 θ̇² + 0.001 u²) of the state the action was taken in.

    Channels (cos θ, sin θ, θ̇), torque u clipped to ±2 N·m, exactly as Gymnasium computes it.
    """
    theta = np.arctan2(obs[:, 1], obs[:, 0])
    theta_dot = obs[:, 2]
    u = np.clip(action[:, 0], -2.0, 2.0)
    return -(_angle_normalize(theta) ** 2 + 0.1 * theta_dot**2 + 0.001 * u**2).astype(np.float32)


def cartpole(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """CartPole-v1's reward: +1 for every step, the terminating one included."""
    return np.ones(len(obs), np.float32)


def cartpole_termination(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """CartPole-v1's termination: the cart leaves ±2.4 m or the pole tilts past ±12°."""
    x, theta = next_obs[:, 0], next_obs[:, 2]
    return (np.abs(x) > 2.4) | (np.abs(theta) > 12 * 2 * np.pi / 360)


def never(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """No termination (systems that only end by a time limit, e.g. Pendulum)."""
    return np.zeros(len(obs), bool)
