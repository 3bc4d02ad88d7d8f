"""Physics prior of Gymnasium's CartPole-v1, from its documented dynamics (Florian, "Correct equations for
the dynamics of the cart-pole system", 2007, as the env's docstring cites).

A pole (mass m_p, half-length l) hinged on a cart (mass m_c) that a force ±F pushes left (action 0) or
right (action 1). With M = m_c + m_p and temp = (f + m_p l θ̇² sin θ) / M:

    θ̈ = (g sin θ - cos θ · temp) / (l (4/3 - m_p cos² θ / M))
    ẍ = temp - m_p l θ̈ cos θ / M

The simulator advances (x, ẋ, θ, θ̇) by one explicit Euler step of dt = 0.02 s, so this prior is the
continuous `derivative`, and configs/cartpole/hybrid.yaml integrates it with `method: euler`,
`substeps: 1`: the same update, hence the true parameters reproduce the simulator to float precision.
The observation is the state itself (identity maps).
"""

from __future__ import annotations

import torch

from worldmodel.physics import PhysicalParameter


class CartPolePrior:
    """CartPole-v1 (true values: g = 9.8, m_c = 1.0, m_p = 0.1, l = 0.5, F = 10)."""

    state_names = ["x", "x_dot", "theta", "theta_dot"]

    def __init__(self) -> None:
        self.parameters = {
            "gravity": PhysicalParameter(init=9.0, low=5.0, high=15.0, unit="m/s^2"),
            "mass_cart": PhysicalParameter(init=1.0, low=0.1, high=10.0, unit="kg"),
            "mass_pole": PhysicalParameter(init=0.2, low=0.01, high=2.0, unit="kg"),
            "half_length": PhysicalParameter(init=0.6, low=0.05, high=5.0, unit="m"),
            "force": PhysicalParameter(init=8.0, low=1.0, high=50.0, unit="N"),
        }

    def obs_to_state(self, obs: torch.Tensor) -> torch.Tensor:
        return obs

    def state_to_obs(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def derivative(self, x: torch.Tensor, u: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, 4) state, (B, 1) action index (0 pushes left, 1 right) -> (B, 4) time derivative."""
        x_dot, theta, theta_dot = x[:, 1], x[:, 2], x[:, 3]
        force = params["force"] * (2.0 * u[:, 0] - 1.0)
        m_pole, length = params["mass_pole"], params["half_length"]
        total = params["mass_cart"] + m_pole
        sin, cos = torch.sin(theta), torch.cos(theta)
        temp = (force + m_pole * length * theta_dot**2 * sin) / total
        theta_acc = (params["gravity"] * sin - cos * temp) / (length * (4.0 / 3.0 - m_pole * cos**2 / total))
        x_acc = temp - m_pole * length * theta_acc * cos / total
        return torch.stack([x_dot, x_acc, theta_dot, theta_acc], -1)
