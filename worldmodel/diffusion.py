"""Diffusion world model (DIAMOND-style): an EDM denoiser of the next observation given the last K.

    p(o_{t+1} | o_{t-K+1..t}, a_{t-K+1..t})  is sampled by denoising Gaussian noise in `num_steps` steps.

- Network (worldmodel/denoiser.py): an EDM-preconditioned denoiser, a residual MLP for vector
  observations and a diffusers `UNet2DModel` for images, with reward / termination heads on the same
  conditioning. By default the model denoises the change from the last observation (`residual`);
  `residual: false` denoises whole observations, as DIAMOND does for frames. A vector residual is
  denoised in units of its per-channel std (`target_scale`, measured on the first training batch), so
  the target has unit variance on every channel; images and whole observations are not scaled.
- Sampler (`EDMSampler`): diffusers' `EDMEulerScheduler` (default) or `EDMDPMSolverMultistepScheduler`;
  the denoising loop is written out in `EDMSampler.sample`.
- Training: denoising score matching with EDM's loss weighting and a log-normal σ distribution
  (ln σ ~ N(train_sigma_mean, train_sigma_std²)), plus the reward (MSE) and termination (BCE) heads.

State (`observe` / `step`): a history buffer of the last K observations
    {"obs": (B, K, D) z-scores, or (B, K, C, H, W) images in [-1, 1] (channel-first),
     "action": (B, K, A) model features of the action taken *before* each buffered observation,
     "count": (B,) int64 real observations in the buffer (1…K; 0 for an empty state)}.
After a reset (`is_first`) the buffer is padded with copies of the first observation and zero actions;
the networks see which slots are real. Training includes such padded histories (the first K-1
targets of every window), so a model can start from a single observation.

Cost: one imagined step is `num_steps` network calls on B · `spread_samples` rows (samples drawn in
one batched call; the noise level, one per call, is embedded once); `spread_samples: 1` makes a step S
times cheaper but reports no uncertainty and leaves calibration nothing to scale.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import torch
from torch.nn import functional as F

from data_pipeline.errors import InputError
from data_pipeline.schema import StoreSchema
from data_pipeline.windows.batch import Batch, Normalization
from worldmodel.base import ModelBase
from worldmodel.denoiser import HistoryHeads, ImageDenoiser, VectorDenoiser, edm_coefficients, edm_denoise
from worldmodel.interface import Prediction, State
from worldmodel.sampler import EDMSampler
from worldmodel.target_scale import load_target_scale, set_target_scale


@dataclass
class DiffusionConfig:
    """Sizes, noise schedule and sampler of the diffusion world model. The defaults are the "small" preset."""

    history: int = 4
    """K: observations (and the actions taken at them) the next observation is conditioned on."""
    num_steps: int = 3
    """Denoising steps per imagined step (network calls, for the Euler sampler)."""
    solver: Literal["euler", "dpm"] = "euler"
    """Sampler: diffusers' EDMEulerScheduler or EDMDPMSolverMultistepScheduler (2nd-order DPM-Solver++)."""
    sigma_data: float = 0.5
    """EDM σ_data: the standard deviation of the target. A vector `residual` is divided by its per-channel
    std (`target_scale`), so its std is 1 on any system; images in [-1, 1]: DIAMOND's 0.5 (docs/diffusion.md)."""
    sigma_min: float = 2e-3
    """Smallest noise level of the sampling schedule."""
    sigma_max: float = 5.0
    """Largest noise level of the sampling schedule (DIAMOND: 5; sampling starts from N(0, σ_max²))."""
    rho: float = 7.0
    """Karras schedule exponent."""
    train_sigma_mean: float = -0.4
    """Mean of ln σ during training (log-normal noise levels; DIAMOND -0.4, EDM -1.2)."""
    train_sigma_std: float = 1.2
    """Standard deviation of ln σ during training."""
    residual: bool = True
    """Denoise the change from the last observation instead of the observation (DIAMOND denoises whole
    frames; the change learns much faster at small compute, see docs/diffusion.md)."""
    hidden: int = 256
    """Width of the vector denoiser's residual MLP."""
    blocks: int = 3
    """Residual blocks of the vector denoiser."""
    unet_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    """Image denoiser: channels of each UNet2DModel resolution level (height and width must divide by
    2^(levels-1))."""
    unet_layers: int = 1
    """Image denoiser: resnet layers per UNet level."""
    attention: bool = False
    """Image denoiser: self-attention at the lowest resolution and in the mid block."""
    norm_groups: int = 8
    """Image denoiser: GroupNorm groups (must divide every entry of unet_channels)."""
    head_hidden: int = 128
    """Width of the reward / termination heads."""
    reward_scale: float = 1.0
    """Weight of the reward loss (MSE of the normalized reward)."""
    termination_scale: float = 1.0
    """Weight of the termination loss (binary cross-entropy)."""
    spread_samples: int | None = None
    """Samples drawn per imagined step (in one batched call) for obs_mean / obs_std / uncertainty;
    None: 4 for vector observations, 1 for images. With 1, obs_std and uncertainty are 0."""
    bf16: bool = False
    """Run the networks under bf16 autocast (CUDA only; ignored on CPU)."""
    compile: bool = False
    """torch.compile the denoiser network on first use (CUDA only; ignored on CPU)."""
    channels_last: bool = False
    """Channels-last memory format for the image UNet (CUDA only)."""
    plausible_margin: float = 0.25
    """Imagined observations stay within the recorded range widened by this fraction of it."""

    @classmethod
    def preset(cls, name: str) -> DiffusionConfig:
        """A size preset: "tiny" (tests), "small" (the defaults) or "medium" (DIAMOND's Atari UNet)."""
        presets: dict[str, dict[str, Any]] = {
            "tiny": dict(hidden=32, blocks=2, unet_channels=[8, 16], norm_groups=4, head_hidden=32),
            "small": {},
            "medium": dict(hidden=512, blocks=4, unet_channels=[64, 64, 64, 64], unet_layers=2, head_hidden=256),
        }
        if name not in presets:
            raise InputError(f"DiffusionConfig.preset: unknown preset {name!r}; expected one of {sorted(presets)}")
        return replace(cls(), **presets[name])


