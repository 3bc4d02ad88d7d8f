"""Physical units <-> model units, shared by every model: normalization, action features, plausibility.

Models compute in normalized units (per-channel z-scores of the store's statistics; images in
[-1, 1]) and return physical units, so callers never see normalized values (DESIGN contract 3).

Plausibility: a channel's declared bounds (the store's observation space `low` / `high`, which the ingest
spec's `low` / `high` become) are hard limits for imagined observations. Where a side is not declared
(infinite, or a float32-max placeholder such as CartPole's velocities), the recorded range widened by
`plausible_margin` of its span is the limit instead.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from data_pipeline.schema import StoreSchema
from data_pipeline.windows.batch import Normalization

UNDECLARED = 1e30
"""A bound at or beyond this magnitude declares nothing (Gymnasium spaces use ±inf or ±float32 max)."""


def declared_bounds(schema: StoreSchema) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel declared (low, high) of a vector observation space, NaN where a side is not declared.

    Images and spaces that are not a flat Box of `obs_dim` channels declare nothing here (images are
    kept in [0, 255] by `clamp_plausible`).
    """
    nan = torch.full((schema.obs_dim,), float("nan"))
    if schema.image_obs:
        return nan, nan.clone()
    space = schema.gym_observation_space()
    low, high = getattr(space, "low", None), getattr(space, "high", None)
    if low is None or high is None or np.shape(low) != (schema.obs_dim,):
        return nan, nan.clone()

    def side(bound: np.ndarray) -> torch.Tensor:
        b = np.asarray(bound, np.float64)
        return torch.from_numpy(np.where(np.abs(b) < UNDECLARED, b, np.nan)).float()

    return side(low), side(high)


class Units(nn.Module):
    """The store's normalization as (non-persistent) buffers, and the conversions that use it.

    The buffers follow the model across devices with `.to()`, but are not in the state dict: the model
    file carries the `Normalization` itself, so an old file still loads (contract 1, statistics live in
    the store).
    """

    obs_mean: torch.Tensor
    obs_std: torch.Tensor
    obs_min: torch.Tensor
    obs_max: torch.Tensor
    action_mean: torch.Tensor
    action_std: torch.Tensor
    reward_mean: torch.Tensor
    reward_std: torch.Tensor
    obs_low: torch.Tensor
    obs_high: torch.Tensor

    def __init__(self, schema: StoreSchema, normalization: Normalization, plausible_margin: float) -> None:
        super().__init__()
        self.image_obs = schema.image_obs
        self.discrete = schema.discrete
        self.num_actions = normalization.num_actions if self.discrete else schema.action_dim
        self.plausible_margin = float(plausible_margin)
        for name, value in normalization.tensors().items():
            self.register_buffer(name, value, persistent=False)
        if not self.image_obs:  # the hard limits of imagined observations: declared, else widened recorded range
            low, high = declared_bounds(schema)
            span = (self.obs_max - self.obs_min).clamp_min(1e-6)
            widened_low = self.obs_min - self.plausible_margin * span
            widened_high = self.obs_max + self.plausible_margin * span
            self.register_buffer("obs_low", torch.where(low.isnan(), widened_low, low), persistent=False)
            self.register_buffer("obs_high", torch.where(high.isnan(), widened_high, high), persistent=False)

    def normalize_obs(self, obs: torch.Tensor) -> torch.Tensor:
        if self.image_obs:
            return obs.float() / 127.5 - 1.0
        return (obs - self.obs_mean) / self.obs_std

    def denormalize_obs(self, z: torch.Tensor) -> torch.Tensor:
        if self.image_obs:
            return ((z + 1.0) * 127.5).clamp(0.0, 255.0)
        return z * self.obs_std + self.obs_mean

    def denormalize_obs_std(self, z_std: torch.Tensor) -> torch.Tensor:
        return z_std * (127.5 if self.image_obs else self.obs_std)

    def encode_action(self, action: torch.Tensor) -> torch.Tensor:
        """Actions in physical units (or Discrete indices) to the model's input features."""
        if self.discrete:
            return nn.functional.one_hot(action.long(), self.num_actions).float()
        return (action.float() - self.action_mean) / self.action_std

    def normalize_reward(self, reward: torch.Tensor) -> torch.Tensor:
        return (reward - self.reward_mean) / self.reward_std

    def denormalize_reward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.reward_std + self.reward_mean

    def clamp_plausible(self, obs: torch.Tensor) -> torch.Tensor:
        """Keep predicted observations within each channel's hard limits (`obs_low`, `obs_high`).

        Declared bounds are physics (a speed clipped at 8 never reaches 11). Where nothing is declared,
        rollouts that leave the recorded range are extrapolation; the margin lets a model go a little past
        what was seen without drifting to impossible values (contract 3). Images stay in [0, 255].
        """
        if self.image_obs:
            return obs.clamp(0.0, 255.0)
        return torch.maximum(torch.minimum(obs, self.obs_high.to(obs.dtype)), self.obs_low.to(obs.dtype))
