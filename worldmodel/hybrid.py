"""Physics-informed hybrid world model: a user's physics prior plus a small neural residual (APHYNITY).

The prior (worldmodel/physics.py, docs/hybrid.md) gives the physical state and its dynamics with named,
bounded parameters. Each ensemble member carries its own copy of those parameters and a residual network
(the ensemble's `EnsembleLinear` layers): for a `derivative` prior the member integrates
dx/dt = f(x, u, θ) + r(x, u) over the store's dt with torchdiffeq; for a `step` prior it adds r to the
prior's step. Training minimizes the one-step Gaussian NLL of the next observation plus λ·‖r‖², so the
physics explains what it can and the residual only the rest (Yin et al., ICLR 2021). `physics_only` drops
the residual: a grey-box model whose parameters and noise are calibrated on the data.

Imagined observations are drawn in observation space and projected through the prior's state maps
(obs -> state -> obs), so they keep the prior's invariants (cos² + sin² = 1 for the pendulum). A small
learned head per member predicts the observation noise, the reward and the termination, as the
ensemble does, so envs work unchanged. Rollouts use trajectory sampling: each trajectory follows one member.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from data_pipeline.errors import InputError
from data_pipeline.schema import StoreSchema
from data_pipeline.windows.batch import Batch, Normalization
from worldmodel.base import ModelBase
from worldmodel.ensemble import EnsembleLinear
from worldmodel.hybrid_prior import BoundedParameters, PriorStep
from worldmodel.interface import Prediction, State
from worldmodel.physics import load_prior

FIXED_STEP_METHODS = ("euler", "midpoint", "rk4", "explicit_adams", "implicit_adams")


@dataclass
class HybridConfig:
    """The prior, the residual ensemble's sizes, the APHYNITY weight and the ODE solver."""

    prior: str = ""
    """The physics prior as `module:Class` (imported because the config names it; docs/hybrid.md)."""
    physics_only: bool = False
    """No residual: only the physical parameters and the noise are learned (a calibrated grey-box model)."""
    members: int = 5
    """Ensemble members, each with its own physical parameters and residual (the spread is the uncertainty)."""
    hidden: int = 64
    """Width of each hidden layer of the residual and of the noise/reward/termination head."""
    layers: int = 2
    """Number of hidden layers of each network."""
    residual_weight: float = 1.0
    """λ of the APHYNITY penalty λ·‖residual‖² (residual in units of the state's spread per step)."""
    method: str = "rk4"
    """torchdiffeq fixed-step method integrating a `derivative` prior (euler, midpoint, rk4, …)."""
    substeps: int = 1
    """Solver steps per store dt (a `step` prior is called once per dt)."""
    parameter_lr_scale: float = 10.0
    """Multiplies the effective learning rate of the physical parameters."""
    min_logvar: float = -10.0
    """Initial lower soft bound of the predicted log-variance (learned, as in PETS)."""
    max_logvar: float = 0.5
    """Initial upper soft bound of the predicted log-variance (learned)."""
    plausible_margin: float = 0.25
    """Imagined observations stay within the recorded range widened by this fraction of it."""
    noise_scale: float = 1.0
    """Scale of the aleatoric noise drawn at each imagined step (0: members' means only)."""

    @classmethod
    def preset(cls, name: str) -> HybridConfig:
        """Sizes by name: tiny (tests), small, medium."""
        presets = {
            "tiny": cls(members=3, hidden=32, layers=2),
            "small": cls(members=5, hidden=64, layers=2),
            "medium": cls(members=5, hidden=128, layers=3),
        }
        if name not in presets:
            raise InputError(f"hybrid preset {name!r}; expected one of {sorted(presets)}")
        return presets[name]


def _mlp(members: int, d_in: int, hidden: int, layers: int, d_out: int) -> nn.ModuleList:
    dims = [d_in] + [hidden] * layers + [d_out]
    return nn.ModuleList(EnsembleLinear(members, a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))


def _run(net: nn.ModuleList, h: torch.Tensor) -> torch.Tensor:
    """(E, N, in) -> (E, N, out), SiLU between layers."""
    for i, layer in enumerate(net):
        h = layer(h)
        if i < len(net) - 1:
            h = F.silu(h)
    return h


