"""Networks of the diffusion world model: the EDM denoiser of the next observation and the reward heads.

The denoiser follows Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative
Models" (EDM): the network F is wrapped as

    D(x; σ) = c_skip(σ) · x + c_out(σ) · F(c_in(σ) · x, c_noise(σ) | history, cond)

so that F's input and training target both have unit variance at every noise level σ. diffusers' EDM
schedulers apply the same c_in (`scale_model_input`) and c_skip / c_out (`step`) at sampling time, so
the networks here return F, "the model output" in diffusers' terms (prediction_type "epsilon" there
means exactly EDM's F); `edm_coefficients` gives the four factors for training.

Conditioning (both networks, DIAMOND-style):
- `history` (N, K, …): the last K observations, normalized (vectors: z-scores; images: [-1, 1],
  channel-first). Vectors are flattened into the MLP input; image frames are stacked as extra input
  channels of the UNet.
- `cond` (N, K·A + K): the K actions taken at those observations (the last one is the action being
  imagined) as model features, then a validity mask (1 for a real observation, 0 for padding after a
  reset). Vectors: part of the MLP input; images: added to the noise-level embedding (class embedding).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

# c_noise = ¼ ln σ lies in about [-1.6, 0.4]; the sinusoidal embeddings were designed for DDPM's
# timesteps 0…1000, so the networks see 1000 · c_noise (as diffusers' consistency-model scheduler does).
NOISE_EMBED_SCALE = 1000.0
NOISE_FEATURES = 64


def edm_coefficients(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, ...]:
    """EDM preconditioning (Karras et al. 2022, table 1): c_skip, c_out, c_in, c_noise for σ `(N,)`."""
    var = sigma**2 + sigma_data**2
    c_skip = sigma_data**2 / var
    c_out = sigma * sigma_data / var.sqrt()
    c_in = 1.0 / var.sqrt()
    c_noise = 0.25 * sigma.log()
    return c_skip, c_out, c_in, c_noise


def _bcast(coef: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1, …) to broadcast against `like` (N, …)."""
    return coef.reshape(-1, *([1] * (like.dim() - 1)))


def edm_denoise(
    network: nn.Module, x: torch.Tensor, sigma: torch.Tensor, history: torch.Tensor, cond: torch.Tensor,
    sigma_data: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """D(x; σ) and the raw network output F for noisy samples `x` (N, …) at noise levels `sigma` (N,)."""
    c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, sigma_data)
    out = network(_bcast(c_in, x) * x, c_noise, history, cond).float()
    return _bcast(c_skip, x) * x + _bcast(c_out, x) * out, out


