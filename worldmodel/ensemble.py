"""Probabilistic ensemble of Gaussian MLPs (PETS / MBPO) over normalized state deltas.

Each member predicts a Gaussian over (Δobs, reward) and a termination logit from (obs, action).
Members train on their own bootstrap of each batch; the `elites` with the lowest validation loss
are used for prediction. Rollouts use trajectory sampling (TS-∞): each imagined trajectory follows
one elite member throughout, and the disagreement of the elites' means is the epistemic uncertainty.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args

import torch
from torch import nn
from torch.nn import functional as F

from data_pipeline.errors import InputError
from data_pipeline.schema import StoreSchema
from data_pipeline.windows.batch import Batch, Normalization
from worldmodel.base import ModelBase
from worldmodel.interface import Prediction, State
from worldmodel.target_scale import load_target_scale, set_target_scale

Uncertainty = Literal["none", "own", "elites"]
"""What `EnsembleWorldModel.step` computes beside each trajectory's sample: "elites" runs every elite on every
trajectory for their disagreement (epistemic `uncertainty`, `obs_std` with both parts; the MOPO penalty needs
it); "own" runs only each trajectory's own member (`obs_std` its aleatoric std, `uncertainty` 0); "none" runs
only the own member and reports no spread (`obs_std` and `uncertainty` 0). The samples are the same in all three
for an uncalibrated model; a calibration that narrows the spread pulls `elites` samples toward the elites' mean and
`own`/`none` samples toward their own member's mean (the cheap paths never compute the elites' mean)."""
UNCERTAINTIES: tuple[str, ...] = get_args(Uncertainty)


@contextmanager
def uncertainty_mode(model: Any, choice: Uncertainty) -> Iterator[None]:
    """Step `model` with `choice` inside the block and restore its own setting after (a model shared by
    several envs keeps each env's choice to that env). Models without the attribute ignore the choice."""
    if not hasattr(model, "uncertainty"):
        yield
        return
    before = model.uncertainty
    model.uncertainty = choice
    try:
        yield
    finally:
        model.uncertainty = before


@dataclass
class EnsembleConfig:
    """Sizes and likelihood bounds of the ensemble."""

    members: int = 7
    """Number of ensemble members."""
    elites: int = 5
    """Members used for prediction, chosen by validation loss."""
    hidden: int = 200
    """Width of each hidden layer."""
    layers: int = 4
    """Number of hidden layers."""
    min_logvar: float = -10.0
    """Initial lower soft bound of the predicted log-variance (learned, as in PETS)."""
    max_logvar: float = 0.5
    """Initial upper soft bound of the predicted log-variance (learned)."""
    plausible_margin: float = 0.25
    """Imagined observations stay within the recorded range widened by this fraction of it."""
    noise_scale: float = 1.0
    """Scale of the aleatoric noise drawn at each imagined step (1: the learned variance; 0: members'
    means only, so the spread of rollouts is purely epistemic)."""

    @classmethod
    def preset(cls, name: str) -> EnsembleConfig:
        """Sizes by name: tiny (tests), small, medium (the PETS/MBPO default)."""
        presets = {
            "tiny": cls(members=3, elites=2, hidden=32, layers=2),
            "small": cls(members=5, elites=4, hidden=128, layers=3),
            "medium": cls(),
        }
        if name not in presets:
            raise InputError(f"ensemble preset {name!r}; expected one of {sorted(presets)}")
        return presets[name]


class EnsembleLinear(nn.Module):
    """`members` independent linear layers applied in one batched matmul: (E, N, in) -> (E, N, out)."""

    def __init__(self, members: int, d_in: int, d_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, d_in, d_out))
        self.bias = nn.Parameter(torch.zeros(members, 1, d_out))
        bound = 1.0 / math.sqrt(d_in)
        nn.init.trunc_normal_(self.weight, std=bound, a=-2 * bound, b=2 * bound)

    def forward(self, x: torch.Tensor, members: torch.Tensor | None = None) -> torch.Tensor:
        if members is None:
            return torch.baddbmm(self.bias, x, self.weight)
        return torch.baddbmm(self.bias[members], x, self.weight[members])


