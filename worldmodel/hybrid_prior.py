"""The physics side of the hybrid model: a prior's parameters kept within their bounds, and one step of it.

`BoundedParameters` holds every member's physical parameters as unconstrained tensors mapped into
[low, high] (a sigmoid between two finite bounds, a softplus beside one), starting at each `init`.
`PriorStep` checks a loaded prior against the store once (one clear line if it does not fit) and advances
its state by the store's dt: the prior's own `step`, or its `derivative` plus the neural residual integrated
by torchdiffeq's `odeint` (fixed-step `rk4` by default).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from data_pipeline.errors import InputError
from worldmodel.physics import PhysicalParameter, PhysicsPrior, has_step

Residual = Callable[[torch.Tensor], torch.Tensor]
"""(E, N, state_dim) state -> (E, N, state_dim) residual time derivative (ODE) or Δ per step (`step` priors)."""


def _inverse(param: PhysicalParameter, value: float) -> float:
    """The unconstrained value that `BoundedParameters` maps to `value`."""
    low, high = param.low, param.high
    if math.isfinite(low) and math.isfinite(high):
        frac = min(max((value - low) / (high - low), 1e-4), 1 - 1e-4)
        return math.log(frac / (1 - frac))
    if math.isfinite(low) or math.isfinite(high):
        gap = max(value - low if math.isfinite(low) else high - value, 1e-4)
        return gap + math.log(-math.expm1(-gap))  # inverse softplus
    return value


class BoundedParameters(nn.Module):
    """Per-member physical parameters within their bounds: `values()` maps each name to an (E,) tensor.

    Learnable ones are `raw * speed` through the bound map; `speed` multiplies their effective learning rate
    (Adam moves `raw` by about lr per step whatever the gradient's scale). Frozen ones stay at `init`.
    """

    def __init__(self, specs: dict[str, PhysicalParameter], members: int, speed: float) -> None:
        super().__init__()
        self.specs = dict(specs)
        self.speed = float(speed)
        self.learned = [name for name, p in self.specs.items() if p.learnable]
        init = [_inverse(self.specs[name], self.specs[name].init) / self.speed for name in self.learned]
        self.raw = nn.Parameter(torch.tensor(init, dtype=torch.float32).repeat(members, 1))  # (E, P)

    def values(self) -> dict[str, torch.Tensor]:
        members = self.raw.shape[0]
        out = {name: torch.full((members,), p.init, device=self.raw.device) for name, p in self.specs.items()}
        for j, name in enumerate(self.learned):
            p, z = self.specs[name], self.raw[:, j] * self.speed
            if math.isfinite(p.low) and math.isfinite(p.high):
                out[name] = p.low + (p.high - p.low) * torch.sigmoid(z)
            elif math.isfinite(p.low):
                out[name] = p.low + F.softplus(z)
            elif math.isfinite(p.high):
                out[name] = p.high - F.softplus(z)
            else:
                out[name] = z
        return out


class PriorStep:
    """A loaded prior, checked against the store's observation width, advancing states by `dt`."""

    def __init__(self, prior: PhysicsPrior, spec: str, obs_dim: int, dt: float, method: str, substeps: int) -> None:
        self.prior, self.spec, self.dt = prior, spec, float(dt)
        self.state_dim = len(prior.state_names)
        self.discrete_step = has_step(prior)
        self.method = method
        self.step_size = self.dt / substeps
        self.obs_dim = obs_dim

    def check(self, obs: torch.Tensor, action: torch.Tensor, params: dict[str, torch.Tensor]) -> None:
        """Run the prior once on (B, obs_dim) observations; a mismatch with the store is one line."""
        x = self._call("obs_to_state", lambda: self.prior.obs_to_state(obs), (obs.shape[0], self.state_dim))
        self._call("state_to_obs", lambda: self.prior.state_to_obs(x), (obs.shape[0], self.obs_dim))
        self._call("step" if self.discrete_step else "derivative", lambda: self.physics(x, action, params),
                   (obs.shape[0], self.state_dim))

    def _call(self, what: str, fn: Callable[[], torch.Tensor], expected: tuple[int, ...]) -> torch.Tensor:
        try:
            out = fn()
        except Exception as err:  # user code: one line naming the prior and the method
            raise InputError(f"physics prior {self.spec!r}: {what} failed on the store's data "
                             f"({type(err).__name__}: {err})") from err
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise InputError(f"physics prior {self.spec!r}: {what} returned shape {got}; expected {expected} "
                             f"(state {self.prior.state_names}, {self.obs_dim} observation channels in the store)")
        return out

    def physics(self, x: torch.Tensor, u: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The prior alone: the next state (`step` priors) or the time derivative."""
        if self.discrete_step:
            return self.prior.step(x, u, params, self.dt)  # type: ignore[attr-defined]
        return self.prior.derivative(x, u, params)  # type: ignore[attr-defined]

    def advance(self, x: torch.Tensor, u: torch.Tensor, params: dict[str, torch.Tensor],
                residual: Residual | None) -> torch.Tensor:
        """(E, N, S) states, (E, N, A) physical actions, params of (E, N) -> (E, N, S) states one dt later."""
        e, n, s = x.shape
        flat_u = u.reshape(e * n, -1)
        flat_p = {k: v.reshape(e * n) for k, v in params.items()}
        if self.discrete_step:
            nxt = self.physics(x.reshape(e * n, s), flat_u, flat_p).reshape(e, n, s)
            return nxt if residual is None else nxt + residual(x)
        from torchdiffeq import odeint

        def dynamics(t: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
            d = self.physics(state, flat_u, flat_p)
            return d if residual is None else d + residual(state.reshape(e, n, s)).reshape(e * n, s)

        times = torch.tensor([0.0, self.dt], dtype=x.dtype, device=x.device)
        path = odeint(dynamics, x.reshape(e * n, s), times, method=self.method, options={"step_size": self.step_size})
        return path[-1].reshape(e, n, s)