class HybridWorldModel(ModelBase[HybridConfig]):
    """Known physics plus a learned residual, implementing the WorldModel interface (vector observations)."""

    model_type: ClassVar[str] = "hybrid"
    markov = True
    supports_member_resampling = True
    state_scale: torch.Tensor
    residual_fraction: torch.Tensor

    def __init__(self, config: HybridConfig, schema: StoreSchema, normalization: Normalization) -> None:
        super().__init__(config, schema, normalization)
        if self.image_obs:
            raise InputError("the hybrid model needs vector observations (its prior maps them to a physical state)")
        if not config.prior:
            raise InputError("hybrid: model.config.prior is required: the physics prior as 'module:Class' "
                             "(e.g. examples.priors.pendulum:PendulumPrior; see docs/hybrid.md)")
        if config.method not in FIXED_STEP_METHODS or config.substeps < 1 or config.members < 1:
            raise InputError(f"hybrid: method={config.method!r}, substeps={config.substeps}, members={config.members}; "
                             f"expected a method in {list(FIXED_STEP_METHODS)}, substeps >= 1, members >= 1")
        self.prior = load_prior(config.prior)
        self.physics = PriorStep(self.prior, config.prior, self.obs_dim, schema.dt, config.method, config.substeps)
        self.state_dim = self.physics.state_dim
        self.params = BoundedParameters(self.prior.parameters, config.members, config.parameter_lr_scale)
        d_in = self.obs_dim + self.action_dim
        e, h, n = config.members, config.hidden, config.layers
        self.residual = None if config.physics_only else _mlp(e, d_in, h, n, self.state_dim)
        if self.residual is not None:  # starts as the prior alone
            last = self.residual[-1]
            assert isinstance(last, EnsembleLinear)
            nn.init.zeros_(last.weight)
        self.head = _mlp(e, d_in, h, n, self.obs_dim + 3)  # log-variance of (obs, reward), reward, termination
        self.max_logvar = nn.Parameter(torch.full((1, 1, self.obs_dim + 1), config.max_logvar))
        self.min_logvar = nn.Parameter(torch.full((1, 1, self.obs_dim + 1), config.min_logvar))
        self.register_buffer("residual_fraction", torch.tensor(-1.0))  # < 0: not measured yet
        self.register_buffer("state_scale", self._state_scale(), persistent=False)

    @torch.no_grad()
    def _state_scale(self) -> torch.Tensor:
        """(S,) spread of the state over observations drawn within the recorded range: the residual's unit.

        Also runs the prior once on the store's channels, so a prior that does not fit fails here, in one line.
        """
        gen = torch.Generator().manual_seed(0)
        obs = self.units.obs_mean + self.units.obs_std * torch.randn(256, self.obs_dim, generator=gen)
        obs = torch.maximum(torch.minimum(obs, self.units.obs_max), self.units.obs_min)
        u = self._physical_action(torch.zeros(256, self.action_dim) if not self.discrete
                                  else torch.zeros(256, dtype=torch.long))
        params = {k: v[0].expand(256) for k, v in self.params.values().items()}
        self.physics.check(obs, u, params)
        return self.prior.obs_to_state(obs).std(0).clamp_min(1e-3)

    # -------------------------------------------------------------- network
    def _physical_action(self, action: torch.Tensor) -> torch.Tensor:
        """What the prior's `u` is: the action in physical units (B, A), or a Discrete index as (B, 1) float."""
        return action.float().unsqueeze(-1) if self.discrete else action.float()

    def _features(self, x: torch.Tensor, act_feat: torch.Tensor) -> torch.Tensor:
        """(E, N, S) states and (E, N, A) action features -> (E, N, obs_dim + A) network inputs."""
        e, n, s = x.shape
        obs_n = self.units.normalize_obs(self.prior.state_to_obs(x.reshape(e * n, s))).reshape(e, n, -1)
        return torch.cat([obs_n, act_feat], -1)

    def _predict(self, x: torch.Tensor, action: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every member on its own rows: (E, N, S) states and (E, N, …) actions -> next states and head outputs.

        `next` (E, N, S) is the mean next state, `residual` (E, N, S) the residual's Δ per step in units of
        `state_scale`, `logvar` (E, N, obs_dim + 1) and `reward` (E, N) and `term` (E, N) logits.
        """
        e, n, _ = x.shape
        act_feat = self.units.encode_action(action)  # (E, N, A)
        u = self._physical_action(action)
        params = {k: v[:, None].expand(e, n) for k, v in self.params.values().items()}
        if self.residual is None:
            res = torch.zeros_like(x)
            nxt = self.physics.advance(x, u, params, None)
        elif self.physics.discrete_step:  # Δ per step, added to the prior's step
            res = _run(self.residual, self._features(x, act_feat))
            nxt = self.physics.advance(x, u, params, lambda state: res * self.state_scale)
        else:  # a time derivative, integrated with the prior's; reported as its Δ over one dt at x
            net = self.residual
            per = self.state_scale / self.physics.dt
            nxt = self.physics.advance(x, u, params, lambda state: _run(net, self._features(state, act_feat)) * per)
            res = _run(net, self._features(x, act_feat))
        out = _run(self.head, self._features(x, act_feat))
        d = self.obs_dim + 1
        raw_logvar, reward, term = out.split([d, 1, 1], dim=-1)
        logvar = self.max_logvar - F.softplus(self.max_logvar - raw_logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return {"next": nxt, "residual": res, "logvar": logvar, "reward": reward[..., 0], "term": term[..., 0]}

    def _next_obs_n(self, nxt: torch.Tensor) -> torch.Tensor:
        e, n, s = nxt.shape
        return self.units.normalize_obs(self.prior.state_to_obs(nxt.reshape(e * n, s))).reshape(e, n, -1)

    # -------------------------------------------------------------- interface
    def initial_state(self, batch: int) -> State:
        """The state of the store's mean observation; trajectory b follows member b mod members."""
        device = self.state_scale.device
        x = self.prior.obs_to_state(self.units.obs_mean.expand(batch, -1))
        return {"x": x.to(device), "member": torch.arange(batch, device=device) % self.config.members,
                "horizon": self.fresh_horizon(batch, device)}

    def observe(self, state: State, obs: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor) -> State:
        """Markov in the observation: the belief is the prior's state of the last observation."""
        last = obs[:, -1].to(self.units.obs_mean.dtype)
        return {"x": self.prior.obs_to_state(last), "member": state["member"],
                "horizon": self.fresh_horizon(last.shape[0], last.device)}

    def resample_members(self, state: State, generator: torch.Generator | None = None) -> State:
        """Draw each trajectory's member at random (trajectory sampling)."""
        draw = torch.randint(self.config.members, (state["member"].shape[0],), generator=generator, device="cpu")
        return {**state, "member": draw.to(state["member"].device)}

    def step(
        self, state: State, action: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[State, Prediction]:
        x = state["x"]
        b, e = x.shape[0], self.config.members
        out = self._predict(x.unsqueeze(0).expand(e, -1, -1), action.unsqueeze(0).expand(e, *action.shape))
        mean_n = torch.cat([self._next_obs_n(out["next"]), out["reward"].unsqueeze(-1)], -1)  # (E, B, D+1)
        rows = torch.arange(b, device=x.device)
        own = state["member"]
        own_mean, own_std = mean_n[own, rows], (0.5 * out["logvar"][own, rows]).exp()  # (B, D+1)
        noise = torch.randn(own_mean.shape, generator=generator, device="cpu").to(own_mean.device)
        sample = own_mean + self.config.noise_scale * own_std * noise
        epistemic = mean_n.std(0, unbiased=False) if e > 1 else torch.zeros_like(own_mean)
        total_std = (own_std**2 + epistemic**2).sqrt()
        d = self.obs_dim
        # Post-hoc calibration (worldmodel/calibration.py) around the members' mean: the trajectory carries
        # the narrowed sample, the prediction reports the widened one.
        carried, reported = self.calibrate(state, mean_n[:, :, :d].mean(0), sample[:, :d])
        # Project the drawn observation onto the prior's physical states: obs -> state -> obs keeps invariants.
        next_x = self.prior.obs_to_state(self.units.clamp_plausible(self.units.denormalize_obs(carried)))
        shown_x = next_x if reported is carried else self.prior.obs_to_state(
            self.units.clamp_plausible(self.units.denormalize_obs(reported)))
        next_obs = self.units.clamp_plausible(self.prior.state_to_obs(shown_x))
        pred = Prediction(
            obs=next_obs,
            obs_mean=self.prior.state_to_obs(out["next"][own, rows]),
            obs_std=self.units.denormalize_obs_std(total_std[:, :d]) * self.calibration_scale(state),
            reward=self.units.denormalize_reward(sample[:, d]),
            terminated=torch.sigmoid(out["term"][own, rows]),
            uncertainty=epistemic[:, :d].mean(-1),
        )
        return {"x": next_x, "member": own, "horizon": state["horizon"] + 1}, pred

    # -------------------------------------------------------------- training
    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-member one-step Gaussian NLL (on its own bootstrap when training) + λ·‖residual‖² (APHYNITY)."""
        obs = batch.obs[:, :-1].reshape(-1, self.obs_dim)
        act = batch.action[:, :-1]
        act = act.reshape(-1) if self.discrete else act.reshape(-1, act.shape[-1])
        target = torch.cat([self.units.normalize_obs(batch.obs[:, 1:]).reshape(-1, self.obs_dim),
                            self.units.normalize_reward(batch.reward[:, :-1]).reshape(-1, 1)], -1)
        term = batch.terminated[:, 1:].reshape(-1).float()
        n, e = obs.shape[0], self.config.members
        idx = (torch.randint(n, (e, n), device=obs.device) if self.training
               else torch.arange(n, device=obs.device).expand(e, n))
        x = self.prior.obs_to_state(obs)
        out = self._predict(x[idx], act[idx])
        mean = torch.cat([self._next_obs_n(out["next"]), out["reward"].unsqueeze(-1)], -1)  # (E, N, D+1)
        tgt, logvar = target[idx], out["logvar"]
        nll = (((mean - tgt) ** 2) * torch.exp(-logvar) + logvar).mean((1, 2))  # (E,)
        bce = F.binary_cross_entropy_with_logits(out["term"], term[idx], reduction="none").mean(1)
        penalty = (out["residual"] ** 2).sum(-1).mean(1)  # (E,) ‖r‖² in state-spread units
        bound = 0.01 * (self.max_logvar.sum() - self.min_logvar.sum())
        total = (nll + bce + self.config.residual_weight * penalty).sum() + bound
        with torch.no_grad():
            delta = ((out["next"] - x[idx]) / self.state_scale).norm(dim=-1).mean()
            fraction = out["residual"].norm(dim=-1).mean() / delta.clamp_min(1e-12)
        metrics = {"nll": nll.mean(), "mse": ((mean - tgt) ** 2).mean(), "termination_bce": bce.mean(),
                   "residual_norm": penalty.mean(), "residual_fraction": fraction}
        for name, value in self.params.values().items():
            if self.prior.parameters[name].learnable:
                metrics[f"param_{name}"] = value.mean().detach()
        return total, metrics

    def end_validation(self, metrics: dict[str, torch.Tensor]) -> None:
        """Keep the validation residual fraction (reported by `describe`, saved in the model file)."""
        if "residual_fraction" in metrics:
            self.residual_fraction.fill_(float(metrics["residual_fraction"]))

    # -------------------------------------------------------------- what the engineer learns
    def describe(self) -> dict[str, Any]:
        """The identified parameters (mean ± std across members, unit, init, bounds) and the residual fraction
        (mean ‖residual‖ / mean ‖Δstate‖ on validation; None before a validation, 0 with `physics_only`)."""
        values = self.params.values()
        parameters = {}
        for name, spec in self.prior.parameters.items():
            v = values[name].detach().float().cpu()
            parameters[name] = {"mean": float(v.mean()), "std": float(v.std(unbiased=False)), "unit": spec.unit,
                                "init": spec.init, "low": spec.low, "high": spec.high, "learnable": spec.learnable}
        fraction = float(self.residual_fraction)
        return {"prior": self.config.prior, "physics_only": self.config.physics_only, "parameters": parameters,
                "residual_fraction": 0.0 if self.config.physics_only else (fraction if fraction >= 0 else None)}

    def describe_text(self) -> str:
        """`describe()` as a small table (the fit prints it)."""
        info = self.describe()
        lines = [f"hybrid model, prior {info['prior']}" + (" (physics only)" if info["physics_only"] else ""),
                 f"{'parameter':<16} {'identified':>22} {'unit':<14} {'init':>8}  bounds"]
        for name, p in info["parameters"].items():
            value = f"{p['mean']:.4g} ± {p['std']:.2g}" if p["learnable"] else f"{p['mean']:.4g} (fixed)"
            lines.append(f"{name:<16} {value:>22} {p['unit']:<14} {p['init']:>8.4g}  [{p['low']:g}, {p['high']:g}]")
        fraction = info["residual_fraction"]
        lines.append("residual fraction: " + ("not measured (no validation yet)" if fraction is None
                                              else f"{fraction:.3f} (mean |residual| / mean |Δstate|, validation)"))
        return "\n".join(lines)

    def describe_params(self) -> dict[str, str]:
        """What the identification started from, for MLflow params: `hybrid.<name>.init`, `.unit`, `.bounds`."""
        out = {}
        for name, p in self.describe()["parameters"].items():
            out[f"hybrid.{name}.init"] = f"{p['init']:g}"
            out[f"hybrid.{name}.unit"] = p["unit"]
            out[f"hybrid.{name}.bounds"] = f"[{p['low']:g}, {p['high']:g}]" + ("" if p["learnable"] else " fixed")
        return out

    def describe_metrics(self) -> dict[str, float]:
        """`describe()` for MLflow: `hybrid/<name>` (mean), `hybrid/<name>_std`, `hybrid/residual_fraction`."""
        info = self.describe()
        out: dict[str, float] = {}
        for name, p in info["parameters"].items():
            if p["learnable"]:
                out[f"hybrid/{name}"], out[f"hybrid/{name}_std"] = p["mean"], p["std"]
        if info["residual_fraction"] is not None and math.isfinite(info["residual_fraction"]):
            out["hybrid/residual_fraction"] = info["residual_fraction"]
        return out