class FiLMResBlock(nn.Module):
    """Pre-norm residual MLP block whose normalization is scaled and shifted by the noise embedding."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden, elementwise_affine=False)
        self.film = nn.Linear(hidden, 2 * hidden)
        self.fc1 = nn.Linear(hidden, 2 * hidden)
        self.fc2 = nn.Linear(2 * hidden, hidden)
        # Each block starts as the identity, as the UNet's resnets effectively do.
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(F.silu(emb)).chunk(2, -1)
        y = self.norm(h) * (1.0 + scale) + shift
        return h + self.fc2(F.silu(self.fc1(F.silu(y))))


class VectorDenoiser(nn.Module):
    """F for vector observations: a residual MLP over [c_in·x, history, cond], FiLM'd by the noise level.

    forward: x (N, D), c_noise (N,) or (1,), history (N, K, D), cond (N, K·A + K) -> (N, D). A (1,)
    noise level (the sampler's: one σ for all rows) is embedded and FiLM-projected once and broadcast,
    which saves a third of a sampling call's work.
    """

    def __init__(self, obs_dim: int, history: int, cond_dim: int, hidden: int, blocks: int) -> None:
        super().__init__()
        # diffusers is imported where it is used: the import takes seconds, and only diffusion models need it.
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        self.noise_proj = Timesteps(NOISE_FEATURES, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.noise_embed = TimestepEmbedding(NOISE_FEATURES, hidden)
        self.inp = nn.Linear(obs_dim * (history + 1) + cond_dim, hidden)
        self.blocks = nn.ModuleList(FiLMResBlock(hidden) for _ in range(blocks))
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, obs_dim)
        # F = 0 at initialization: D(x; σ) = c_skip · x, the EDM starting point.
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, history: torch.Tensor, cond: torch.Tensor
                ) -> torch.Tensor:
        emb = self.noise_embed(self.noise_proj(NOISE_EMBED_SCALE * c_noise).to(x.dtype))  # (N or 1, hidden)
        h = self.inp(torch.cat([x, history.flatten(1), cond], -1))
        for block in self.blocks:
            h = block(h, emb)
        return self.out(F.silu(self.out_norm(h)))


class ImageDenoiser(nn.Module):
    """F for image observations: a diffusers `UNet2DModel` (DIAMOND-style conditioning).

    The K past frames are stacked with the noisy next frame as input channels; actions and the
    validity mask go through a small MLP into the UNet's class embedding, which is added to the
    noise-level embedding and modulates every resnet (scale-shift, as in DIAMOND's AdaGroupNorm).

    forward: x (N, C, H, W), c_noise (N,), history (N, K, C, H, W), cond (N, K·A + K) -> (N, C, H, W).
    """

    def __init__(
        self, channels: int, size: tuple[int, int], history: int, cond_dim: int, block_channels: list[int],
        layers_per_block: int, attention: bool, norm_groups: int,
    ) -> None:
        super().__init__()
        n = len(block_channels)
        # Attention only at the lowest resolution (and in the mid block), where it is cheap.
        down = ("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D" if attention else "DownBlock2D",)
        up = ("AttnUpBlock2D" if attention else "UpBlock2D",) + ("UpBlock2D",) * (n - 1)
        from diffusers import UNet2DModel

        # Any: diffusers' config decorator hides UNet2DModel's attributes and call from type checkers.
        unet: Any = UNet2DModel(
            sample_size=size,
            in_channels=channels * (history + 1),
            out_channels=channels,
            block_out_channels=tuple(block_channels),
            layers_per_block=layers_per_block,
            down_block_types=down,
            up_block_types=up,
            add_attention=attention,
            norm_num_groups=norm_groups,
            resnet_time_scale_shift="scale_shift",
            time_embedding_type="positional",
            flip_sin_to_cos=True,
            freq_shift=0,
            class_embed_type="identity",
        )
        emb = block_channels[0] * 4  # UNet2DModel's time-embedding width
        self.cond_embed = nn.Sequential(nn.Linear(cond_dim, emb), nn.SiLU(), nn.Linear(emb, emb))
        nn.init.zeros_(unet.conv_out.weight)
        nn.init.zeros_(unet.conv_out.bias)
        self.unet = unet

    def forward(self, x: torch.Tensor, c_noise: torch.Tensor, history: torch.Tensor, cond: torch.Tensor
                ) -> torch.Tensor:
        inp = torch.cat([x, history.flatten(1, 2).to(x.dtype)], 1)  # (N, C·(K+1), H, W)
        if x.is_contiguous(memory_format=torch.channels_last):
            inp = inp.contiguous(memory_format=torch.channels_last)
        out = self.unet(inp, NOISE_EMBED_SCALE * c_noise, class_labels=self.cond_embed(cond)).sample
        return out


class HistoryHeads(nn.Module):
    """Reward (normalized units) and termination logit of the transition from the conditioning history.

    Reads the same (history, cond) as the denoiser, so `cond`'s last action is the one being taken.
    forward: history (N, K, …), cond (N, E) -> reward (N,), termination logit (N,).
    """

    def __init__(self, obs_shape: tuple[int, ...], history: int, cond_dim: int, hidden: int) -> None:
        super().__init__()
        self.image = len(obs_shape) == 3
        if self.image:
            c = obs_shape[0]
            self.encoder: nn.Module = nn.Sequential(
                nn.Conv2d(c * history, hidden // 4, 4, 2, 1), nn.SiLU(),
                nn.Conv2d(hidden // 4, hidden // 2, 4, 2, 1), nn.SiLU(),
                nn.Conv2d(hidden // 2, hidden // 2, 4, 2, 1), nn.SiLU(),
                nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            )
            feat = hidden // 2 * 16
        else:
            self.encoder = nn.Flatten()
            feat = obs_shape[0] * history
        self.mlp = nn.Sequential(
            nn.Linear(feat + cond_dim, hidden), nn.LayerNorm(hidden), nn.SiLU(),
            nn.Linear(hidden, hidden), nn.LayerNorm(hidden), nn.SiLU(),
            nn.Linear(hidden, 2),
        )

    def forward(self, history: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(history.flatten(1, 2) if self.image else history)
        reward, term = self.mlp(torch.cat([h, cond.to(h.dtype)], -1)).float().unbind(-1)
        return reward, term
