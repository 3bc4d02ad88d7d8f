"""Networks of the RSSM (worldmodel/rssm.py): MLPs, DreamerV3's GRU, the image encoder and decoder.

Plain `nn.Module`s with shapes in their docstrings; the RSSM wires them into a state-space model.
"""

from __future__ import annotations

import math

import torch
from torch import nn


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
