"""Physical units <-> model units, shared by every model: normalization, action features, plausibility.

Models compute in normalized units (per-channel z-scores of the store's statistics; images in
[-1, 1]) and return physical units, so callers never see normalized values (DESIGN contract 3).
"""

from __future__ import annotations

import torch
from torch import nn

from data_pipeline.schema import StoreSchema
from data_pipeline.windows.batch import Normalization


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

    def __init__(self, schema: StoreSchema, normalization: Normalization, plausible_margin: float) -> None:
        super().__init__()
        self.image_obs = schema.image_obs
        self.discrete = schema.discrete
        self.num_actions = normalization.num_actions if self.discrete else schema.action_dim
        self.plausible_margin = float(plausible_margin)
        for name, value in normalization.tensors().items():
            self.register_buffer(name, value, persistent=False)

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
        """Keep predicted observations within the recorded range, widened by `plausible_margin` of it.

        Images stay in [0, 255]. Rollouts that leave the recorded range are extrapolation; the margin
        lets a model go a little past what was seen without drifting to impossible values (contract 3).
        """
        if self.image_obs:
            return obs.clamp(0.0, 255.0)
        span = (self.obs_max - self.obs_min).clamp_min(1e-6)
        return torch.maximum(torch.minimum(obs, self.obs_max + self.plausible_margin * span),
                             self.obs_min - self.plausible_margin * span)
