"""Physics prior of Gymnasium's Pendulum-v1, from its documented dynamics (the env's docstring and equations).

The pendulum swings about its pivot under gravity and a torque `u` (clipped to ±2 N·m); θ = 0 is upright.
Gymnasium integrates it with a semi-implicit Euler step of dt = 0.05 s and clips the speed to ±8 rad/s:

    θ̇' = clip(θ̇ + (3 g / (2 l) · sin θ + 3 / (m l²) · u) · dt, -8, 8)
    θ'  = θ + θ̇' · dt

This prior is that discrete `step`, so its true parameters reproduce the simulator to float precision
(an ODE integrated with substeps would be the continuous pendulum, a few per cent away from the simulator
at dt = 0.05, and the identified parameters would absorb that difference). The state is (θ, θ̇); the
observation is (cos θ, sin θ, θ̇), so every imagined observation keeps cos² + sin² = 1.
"""

from __future__ import annotations

import torch

from worldmodel.physics import PhysicalParameter

MAX_SPEED = 8.0
"""rad/s: the simulator clips the angular speed (a documented constant, not a parameter)."""
MAX_TORQUE = 2.0
"""N·m: the simulator clips the applied torque."""


class PendulumPrior:
    """Pendulum-v1: gravity and actuator gain learned, pole length known (the true values are g = 10, gain = 3)."""

    state_names = ["theta", "theta_dot"]

    def __init__(self) -> None:
        self.parameters = {
            "gravity": PhysicalParameter(init=9.0, low=5.0, high=15.0, unit="m/s^2"),
            "gain": PhysicalParameter(init=2.5, low=0.5, high=10.0, unit="1/(kg m^2)"),
            "length": PhysicalParameter(init=1.0, low=0.1, high=10.0, unit="m", learnable=False),
        }

    def obs_to_state(self, obs: torch.Tensor) -> torch.Tensor:
        """(B, 3) (cos θ, sin θ, θ̇) -> (B, 2) (θ, θ̇)."""
        return torch.stack([torch.atan2(obs[:, 1], obs[:, 0]), obs[:, 2]], -1)

    def state_to_obs(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 2) (θ, θ̇) -> (B, 3) (cos θ, sin θ, θ̇)."""
        return torch.stack([torch.cos(x[:, 0]), torch.sin(x[:, 0]), x[:, 1]], -1)

    def step(self, x: torch.Tensor, u: torch.Tensor, params: dict[str, torch.Tensor], dt: float) -> torch.Tensor:
        """One simulator step: (B, 2) state, (B, 1) torque -> (B, 2) next state."""
        theta, speed = x[:, 0], x[:, 1]
        torque = u[:, 0].clamp(-MAX_TORQUE, MAX_TORQUE)
        accel = 1.5 * params["gravity"] / params["length"] * torch.sin(theta) + params["gain"] * torque
        speed = (speed + accel * dt).clamp(-MAX_SPEED, MAX_SPEED)
        return torch.stack([theta + speed * dt, speed], -1)
