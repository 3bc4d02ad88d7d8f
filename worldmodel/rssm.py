"""Recurrent state-space model (Dreamer / DreamerV3) implementing the WorldModel interface.

The latent state is a deterministic GRU path `h` and a stochastic latent `z`:

    h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}])      (reset to the learned initial state where is_first)
    prior      p(z_t | h_t)                      used to imagine
    posterior  q(z_t | h_t, embed(o_t))          used to filter (`observe`) and to train

`z` is a diagonal Gaussian, or (DreamerV3) `categories` one-hot variables of `classes` classes each,
sampled with straight-through gradients and mixed with 1% uniform ("unimix"). Heads read the
feature `[h_t, z_t]`: a Gaussian decoder of the observation, a reward head regressing the symlog of
the normalized reward, and a Bernoulli termination head. The loss is the DreamerV3 one:
reconstruction + reward + termination + KL balancing (dyn 0.5 / rep 0.1) with 1 nat free bits.

Units: vector observations are modelled in normalized units (per-channel z-scores of the store's
statistics); images in [-1, 1]. The decoder predicts the normalized observation directly, not its
symlog: normalized channels already have unit scale, and a Gaussian in normalized units maps linearly
to physical units, so `Prediction.obs_std` is an exact standard deviation in the channel's unit.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from data_pipeline.errors import InputError
from data_pipeline.schema import StoreSchema
from data_pipeline.windows.batch import Batch, Normalization
from worldmodel.base import ModelBase
from worldmodel.ensemble import Uncertainty
from worldmodel.interface import Prediction, State, previous_actions
from worldmodel.rssm_config import RSSMConfig
from worldmodel.rssm_networks import (
    ConvDecoder,
    ConvEncoder,
    NormGRUCell,
    class_index,
    mlp,
    one_hot_heads,
    one_hot_sample,
    stratified_noise,
    symexp,
    symlog,
)


class RSSMWorldModel(ModelBase[RSSMConfig]):
    """Dreamer-style RSSM over vector or image observations (see the module docstring).

    State: {"deter": (B, deter), "stoch": (B, stoch)} with stoch = `config.stoch` for Gaussian latents
    or `categories * classes` flattened one-hots for categorical ones.

    `observe` filters with the posterior *mode* (Gaussian mean / most likely class), so the belief is a
    deterministic function of the data. `step` draws from the prior with the given generator:
    `Prediction.obs_mean` is the decoder mean of the trajectory's sampled latent, `obs` adds decoder
    noise to it. What else a step computes is `uncertainty` (see `worldmodel.ensemble.Uncertainty`):

    - "elites" (the default): `uncertainty_samples` stratified prior samples are decoded; `obs_std` combines
      the decoder std with the spread of their decoded means and `uncertainty` is that spread in normalized
      units averaged over channels (pixels for images). Calibration centers on the mean of the K samples.
    - "own": only the trajectory's sample is decoded (1/K of the decoding); `obs_std` is the decoder std,
      `uncertainty` 0. Calibration centers on the sample's own decoded mean, so it scales the decoder noise.
    - "none": as "own", and `obs_std` is 0 too.

    The trajectory (latent samples, `obs`, `reward`) is the same in all three for an uncalibrated model and a
    given seed; a calibration scales the deviation from a different center in "elites" than in "own"/"none".
    `reward` is the head's mean; `terminated` a probability.
    """

    model_type: ClassVar[str] = "rssm"
    uncertainty: Uncertainty = "elites"
    """What `step` computes beside the sample (see the class docstring); callers set it with `uncertainty_mode`."""

    def __init__(self, config: RSSMConfig, schema: StoreSchema, normalization: Normalization) -> None:
        super().__init__(config, schema, normalization)
        c = config
        if c.latent not in ("gaussian", "categorical"):
            raise InputError(f"RSSMConfig.latent: {c.latent!r}; expected 'gaussian' or 'categorical'")
        if c.uncertainty_samples < 1:
            raise InputError(f"RSSMConfig.uncertainty_samples: {c.uncertainty_samples}; expected >= 1")
        if not 0.0 < c.min_obs_std < c.max_obs_std:
            raise InputError(
                f"RSSMConfig: need 0 < min_obs_std ({c.min_obs_std}) < max_obs_std ({c.max_obs_std})")
        self.categorical = c.latent == "categorical"
        self.stoch_dim = c.categories * c.classes if self.categorical else c.stoch
        stats_dim = self.stoch_dim if self.categorical else 2 * c.stoch
        feat = c.deter + self.stoch_dim

        if self.image_obs:
            assert schema.image_shape is not None  # image_obs implies it
            h, w, ch = (int(s) for s in schema.image_shape)
            if h % 16 or w % 16:
                raise InputError(
                    f"rssm: image_shape {schema.image_shape}: height and width must be divisible by 16")
            self.obs_shape: tuple[int, ...] = (h, w, ch)
            self.encoder: nn.Module = ConvEncoder(ch, c.cnn_depth, h, w)
            embed = self.encoder.out_dim
            self.decoder: nn.Module = ConvDecoder(feat, ch, c.cnn_depth, h, w)
            self.decoded_shape: tuple[int, ...] = (ch, h, w)
            """Shape of one decoded observation (channel-first for images)."""
        else:
            if self.obs_dim == 0:
                raise InputError("rssm: the store has no observation channels")
            self.obs_shape = (self.obs_dim,)
            self.encoder = mlp(self.obs_dim, c.hidden, c.layers, c.hidden)
            embed = c.hidden
            self.decoder = mlp(feat, c.hidden, c.layers, 2 * self.obs_dim)
            self.decoded_shape = self.obs_shape

        self.initial_deter = nn.Parameter(torch.zeros(c.deter))
        self.img_in = nn.Sequential(
            nn.Linear(self.stoch_dim + self.action_dim, c.hidden), nn.LayerNorm(c.hidden), nn.SiLU())
        self.gru = NormGRUCell(c.hidden, c.deter)
        self.prior_net = mlp(c.deter, c.hidden, 1, stats_dim)
        self.posterior_net = mlp(c.deter + embed, c.hidden, 1, stats_dim)
        self.reward_head = mlp(feat, c.hidden, c.layers, 1)
        self.termination_head = mlp(feat, c.hidden, c.layers, 1)
        # Zero-initialized reward output (DreamerV3): no large spurious rewards early in training.
        reward_out = self.reward_head[-1]
        assert isinstance(reward_out, nn.Linear)
        nn.init.zeros_(reward_out.weight)
        nn.init.zeros_(reward_out.bias)

    # -------------------------------------------------------------- latent distribution
    # A distribution is one tensor: Gaussian [mean, std] (…, 2·stoch); categorical log-probs (…, cat·cls).
    # Noise is one number per latent variable (…, `noise_dim`): a standard normal per Gaussian unit, a uniform
    # per categorical variable (inverse-CDF sampling: the same distribution as Gumbel-max at 1/classes of the
    # random numbers and no logarithms).
    def _dist(self, raw: torch.Tensor) -> torch.Tensor:
        c = self.config
        if self.categorical:
            return self._probs(raw).log().flatten(-2)
        mean, std = raw.chunk(2, -1)
        return torch.cat([mean, F.softplus(std) + c.min_latent_std], -1)

    def _probs(self, raw: torch.Tensor) -> torch.Tensor:
        """Categorical probabilities (…, categories, classes) of raw logits (…, categories·classes), with unimix."""
        c = self.config
        probs = torch.softmax(raw.unflatten(-1, (c.categories, c.classes)), -1)
        return (1.0 - c.unimix) * probs + c.unimix / c.classes

    def _sample(self, dist: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """A reparameterized sample; `noise` (…, noise_dim) is standard normal (Gaussian) or uniform in [0, 1)
        (categorical, see `class_index`)."""
        if not self.categorical:
            mean, std = dist.chunk(2, -1)
            return mean + std * noise
        c = self.config
        return one_hot_sample(dist.unflatten(-1, (c.categories, c.classes)).exp(), noise)

    def _mode(self, dist: torch.Tensor) -> torch.Tensor:
        if not self.categorical:
            return dist.chunk(2, -1)[0]
        c = self.config
        logp = dist.unflatten(-1, (c.categories, c.classes))
        return F.one_hot(logp.argmax(-1), c.classes).to(logp.dtype).flatten(-2)

    @property
    def noise_dim(self) -> int:
        """Random numbers per latent sample: one per categorical variable, or per Gaussian unit."""
        return self.config.categories if self.categorical else self.config.stoch

    def _device_noise(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """Training noise (…, noise_dim), drawn on the model's device (global RNG, seeded by the trainer)."""
        shape = (*shape, self.noise_dim)
        if self.categorical:
            return torch.rand(shape, device=like.device)
        return torch.randn(shape, device=like.device, dtype=like.dtype)

    def _step_noise(self, batch: int, samples: int, generator: torch.Generator | None, like: torch.Tensor
                    ) -> torch.Tensor:
        """(samples, B, noise_dim) latent noise of one imagined step (see `stratified_noise`), on `like`'s device."""
        noise = stratified_noise(batch, self.noise_dim, samples, generator, gaussian=not self.categorical)
        return noise.to(device=like.device)

    def _kl(self, p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """KL(p || q) summed over the latent, (…,)."""
        p, q = p.float(), q.float()  # reductions in float32 also under bf16 autocast
        if self.categorical:
            return (p.exp() * (p - q)).sum(-1)
        pm, ps = p.chunk(2, -1)
        qm, qs = q.chunk(2, -1)
        return (torch.log(qs / ps) + (ps**2 + (pm - qm) ** 2) / (2 * qs**2) - 0.5).sum(-1)

    # -------------------------------------------------------------- recurrent core
    def _initial(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        deter = torch.tanh(self.initial_deter).unsqueeze(0)
        stoch = self._mode(self._dist(self.prior_net(deter)))
        return deter.expand(batch, -1), stoch.expand(batch, -1)

    def _advance(self, deter: torch.Tensor, stoch: torch.Tensor, action_feat: torch.Tensor) -> torch.Tensor:
        """h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}])."""
        return self.gru(self.img_in(torch.cat([stoch, action_feat.to(stoch.dtype)], -1)), deter)

    def _img_step(self, deter: torch.Tensor, stoch: torch.Tensor, action_feat: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """h_t and the prior p(z_t | h_t)."""
        deter = self._advance(deter, stoch, action_feat)
        return deter, self._dist(self.prior_net(deter))

    def _filter(self, deter: torch.Tensor, stoch: torch.Tensor, action_feat: torch.Tensor, embed: torch.Tensor,
                is_first: torch.Tensor, noise: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Filter a window: at each step reset to the initial state where `is_first`, advance h, then take the
        posterior q(z_t | h_t, o_t), sampled with `noise` (T, B, noise_dim) (training) or its mode (None).

        Returns deter (B, T, deter), stoch (B, T, stoch) and the posteriors (B, T, ·). Only the recurrence runs
        per step: the first layers' action and embedding terms are one matmul over the window (a linear layer
        of a concatenation is the sum of its blocks), and the prior, which does not feed back, is left to the
        caller to apply to all steps at once."""
        b, t = embed.shape[:2]
        init_deter, init_stoch = self._initial(b)
        first = is_first.unsqueeze(-1)  # (B, T, 1)
        in_linear, post_linear = self.img_in[0], self.posterior_net[0]
        assert isinstance(in_linear, nn.Linear) and isinstance(post_linear, nn.Linear)
        s, d = self.stoch_dim, self.config.deter
        action_feat = torch.where(first, torch.zeros_like(action_feat), action_feat).to(stoch.dtype)
        act_in = F.linear(action_feat, in_linear.weight[:, s:], in_linear.bias)  # (B, T, hidden)
        emb_in = F.linear(embed.to(deter.dtype), post_linear.weight[:, d:], post_linear.bias)  # (B, T, hidden)
        w_stoch, w_deter = in_linear.weight[:, :s].t(), post_linear.weight[:, :d].t()
        in_rest, post_rest = self.img_in[1:], self.posterior_net[1:]
        resets = is_first.any(0).tolist()  # steps where some row starts an episode (one host sync per window)
        deters, stochs, posts = [], [], []
        for i in range(t):
            if resets[i]:
                deter = torch.where(first[:, i], init_deter.to(deter.dtype), deter)
                stoch = torch.where(first[:, i], init_stoch.to(stoch.dtype), stoch)
            deter = self.gru(in_rest(torch.addmm(act_in[:, i], stoch, w_stoch)), deter)
            post = self._dist(post_rest(torch.addmm(emb_in[:, i], deter, w_deter)))
            stoch = self._mode(post) if noise is None else self._sample(post, noise[i])
            deters.append(deter)
            stochs.append(stoch)
            posts.append(post)
        return torch.stack(deters, 1), torch.stack(stochs, 1), torch.stack(posts, 1)

    # -------------------------------------------------------------- observations
    def _obs_input(self, obs: torch.Tensor) -> torch.Tensor:
        """Observations (B, T, …) in physical units to normalized encoder inputs (images channel-first)."""
        if tuple(obs.shape[2:]) != self.obs_shape:
            raise InputError(
                f"rssm: observations of shape {tuple(obs.shape)}; expected (B, T, *{self.obs_shape})")
        x = self.units.normalize_obs(obs)
        return x.permute(0, 1, 4, 2, 3) if self.image_obs else x

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        b, t = x.shape[:2]
        return self.encoder(x.flatten(0, 1)).unflatten(0, (b, t))

    def _decode(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, feat) -> mean, std in normalized units, (N, D) or (N, C, H, W)."""
        return self._obs_dist(self.decoder(feat))

    def _obs_dist(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's output (N, 2D) or (N, 2C, H, W) -> mean, std in normalized units."""
        mean, raw = out.chunk(2, 1)
        c = self.config
        return mean, c.min_obs_std + (c.max_obs_std - c.min_obs_std) * torch.sigmoid(raw)

    def _to_obs_layout(self, x: torch.Tensor) -> torch.Tensor:
        """(…, C, H, W) -> (…, H, W, C) for images; vectors unchanged."""
        return x.movedim(-3, -1) if self.image_obs else x

    def _encode_actions(self, action: torch.Tensor, is_first: torch.Tensor) -> torch.Tensor:
        if self.discrete:  # fill values (-1) where is_first are ignored; keep one_hot's input valid
            action = torch.where(is_first, torch.zeros_like(action), action)
        return self.units.encode_action(action)

    # -------------------------------------------------------------- interface
    def initial_state(self, batch: int) -> State:
        """The learned initial state; `observe` resets to it wherever `is_first` is set."""
        with torch.no_grad():
            deter, stoch = self._initial(batch)
        return {"deter": deter.clone(), "stoch": stoch.clone(), "horizon": self.fresh_horizon(batch, deter.device)}

    def observe(self, state: State, obs: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor) -> State:
        """Filter `(B, T, …)` observations with the posterior mode; returns the belief after the last one."""
        embed = self._embed(self._obs_input(obs))
        is_first = is_first.bool()
        act = self._encode_actions(action, is_first)
        deter, stoch, _ = self._filter(state["deter"], state["stoch"], act, embed, is_first, noise=None)
        return {"deter": deter[:, -1], "stoch": stoch[:, -1],
                "horizon": self.fresh_horizon(deter.shape[0], deter.device)}

    def step(
        self, state: State, action: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[State, Prediction]:
        deter, stoch = state["deter"], state["stoch"]
        b = deter.shape[0]
        spread_wanted = self.uncertainty == "elites"
        k = self.config.uncertainty_samples if spread_wanted else 1
        deter = self._advance(deter, stoch, self.units.encode_action(action))
        raw_prior = self.prior_net(deter)
        # K prior samples (K, B, stoch): sample 0 continues the trajectory, all K measure the spread.
        noise = self._step_noise(b, k, generator, raw_prior)
        obs_noise = torch.randn(b, *self.decoded_shape, generator=generator, device="cpu")
        if self.categorical and not torch.is_grad_enabled():
            probs = self._probs(raw_prior)  # (B, categories, classes)
            index = class_index(probs.unsqueeze(0).expand(k, -1, -1, -1), noise)  # (K, B, categories)
            out, reward_raw, term_raw = one_hot_heads(deter, index, self.decoder, self.reward_head,
                                                      self.termination_head)
            stoch = F.one_hot(index[0], self.config.classes).to(probs.dtype).flatten(-2)
        else:  # differentiable (straight-through) samples, or Gaussian latents
            if self.categorical:
                samples = one_hot_sample(self._probs(raw_prior).unsqueeze(0).expand(k, -1, -1, -1), noise)
            else:
                prior = self._dist(raw_prior)
                samples = self._sample(prior.unsqueeze(0).expand(k, -1, -1), noise.to(prior.dtype))
            feats = torch.cat([deter.unsqueeze(0).expand(k, -1, -1), samples], -1)  # (K, B, F)
            out, stoch = self.decoder(feats.flatten(0, 1)), samples[0]
            reward_raw, term_raw = self.reward_head(feats[0]), self.termination_head(feats[0])
        mean_n, std_n = self._obs_dist(out)
        # Predictions leave in float32 (physical units), also under bf16 autocast.
        mean_n, std_n = mean_n.float().unflatten(0, (k, b)), std_n.float().unflatten(0, (k, b))
        own_mean, own_std = mean_n[0], std_n[0]
        sample_n = own_mean + own_std * obs_noise.to(own_mean.device)
        if k > 1:
            spread, center = mean_n.std(0, unbiased=False), mean_n.mean(0)
            total_std = (own_std**2 + spread**2).sqrt()
        else:  # "own"/"none", or a single sample: the decoder's std only, centered on the sample's own mean
            spread, center, total_std = torch.zeros_like(own_mean), own_mean, own_std
        if not self.image_obs:
            # Calibration scales the deviation from the center (latent and decoder noise together with the K
            # spread samples, decoder noise alone without them). The latent carries on unscaled: observations
            # are not fed back.
            sample_n = self.calibrate(state, center, sample_n)[1]
            own_mean = self.calibrate(state, center, own_mean)[1]
            total_std = self.calibration_scale(state) * total_std
        if self.uncertainty == "none":
            total_std = torch.zeros_like(total_std)

        reward_n = symexp(reward_raw.squeeze(-1).float())
        pred = Prediction(
            obs=self.units.clamp_plausible(self.units.denormalize_obs(self._to_obs_layout(sample_n))),
            obs_mean=self.units.clamp_plausible(self.units.denormalize_obs(self._to_obs_layout(own_mean))),
            obs_std=self.units.denormalize_obs_std(self._to_obs_layout(total_std)),
            reward=self.units.denormalize_reward(reward_n),
            terminated=torch.sigmoid(term_raw.squeeze(-1).float()),
            uncertainty=spread.flatten(1).mean(-1),
        )
        return {"deter": deter, "stoch": stoch, "horizon": state["horizon"] + 1}, pred

    # -------------------------------------------------------------- training
    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """DreamerV3 loss of a batch of windows; each starts from the initial state (is_first at t=0)."""
        c = self.config
        if self.image_obs:
            if batch.image is None:
                raise InputError("rssm: the store's observation is an image but the batch has no `image`")
            obs = batch.image
        else:
            obs = batch.obs
        x = self._obs_input(obs)  # (B, T, D) or (B, T, C, H, W), normalized
        b, t = x.shape[:2]
        is_first = batch.is_first.bool().clone()
        is_first[:, 0] = True
        act = self._encode_actions(previous_actions(batch.action, is_first), is_first)
        embed = self._embed(x)

        deter, stoch = self._initial(b)
        noise = self._device_noise((t, b), embed)
        deter, stoch, post = self._filter(deter, stoch, act, embed, is_first, noise)
        feat = torch.cat([deter, stoch], -1)  # (B, T, F)
        prior = self._dist(self.prior_net(deter))  # all steps at once: the prior does not feed back

        # Reconstruction: Gaussian NLL summed over channels (pixels), averaged over steps.
        mean, std = self._decode(feat.flatten(0, 1))
        mean, std = mean.float(), std.float()  # a sum over pixels is too coarse in bf16
        target = x.flatten(0, 1).float()
        nll = 0.5 * ((target - mean) / std) ** 2 + std.log() + 0.5 * math.log(2 * math.pi)
        obs_loss = nll.flatten(1).sum(-1).mean()

        # Reward r_t (after a_t at o_t) is predicted from the feature at t+1, which has seen a_t.
        reward_pred = self.reward_head(feat[:, 1:]).squeeze(-1).float()
        reward_target = symlog(self.units.normalize_reward(batch.reward[:, :-1].float()))
        valid = (~is_first[:, 1:] & ~batch.is_last[:, :-1].bool()).to(reward_pred.dtype)
        reward_loss = (((reward_pred - reward_target) ** 2) * valid).sum() / valid.sum().clamp_min(1.0)

        term_logit = self.termination_head(feat).squeeze(-1).float()
        term_loss = F.binary_cross_entropy_with_logits(term_logit, batch.terminated.float())

        # KL balancing with free bits (DreamerV3): the prior learns fast, the posterior is held loosely.
        kl_dyn = self._kl(post.detach(), prior)
        kl_rep = self._kl(post, prior.detach())
        kl_loss = (c.kl_dyn * kl_dyn.clamp_min(c.free_nats).mean()
                   + c.kl_rep * kl_rep.clamp_min(c.free_nats).mean())

        total = (c.obs_scale * obs_loss + c.reward_scale * reward_loss
                 + c.termination_scale * term_loss + kl_loss)
        metrics = {
            "obs_nll": obs_loss.detach(),
            "obs_mse": ((target - mean) ** 2).mean().detach(),
            "obs_std": std.mean().detach(),
            "reward_mse": reward_loss.detach(),
            "termination_bce": term_loss.detach(),
            "kl": kl_dyn.mean().detach(),
        }
        if not self.training:  # validation and test: what an imagined step predicts (see `_prior_mse`)
            total = metrics["prior_mse"] = self._prior_mse(deter, prior, target, is_first)
        return total, metrics

    def _prior_mse(self, deter: torch.Tensor, prior: torch.Tensor, target: torch.Tensor, is_first: torch.Tensor
                   ) -> torch.Tensor:
        """Mean squared error (normalized units) of the one-step prediction: o_t decoded from h_t and the prior's
        mode, on steps after an episode's first row. This is what an imagined step predicts. Validation keeps
        it rather than the training loss: as the decoder's std shrinks on the train split, the validation NLL
        grows while the predictions still improve (the zoo's tank: NLL 26 → 298 over six epochs while the
        reconstruction MSE fell 2.0 → 1.4), so early stopping kept the first epoch's weights."""
        feat = torch.cat([deter, self._mode(prior).to(deter.dtype)], -1).flatten(0, 1)
        error = ((self._decode(feat)[0].float() - target) ** 2).flatten(1).mean(-1)  # (B·T,)
        keep = (~is_first).flatten().to(error.dtype)
        return ((error * keep).sum() / keep.sum().clamp_min(1.0)).detach()
