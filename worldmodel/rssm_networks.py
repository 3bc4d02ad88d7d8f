"""Networks of the RSSM (worldmodel/rssm.py): MLPs, DreamerV3's GRU, the image encoder and decoder, categorical
sampling, and the heads evaluated on sampled one-hots without multiplying by zeros.

Plain `nn.Module`s and functions with shapes in their docstrings; the RSSM wires them into a state-space model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


def symlog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log1p(x.abs())


def symexp(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.expm1(x.abs())


def mlp(d_in: int, hidden: int, layers: int, d_out: int) -> nn.Sequential:
    """`layers` × (Linear, LayerNorm, SiLU), then a Linear to `d_out`."""
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.LayerNorm(hidden), nn.SiLU()]
    mods.append(nn.Linear(hidden if layers else d_in, d_out))
    return nn.Sequential(*mods)


class NormGRUCell(nn.Module):
    """DreamerV3's GRU: one LayerNorm'd projection, update gate biased towards keeping the state."""

    def __init__(self, d_in: int, deter: int) -> None:
        super().__init__()
        self.linear = nn.Linear(d_in + deter, 3 * deter, bias=False)
        self.norm = nn.LayerNorm(3 * deter)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        reset, cand, update = self.norm(self.linear(torch.cat([x, h], -1))).chunk(3, -1)
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update - 1.0)
        return update * cand + (1.0 - update) * h


class ConvEncoder(nn.Module):
    """(N, C, H, W) in [-1, 1] -> (N, embed): four stride-2 convs, channels d, 2d, 4d, 8d."""

    def __init__(self, channels: int, depth: int, height: int, width: int) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        c_in = channels
        for i in range(4):
            c_out = depth * 2**i
            mods += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.GroupNorm(1, c_out), nn.SiLU()]
            c_in = c_out
        self.net = nn.Sequential(*mods, nn.Flatten())
        self.out_dim = c_in * (height // 16) * (width // 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvDecoder(nn.Module):
    """(N, feat) -> (N, 2C, H, W): mean and raw std per pixel, mirroring `ConvEncoder`."""

    def __init__(self, feat: int, channels: int, depth: int, height: int, width: int) -> None:
        super().__init__()
        self.start = (8 * depth, height // 16, width // 16)
        self.linear = nn.Linear(feat, math.prod(self.start))
        mods: list[nn.Module] = []
        c_in = 8 * depth
        for i in (2, 1, 0):
            c_out = depth * 2**i
            mods += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), nn.GroupNorm(1, c_out), nn.SiLU()]
            c_in = c_out
        mods.append(nn.ConvTranspose2d(c_in, 2 * channels, 4, 2, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        return self.after_linear(self.linear(feat))

    def after_linear(self, x: torch.Tensor) -> torch.Tensor:
        """The decoder after its first layer: (N, 8d·H/16·W/16) -> (N, 2C, H, W)."""
        return self.net(x.reshape(-1, *self.start))


def class_index(probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """(…, categories) classes sampled from `probs` (…, categories, classes) for uniforms `noise` (…, categories):
    the class where the cumulative probability first exceeds the uniform (inverse-CDF sampling: Gumbel-max's
    distribution from one random number per variable and no logarithms)."""
    cdf = probs.detach().float().cumsum(-1)  # float32 edges, also under bf16 autocast
    return (cdf < noise.float().unsqueeze(-1)).sum(-1).clamp_max(probs.shape[-1] - 1)  # rounding: cdf[-1] < 1


def one_hot_sample(probs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Straight-through one-hot sample (…, categories·classes) of `probs` (…, categories, classes): the forward
    value is the one-hot, the gradient that of the probabilities."""
    onehot = F.one_hot(class_index(probs, noise), probs.shape[-1]).to(probs.dtype)
    return (onehot + probs - probs.detach()).flatten(-2)


def stratified_noise(batch: int, dim: int, samples: int, generator: torch.Generator | None, gaussian: bool
                     ) -> torch.Tensor:
    """(samples, B, dim) latent noise of one imagined step, drawn on CPU with `generator` (a seed gives the same
    rollout on any device): uniforms, or their standard normal quantiles if `gaussian`. Only row 0, the
    trajectory's own sample, takes random numbers; row j is its uniforms shifted by j/samples (mod 1). Each row is
    thus an exact prior sample, the rows are stratified (a steadier spread than independent draws), and the
    generator advances by the same amount whatever the number of samples: the trajectory does not depend on it."""
    u = torch.rand(batch, dim, generator=generator, device="cpu")  # (B, V)
    shift = torch.arange(samples, dtype=u.dtype).div_(samples).view(-1, 1, 1)
    u = (u.unsqueeze(0) + shift).remainder_(1.0)  # (K, B, V); row 0 unchanged
    if gaussian:
        u = math.sqrt(2.0) * torch.erfinv(u.clamp(1e-7, 1.0 - 1e-7).mul_(2.0).sub_(1.0))
    return u


def one_hot_heads(deter: torch.Tensor, index: torch.Tensor, decoder: nn.Module, reward_head: nn.Module,
                  termination_head: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The heads on features [deter, one-hot]: the decoder's output (K·B, …) for K one-hot latents given by their
    classes `index` (K, B, categories), and the reward and termination logits (B, 1) of the first.

    The same values as the heads on the concatenated features (up to float rounding), cheaper: the three first
    layers are one matmul on `deter` (B, deter), shared by the K samples, plus a sum of the weight columns the
    one-hots pick (`embedding_bag`) in place of a matmul with zeros. Inference only: no gradient reaches the
    probabilities this way."""
    k, b = index.shape[:2]
    d, categories = deter.shape[-1], index.shape[-1]
    decoder_rest: Callable[[torch.Tensor], torch.Tensor]
    if isinstance(decoder, ConvDecoder):
        decoder_first: nn.Module = decoder.linear
        decoder_rest = decoder.after_linear
    else:
        assert isinstance(decoder, nn.Sequential)
        decoder_first, decoder_rest = decoder[0], decoder[1:]
    assert isinstance(reward_head, nn.Sequential) and isinstance(termination_head, nn.Sequential)
    linears = [m for m in (decoder_first, reward_head[0], termination_head[0]) if isinstance(m, nn.Linear)]
    assert len(linears) == 3
    weights: list[torch.Tensor] = [m.weight for m in linears]  # (out, deter + stoch) each
    biases: list[torch.Tensor] = [m.bias for m in linears]
    weight, bias = torch.cat(weights), torch.cat(biases)  # (O, deter + stoch), O = the three layers' outputs
    classes = (weight.shape[1] - d) // categories
    from_deter = torch.addmm(bias, deter, weight[:, :d].t())  # (B, O)
    columns = index + torch.arange(categories, device=index.device) * classes  # (K, B, categories)
    from_stoch = F.embedding_bag(columns.flatten(0, 1), weight[:, d:].t().contiguous(), mode="sum")  # (K·B, O)
    hidden = from_stoch.unflatten(0, (k, b)) + from_deter  # (K, B, O)
    to_decoder, to_reward, to_term = hidden.split([w.shape[0] for w in weights], -1)
    reward_raw, term_raw = reward_head[1:](to_reward[0]), termination_head[1:](to_term[0])
    return decoder_rest(to_decoder.flatten(0, 1)), reward_raw, term_raw