class EnsembleWorldModel(ModelBase[EnsembleConfig]):
    """PETS-style probabilistic ensemble implementing the WorldModel interface (vector observations)."""

    model_type: ClassVar[str] = "ensemble"
    markov = True
    supports_member_resampling = True
    uncertainty: Uncertainty = "elites"
    """What `step` computes beside the samples (see `Uncertainty`); callers set it with `uncertainty_mode`."""
    elite_idx: torch.Tensor
    target_scale: torch.Tensor
    target_scale_set: torch.Tensor

    def __init__(self, config: EnsembleConfig, schema: StoreSchema, normalization: Normalization) -> None:
        super().__init__(config, schema, normalization)
        if self.image_obs:
            raise InputError("the ensemble models vector observations; use model rssm or diffusion for images")
        if not 1 <= config.elites <= config.members:
            raise InputError(f"ensemble: elites={config.elites} must be in [1, members={config.members}]")
        d_in = self.obs_dim + self.action_dim
        self.d_out = self.obs_dim + 1  # Δobs and reward
        dims = [d_in] + [config.hidden] * config.layers
        self.hidden_layers = nn.ModuleList(
            EnsembleLinear(config.members, a, b) for a, b in zip(dims[:-1], dims[1:], strict=True)
        )
        self.head = EnsembleLinear(config.members, config.hidden, 2 * self.d_out + 1)  # mean, logvar, term
        self.max_logvar = nn.Parameter(torch.full((1, 1, self.d_out), config.max_logvar))
        self.min_logvar = nn.Parameter(torch.full((1, 1, self.d_out), config.min_logvar))
        self.register_buffer("elite_idx", torch.arange(config.elites))
        # The network predicts Δobs and reward divided by `target_scale`, their per-channel std measured on the
        # first training batch, so its outputs are of order 1 on every system. A per-step change is a small
        # fraction of the channel's std (5-35% on CartPole, ~1% on a slow plant); predicted in those units the
        # members learned the mean poorly (issue 14's zoo, CartPole: h1 nRMSE 0.0038 unscaled, 0.0008 scaled).
        self.register_buffer("target_scale", torch.ones(self.d_out))
        self.register_buffer("target_scale_set", torch.tensor(False))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """A file written before `target_scale` existed predicts unscaled targets (scale 1); a scale that is
        not finite and positive of shape (obs_dim + 1,) is refused (the file is not trusted)."""
        load_target_scale(state_dict, prefix, self.d_out, "the per-channel std of the Δobs and reward targets")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -------------------------------------------------------------- network
    def forward(
        self, obs_n: torch.Tensor, action_feat: torch.Tensor, members: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        """(E, N, obs_dim), (E, N, A) -> mean, logvar (E, N, obs_dim + 1), termination logit (E, N).

        With `members`, only those members run (E = len(members)). The head's last column (termination) sees
        the hidden features detached: its loss trains that column only.
        """
        h = torch.cat([obs_n, action_feat], -1)
        for layer in self.hidden_layers:
            h = F.silu(layer(h, members))
        weight: torch.Tensor = self.head.weight
        bias: torch.Tensor = self.head.bias
        if members is not None:
            weight, bias = weight[members], bias[members]
        out = torch.baddbmm(bias[..., :-1], h, weight[..., :-1])
        mean, raw_logvar = out.split([self.d_out, self.d_out], dim=-1)
        # The termination logit reads the features without shaping them: its BCE on a few noisy terminal
        # rows otherwise steers the shared layers away from the dynamics (issue 14's zoo, InvertedDoublePendulum,
        # one network on Δobs MSE: h2 nRMSE 0.0081 without the BCE, 0.0528 with it; the plain MLP 0.0115).
        term = torch.baddbmm(bias[..., -1:], h.detach(), weight[..., -1:])
        # Soft-bounded log-variance (PETS appendix A.1).
        logvar = self.max_logvar - F.softplus(self.max_logvar - raw_logvar)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return mean * self.target_scale, logvar + 2 * self.target_scale.log(), term.squeeze(-1)

    def _elites(self, obs_n: torch.Tensor, action_feat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every elite member on the same inputs: (K, B, …). Non-elite members are never run."""
        k = self.config.elites
        return self(obs_n.unsqueeze(0).expand(k, -1, -1), action_feat.unsqueeze(0).expand(k, -1, -1), self.elite_idx)

    # -------------------------------------------------------------- interface
    def initial_state(self, batch: int) -> State:
        """Zero observation; trajectory b follows elite member b mod elites (spread over the batch)."""
        device = self.elite_idx.device
        return {
            "obs": torch.zeros(batch, self.obs_dim, device=device),
            "member": self.elite_idx[torch.arange(batch, device=device) % self.config.elites],
            "horizon": self.fresh_horizon(batch, device),
        }

    def observe(self, state: State, obs: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor) -> State:
        """The ensemble is Markov in the observation: the belief is the last observation.

        Each trajectory keeps its member, so filtering step by step or all at once is the same.
        """
        last = obs[:, -1].to(self.units.obs_mean.dtype)
        return {"obs": self.units.normalize_obs(last), "member": state["member"],
                "horizon": self.fresh_horizon(last.shape[0], last.device)}

    def resample_members(self, state: State, generator: torch.Generator | None = None) -> State:
        """Draw each trajectory's elite member at random (trajectory sampling)."""
        draw = torch.randint(self.config.elites, (state["member"].shape[0],), generator=generator,
                             device="cpu").to(state["member"].device)
        return {**state, "member": self.elite_idx[draw]}

    def _own(self, obs_n: torch.Tensor, action_feat: torch.Tensor, member: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Each row through its own member only: mean, logvar (B, D+1), termination logit (B,).

        Rows are grouped by member into a zero-padded (M, R, …) batch (M members present, R the largest
        group), so every layer is still one batched matmul over the members present.
        """
        b = obs_n.shape[0]
        order = torch.argsort(member, stable=True)
        present, counts = torch.unique_consecutive(member[order], return_counts=True)  # (M,), (M,)
        group = torch.repeat_interleave(torch.arange(len(present), device=member.device), counts)  # (B,) sorted
        slot = torch.arange(b, device=member.device) - (torch.cumsum(counts, 0) - counts)[group]  # row in group
        x = torch.cat([obs_n, action_feat], -1)[order]
        padded = x.new_zeros(len(present), int(counts.max()), x.shape[-1])  # (M, R, in)
        padded[group, slot] = x
        mean, logvar, term = self(padded[..., : self.obs_dim], padded[..., self.obs_dim :], present)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(b, device=order.device)
        g, s = group[inverse], slot[inverse]  # each original row's place in the padded batch
        return mean[g, s], logvar[g, s], term[g, s]

    def step(
        self, state: State, action: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[State, Prediction]:
        if self.uncertainty != "elites":
            return self._step_own(state, action, generator)
        obs_n = state["obs"]
        b = obs_n.shape[0]
        elite_mean, elite_logvar, elite_term = self._elites(obs_n, self.units.encode_action(action))  # (K, B, …)
        # Each trajectory's member as a position among the elites (0 if it is no longer an elite).
        own = (self.elite_idx.unsqueeze(0) == state["member"].unsqueeze(1)).float().argmax(1)
        rows = torch.arange(b, device=obs_n.device)
        own_mean = elite_mean[own, rows]  # (B, D+1)
        own_std = (0.5 * elite_logvar[own, rows]).exp()
        noise = torch.randn(own_mean.shape, generator=generator, device="cpu").to(own_mean.device)
        sample = own_mean + self.config.noise_scale * own_std * noise
        # Predictive spread: the own member's noise and the elites' disagreement.
        epistemic = elite_mean.std(0, unbiased=False) if self.config.elites > 1 else torch.zeros_like(own_mean)
        total_std = (own_std**2 + epistemic**2).sqrt()

        d = self.obs_dim
        # Calibration scales the deviation from the elites' mean: member disagreement and noise together.
        center = elite_mean[:, :, :d].mean(0)
        scale = self.calibration_scale(state)
        carried, reported = self.calibrate(state, center, sample[:, :d])
        member_mean = obs_n + self.calibrate(state, center, own_mean[:, :d])[1]  # the sample without its noise
        next_n = self.units.normalize_obs(self.units.clamp_plausible(self.units.denormalize_obs(obs_n + carried)))
        pred = Prediction(
            obs=self.units.clamp_plausible(self.units.denormalize_obs(obs_n + reported)),
            obs_mean=self.units.clamp_plausible(self.units.denormalize_obs(member_mean)),
            obs_std=self.units.denormalize_obs_std(scale * total_std[:, :d]),
            reward=self.units.denormalize_reward(sample[:, d]),
            terminated=torch.sigmoid(elite_term[own, rows]),
            uncertainty=epistemic[:, :d].mean(-1),
        )
        return {"obs": next_n, "member": state["member"], "horizon": state["horizon"] + 1}, pred

    def _step_own(self, state: State, action: torch.Tensor, generator: torch.Generator | None
                  ) -> tuple[State, Prediction]:
        """`step` with `uncertainty` "own" or "none": the same samples, only each trajectory's member run."""
        obs_n = state["obs"]
        # As in `step`: a member that is no longer an elite is replaced by the first elite.
        member = self.elite_idx[(self.elite_idx.unsqueeze(0) == state["member"].unsqueeze(1)).float().argmax(1)]
        own_mean, own_logvar, own_term = self._own(obs_n, self.units.encode_action(action), member)
        own_std = (0.5 * own_logvar).exp()
        noise = torch.randn(own_mean.shape, generator=generator, device="cpu").to(own_mean.device)
        sample = own_mean + self.config.noise_scale * own_std * noise
        d = self.obs_dim
        # Calibration scales the deviation from the own member's mean here (the elites' mean that `step`
        # uses is not computed on this path): equal to `step` wherever the calibration does not narrow.
        carried, reported = self.calibrate(state, own_mean[:, :d], sample[:, :d])
        next_n = self.units.normalize_obs(self.units.clamp_plausible(self.units.denormalize_obs(obs_n + carried)))
        next_obs = self.units.clamp_plausible(self.units.denormalize_obs(obs_n + reported))
        zeros = torch.zeros(obs_n.shape[0], device=obs_n.device, dtype=own_mean.dtype)
        spread = self.units.denormalize_obs_std(self.calibration_scale(state) * own_std[:, :d]) \
            if self.uncertainty == "own" else torch.zeros_like(next_obs)
        pred = Prediction(
            obs=next_obs,
            obs_mean=self.units.clamp_plausible(self.units.denormalize_obs(obs_n + own_mean[:, :d])),
            obs_std=spread,
            reward=self.units.denormalize_reward(sample[:, d]),
            terminated=torch.sigmoid(own_term),
            uncertainty=zeros,
        )
        return {"obs": next_n, "member": state["member"], "horizon": state["horizon"] + 1}, pred

    # -------------------------------------------------------------- training
    def _transitions(self, batch: Batch) -> tuple[torch.Tensor, ...]:
        obs_n = self.units.normalize_obs(batch.obs)
        x_obs = obs_n[:, :-1].reshape(-1, self.obs_dim)
        act = batch.action[:, :-1]
        x_act = self.units.encode_action(act.reshape(-1) if self.discrete else act.reshape(-1, act.shape[-1]))
        target = torch.cat(
            [(obs_n[:, 1:] - obs_n[:, :-1]).reshape(-1, self.obs_dim),
             self.units.normalize_reward(batch.reward[:, :-1]).reshape(-1, 1)], -1)
        term = batch.terminated[:, 1:].reshape(-1).float()
        return x_obs, x_act, target, term

    def _set_target_scale(self, target: torch.Tensor) -> None:
        """Measure `target_scale` once, on the first training batch. A channel that (nearly) never changes keeps
        scale 1: dividing by its ~0 std would only amplify rounding (CartPole's constant reward)."""
        set_target_scale(self.target_scale, self.target_scale_set, target)

    def member_losses(self, batch: Batch, bootstrap: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-member loss (E,): training, the Gaussian NLL of (Δobs, reward) plus the termination BCE, on a
        bootstrap resample per member; evaluation, the MSE of the members' Δobs means alone (`loss`). Both in
        units of `target_scale` (the NLL in normalized units less a constant); reward MSE and BCE are logged."""
        x_obs, x_act, target, term = self._transitions(batch)
        if self.training:
            self._set_target_scale(target)
        n = x_obs.shape[0]
        e = self.config.members
        if bootstrap:
            idx = torch.randint(n, (e, n), device=x_obs.device)
        else:
            idx = torch.arange(n, device=x_obs.device).expand(e, n)
        mean, logvar, term_logit = self(x_obs[idx], x_act[idx])
        tgt, scale = target[idx], self.target_scale
        err = (mean - tgt) / scale
        nll = (err ** 2 * torch.exp(-(logvar - 2 * scale.log())) + logvar - 2 * scale.log()).mean((1, 2))  # (E,)
        mse = (err[..., : self.obs_dim] ** 2).mean((1, 2))  # Δobs only: what a rollout carries forward
        reward_mse = (err[..., self.obs_dim] ** 2).mean(1)
        bce = F.binary_cross_entropy_with_logits(term_logit, term[idx], reduction="none").mean(1)
        parts = {"nll": nll, "mse": mse, "reward_mse": reward_mse, "termination_bce": bce}
        return (nll + bce if self.training else mse), parts

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training: the members' NLL plus the log-variance bounds' penalty. Evaluation (val/loss: early stopping,
        the best weights, the elites): the MSE of the members' Δobs means, as mbrl-lib scores its models. The
        NLL stops improving when the variance fits the train split, long before the means have (CartPole: best
        epoch 8 by NLL, 59 by MSE). Reward and termination stay out of it: they are logged (val/reward_mse,
        val/termination_bce) but a rollout's state never passes through them, and where they were in, they
        chose the weights (issue 14's zoo: the termination BCE was 98% of CartPole's val/loss, the reward
        error ~97% of InvertedDoublePendulum's MSE, so the fits stopped on the epoch that predicted them best)."""
        member_loss, parts = self.member_losses(batch, bootstrap=self.training)
        bound = 0.01 * (self.max_logvar.sum() - self.min_logvar.sum()) if self.training else 0.0
        total = member_loss.sum() + bound
        metrics = {k: v.mean() for k, v in parts.items()}
        metrics["member_loss"] = member_loss.detach()
        return total, metrics

    def end_validation(self, metrics: dict[str, torch.Tensor]) -> None:
        """Pick the elites: the members with the lowest validation loss."""
        member_loss = metrics.get("member_loss")
        if member_loss is not None and member_loss.numel() == self.config.members:
            self.elite_idx.copy_(torch.argsort(member_loss.to(self.elite_idx.device))[: self.config.elites])