class DiffusionWorldModel(ModelBase[DiffusionConfig]):
    """DIAMOND-style diffusion world model over vector or image observations (see the module docstring).

    `step` draws `spread_samples` next observations in one batched call with the given generator:
    `obs` is the first (the trajectory continues from it), `obs_mean` / `obs_std` are the samples' mean
    and standard deviation, `uncertainty` their spread in normalized units averaged over channels
    (pixels). `reward` is the head's regression; `terminated` a probability.
    """

    model_type: ClassVar[str] = "diffusion"
    target_scale: torch.Tensor
    target_scale_set: torch.Tensor

    def __init__(self, config: DiffusionConfig, schema: StoreSchema, normalization: Normalization) -> None:
        super().__init__(config, schema, normalization)
        c = config
        if c.history < 1:
            raise InputError(f"DiffusionConfig.history: {c.history}; expected >= 1")
        if c.spread_samples is not None and c.spread_samples < 1:
            raise InputError(f"DiffusionConfig.spread_samples: {c.spread_samples}; expected >= 1 or null")
        k = c.history
        # With one observation of history the belief is the last observation: rows assimilate independently.
        self.markov = k == 1
        self.cond_dim = k * self.action_dim + k  # K actions, then the validity mask
        if self.image_obs:
            assert schema.image_shape is not None  # image_obs implies it
            h, w, ch = (int(s) for s in schema.image_shape)
            levels = len(c.unet_channels)
            if h % 2 ** (levels - 1) or w % 2 ** (levels - 1):
                raise InputError(f"diffusion: image_shape {schema.image_shape}: height and width must divide by "
                                 f"2^(len(unet_channels)-1) = {2 ** (levels - 1)}")
            bad = [n for n in c.unet_channels if n % c.norm_groups]
            if bad:
                raise InputError(f"DiffusionConfig.norm_groups: {c.norm_groups} does not divide unet_channels {bad}")
            self.sample_shape: tuple[int, ...] = (ch, h, w)
            self.denoiser: torch.nn.Module = ImageDenoiser(ch, (h, w), k, self.cond_dim, list(c.unet_channels),
                                                           c.unet_layers, c.attention, c.norm_groups)
        else:
            if self.obs_dim == 0:
                raise InputError("diffusion: the store has no observation channels")
            self.sample_shape = (self.obs_dim,)
            self.denoiser = VectorDenoiser(self.obs_dim, k, self.cond_dim, c.hidden, c.blocks)
        self.heads = HistoryHeads(self.sample_shape, k, self.cond_dim, c.head_hidden)
        self.sampler = EDMSampler(c.num_steps, c.solver, c.sigma_min, c.sigma_max, c.sigma_data, c.rho)
        self.residual = c.residual
        self.spread = c.spread_samples or (1 if self.image_obs else 4)
        self._prepared_for: torch.device | None = None
        # Vector residuals are denoised in units of their per-channel std (`target_scale`, measured on the first
        # training batch), so that the target has unit variance on every channel and system and `sigma_data`
        # 1 fits it (EDM), whatever the per-step change is in z-scores (Pendulum ~0.15-0.2, a slow plant ~0.01).
        # Whole observations (`residual: false`) and images are z-scores / [-1, 1] already and are not scaled.
        self.scaled = self.residual and not self.image_obs
        if self.scaled:
            self.register_buffer("target_scale", torch.ones(self.obs_dim))
            self.register_buffer("target_scale_set", torch.tensor(False))

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """A file written before `target_scale` existed denoises unscaled residuals (scale 1, as it was trained);
        a scale that is not finite and positive floats of shape (obs_dim,) is refused (the file is not trusted)."""
        if self.scaled:
            load_target_scale(state_dict, prefix, self.obs_dim, "the per-channel std of the residual target")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _set_target_scale(self, target: torch.Tensor) -> None:
        """Measure `target_scale` once, on the first training batch. A channel that (nearly) never changes keeps
        scale 1: dividing by its ~0 std would only amplify rounding (as in the ensemble)."""
        if self.scaled and self.training:
            set_target_scale(self.target_scale, self.target_scale_set, target)

    # -------------------------------------------------------------- device speed-ups
    def _prepare(self, device: torch.device) -> None:
        """Once per device: channels-last and torch.compile, on CUDA only (both are optional)."""
        if self._prepared_for == device:
            return
        self._prepared_for = device
        if device.type != "cuda":
            return
        if self.config.channels_last and self.image_obs:
            self.denoiser.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # torch stubs lack it
        if self.config.compile:
            self.denoiser.compile()  # in place: parameters and state_dict keys are unchanged

    def _autocast(self, device: torch.device) -> Any:
        if self.config.bf16 and device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return nullcontext()

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        if self.image_obs and self.config.channels_last and x.is_cuda:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    # -------------------------------------------------------------- units and layout
    def _to_model(self, obs: torch.Tensor) -> torch.Tensor:
        """Observations (…, D) or (…, H, W, C) in physical units -> normalized model layout."""
        shape = self.sample_shape
        want = (shape[1], shape[2], shape[0]) if self.image_obs else shape  # images arrive (…, H, W, C)
        if tuple(obs.shape[-len(want):]) != want:
            raise InputError(f"diffusion: observations of shape {tuple(obs.shape)}; expected (…, {want})")
        x = self.units.normalize_obs(obs if self.image_obs else obs.float())
        return x.movedim(-1, -3) if self.image_obs else x

    def _to_obs(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized model layout -> physical units (images (…, H, W, C) in [0, 255]), clamped plausible."""
        x = x.movedim(-3, -1) if self.image_obs else x
        return self.units.clamp_plausible(self.units.denormalize_obs(x.float()))

    def _action_features(self, action: torch.Tensor) -> torch.Tensor:
        """Actions (…,) / (…, A) -> features (…, A); Discrete fill values (-1) and NaN become zeros."""
        if self.discrete:
            a = action.long()
            feat = self.units.encode_action(a.clamp_min(0))
            return feat * (a >= 0).unsqueeze(-1).to(feat.dtype)
        return torch.nan_to_num(self.units.encode_action(action), nan=0.0)

    def _cond(self, action_feat: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """(N, K, A) action features and (N,) real-observation counts -> (N, K·A + K) conditioning."""
        k = self.config.history
        mask = torch.arange(k, device=count.device) >= (k - count).unsqueeze(-1)  # the last `count` slots
        return torch.cat([action_feat.flatten(1), mask.to(action_feat.dtype)], -1)

    # -------------------------------------------------------------- network and sampler
    def sample(self, history: torch.Tensor, cond: torch.Tensor, generator: torch.Generator | None = None
               ) -> torch.Tensor:
        """Denoised targets (N, *sample_shape) for a batch of conditions: the change from the last
        observation (`residual`) or the next observation, normalized (z-scores: `target_scale` undone)."""
        device = history.device
        self._prepare(device)
        history = self._layout(history)

        def model_output(model_input: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
            with self._autocast(device):
                return self.denoiser(self._layout(model_input), c_noise, history, cond).float()

        x0 = self.sampler.sample(model_output, (history.shape[0], *self.sample_shape), generator, device)
        return x0 * self.target_scale if self.scaled else x0

    # -------------------------------------------------------------- interface
    def initial_state(self, batch: int) -> State:
        """An empty history (count 0); the first observation assimilated fills it."""
        device = self.units.obs_mean.device
        k = self.config.history
        return {
            "obs": torch.zeros(batch, k, *self.sample_shape, device=device),
            "action": torch.zeros(batch, k, self.action_dim, device=device),
            "count": torch.zeros(batch, dtype=torch.long, device=device),
            "horizon": self.fresh_horizon(batch, device),
        }

    def observe(self, state: State, obs: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor) -> State:
        """Push real observations `(B, T, …)` into the history; reset (pad with o_t) where `is_first`
        or the state is empty. `action[:, t]` is the action taken before `obs[:, t]`."""
        x = self._to_model(obs)
        feat = self._action_features(action)
        buf_obs, buf_act, count = state["obs"], state["action"], state["count"]
        k = self.config.history
        for t in range(x.shape[1]):
            reset = is_first[:, t].bool() | (count == 0)
            new_obs = x[:, t : t + 1].to(buf_obs.dtype)
            shifted_obs = torch.cat([buf_obs[:, 1:], new_obs], 1)
            shifted_act = torch.cat([buf_act[:, 1:], feat[:, t : t + 1].to(buf_act.dtype)], 1)
            r_obs = reset.view(-1, *([1] * (buf_obs.dim() - 1)))
            buf_obs = torch.where(r_obs, new_obs.expand_as(buf_obs), shifted_obs)
            buf_act = torch.where(reset.view(-1, 1, 1), torch.zeros_like(buf_act), shifted_act)
            count = torch.where(reset, torch.ones_like(count), (count + 1).clamp_max(k))
        return {"obs": buf_obs, "action": buf_act, "count": count, "horizon": self.fresh_horizon(count.shape[0],
                                                                                                  count.device)}

    def step(
        self, state: State, action: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[State, Prediction]:
        history, count = state["obs"], state["count"]
        b, s = history.shape[0], self.spread
        # The actions at each buffered observation: the buffer holds those *before* them, shifted by one.
        act = torch.cat([state["action"][:, 1:], self._action_features(action).unsqueeze(1).to(history.dtype)], 1)
        cond = self._cond(act, count)
        # All S samples in one batched call, sample-major: rows [i·B, (i+1)·B) are sample i.
        if s > 1:
            x0 = self.sample(history.repeat(s, *([1] * (history.dim() - 1))), cond.repeat(s, 1), generator)
        else:
            x0 = self.sample(history, cond, generator)
        x0 = x0.unflatten(0, (s, b))
        next_n = history[:, -1].unsqueeze(0) + x0 if self.residual else x0  # (S, B, …)
        carried = next_n
        if s > 1 and not self.image_obs:  # calibration: each sample's deviation from the samples' mean
            center = next_n.mean(0)
            pairs = [self.calibrate(state, center, x) for x in next_n]
            carried, next_n = torch.stack([c for c, _ in pairs]), torch.stack([r for _, r in pairs])
        next_obs = self._to_obs(next_n)  # physical, clamped to the plausible range (reported)
        carried = self._to_model(self._to_obs(carried[0]))  # the trajectory continues from sample 0
        next_n = self._to_model(next_obs)

        with self._autocast(history.device):
            reward_n, term_logit = self.heads(history, cond)
        if s > 1:
            spread = next_n.std(0, unbiased=False)
            obs_mean, obs_std = next_obs.mean(0), next_obs.std(0, unbiased=False)
            uncertainty = spread.flatten(1).mean(-1)
        else:
            obs_mean, obs_std = next_obs[0], torch.zeros_like(next_obs[0])
            uncertainty = torch.zeros(b, device=history.device)
        pred = Prediction(
            obs=next_obs[0],
            obs_mean=obs_mean,
            obs_std=obs_std,
            reward=self.units.denormalize_reward(reward_n),
            terminated=torch.sigmoid(term_logit),
            uncertainty=uncertainty,
        )
        new_state = {
            "obs": torch.cat([history[:, 1:], carried.unsqueeze(1).to(history.dtype)], 1),
            "action": act,
            "count": (count + 1).clamp_max(self.config.history),
            "horizon": state["horizon"] + 1,
        }
        return new_state, pred

    # -------------------------------------------------------------- training
    def training_examples(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Every next-observation target of a batch of windows, with its history and conditioning.

        Target row j (1 ≤ j < T) is conditioned on rows j-K … j-1; rows before the window are padding
        (copies of row 0, zero actions, masked), exactly as `observe` pads after a reset. Windows
        never cross an episode boundary (contract 2). Returns (N = B·(T-1), …) tensors; a vector
        residual `target` is in units of `target_scale` (measured here on the first training batch).
        """
        if self.image_obs:
            if batch.image is None:
                raise InputError("diffusion: the store's observation is an image but the batch has no `image`")
            obs = batch.image
        else:
            obs = batch.obs
        x = self._to_model(obs)  # (B, T, …)
        b, t = x.shape[:2]
        if t < 2:
            raise InputError(f"diffusion: windows of {t} rows; need at least 2 (set data.window >= history + 1)")
        k = self.config.history
        feat = self._action_features(batch.action)  # (B, T, A): the action taken at each row
        padded_obs = torch.cat([x[:, :1].expand(b, k - 1, *x.shape[2:]), x], 1)  # (B, K-1+T, …)
        padded_act = torch.cat([feat.new_zeros(b, k - 1, feat.shape[-1]), feat], 1)
        idx = torch.arange(t - 1, device=x.device).unsqueeze(1) + torch.arange(k, device=x.device)  # (T-1, K)
        history = padded_obs[:, idx]  # (B, T-1, K, …)
        act = padded_act[:, idx]  # (B, T-1, K, A)
        count = torch.arange(1, t, device=x.device).clamp_max(k).expand(b, -1)  # (B, T-1)
        target = x[:, 1:] - x[:, :-1] if self.residual else x[:, 1:]
        if self.scaled:  # in units of the per-channel std (`target_scale`), measured on the first training batch
            self._set_target_scale(target)
            target = target / self.target_scale
        cond = self._cond(act.flatten(0, 1), count.flatten())
        return {
            "target": target.flatten(0, 1),
            "history": history.flatten(0, 1),
            "cond": cond,
            "reward": self.units.normalize_reward(batch.reward[:, :-1].float()).flatten(),  # r_{j-1}: o_{j-1} -> o_j
            "reward_valid": (~batch.is_last[:, :-1].bool()).flatten(),
            "terminated": batch.terminated[:, 1:].float().flatten(),
        }

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """EDM denoising loss of the next observation + reward MSE + termination BCE."""
        c = self.config
        ex = self.training_examples(batch)
        target, history, cond = ex["target"], ex["history"], ex["cond"]
        device = target.device
        self._prepare(device)
        n = target.shape[0]
        # Noise levels ln σ ~ N(P_mean, P_std²) (EDM / DIAMOND), from the global RNG the trainer seeds.
        sigma = (c.train_sigma_mean + c.train_sigma_std * torch.randn(n, device=device)).exp()
        noisy = target + sigma.view(-1, *([1] * (target.dim() - 1))) * torch.randn_like(target)
        with self._autocast(device):
            denoised, out = edm_denoise(self.denoiser, self._layout(noisy), sigma, self._layout(history), cond,
                                        c.sigma_data)
            reward, term_logit = self.heads(history, cond)
        # EDM's weighting λ(σ) = 1 / c_out² makes the loss a plain MSE on the network output F.
        c_skip, c_out, _, _ = edm_coefficients(sigma, c.sigma_data)
        shape = (-1, *([1] * (target.dim() - 1)))
        f_target = (target - c_skip.view(shape) * noisy) / c_out.view(shape)
        denoise_loss = F.mse_loss(out, f_target)
        valid = ex["reward_valid"].float()
        reward_loss = (((reward - ex["reward"]) ** 2) * valid).sum() / valid.sum().clamp_min(1.0)
        term_loss = F.binary_cross_entropy_with_logits(term_logit, ex["terminated"])
        total = denoise_loss + c.reward_scale * reward_loss + c.termination_scale * term_loss
        metrics = {
            "denoise_loss": denoise_loss.detach(),
            "denoised_mse": F.mse_loss(denoised, target).detach(),
            "reward_mse": reward_loss.detach(),
            "termination_bce": term_loss.detach(),
        }
        return total, metrics
