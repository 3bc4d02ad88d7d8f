"""The worked physics priors (examples/priors/) reproduce Gymnasium's simulators from their documented
dynamics: from random states and actions, one prior step with the true parameters equals the env's step."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from examples.priors.cartpole import CartPolePrior
from examples.priors.pendulum import PendulumPrior
from worldmodel.hybrid_prior import PriorStep

ROWS = 64


def _true(values: dict[str, float]) -> dict[str, torch.Tensor]:
    return {k: torch.full((ROWS,), v, dtype=torch.float64) for k, v in values.items()}


def test_pendulum_prior_reproduces_pendulum_v1() -> None:
    rng = np.random.default_rng(0)
    env: Any = gym.make("Pendulum-v1").unwrapped
    env.reset(seed=0)
    states = np.stack([rng.uniform(-math.pi, math.pi, ROWS), rng.uniform(-8, 8, ROWS)], -1)
    torques = rng.uniform(-2.5, 2.5, (ROWS, 1))  # beyond ±2 too: the simulator clips the torque
    expected = []
    for x, u in zip(states, torques, strict=True):
        env.state = x.copy()
        expected.append(env.step(u.astype(np.float32))[0])
    prior = PendulumPrior()
    x = torch.as_tensor(states)
    nxt = prior.step(x, torch.as_tensor(torques), _true({"gravity": 10.0, "gain": 3.0, "length": 1.0}), 0.05)
    torch.testing.assert_close(prior.state_to_obs(nxt).float(), torch.as_tensor(np.stack(expected)),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(prior.obs_to_state(prior.state_to_obs(x)), x)  # the maps invert each other


def test_cartpole_prior_integrated_by_euler_reproduces_cartpole_v1() -> None:
    rng = np.random.default_rng(0)
    env: Any = gym.make("CartPole-v1").unwrapped
    env.reset(seed=0)
    states = np.stack([rng.uniform(-2.4, 2.4, ROWS), rng.uniform(-3, 3, ROWS), rng.uniform(-0.2, 0.2, ROWS),
                       rng.uniform(-3, 3, ROWS)], -1)
    actions = rng.integers(0, 2, ROWS)
    expected = []
    for x, a in zip(states, actions, strict=True):
        env.state, env.steps_beyond_terminated = x.copy(), None
        expected.append(env.step(int(a))[0])
    prior = CartPolePrior()
    step = PriorStep(prior, "cartpole", obs_dim=4, dt=0.02, method="euler", substeps=1)
    params = _true({"gravity": 9.8, "mass_cart": 1.0, "mass_pole": 0.1, "half_length": 0.5, "force": 10.0})
    x = torch.as_tensor(states)[None]  # (1, B, 4): one member
    u = torch.as_tensor(actions, dtype=torch.float64)[None, :, None]
    nxt = step.advance(x, u, {k: v[None] for k, v in params.items()}, None)[0]
    torch.testing.assert_close(nxt.float(), torch.as_tensor(np.stack(expected)), rtol=1e-5, atol=1e-5)

