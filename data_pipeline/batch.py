"""What the window sampler hands to models (contract 2): a batch of windows and the store's normalization.

Windows are in physical units; models normalize with `Normalization`, which they save in their
checkpoint so a loaded model needs nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch


@dataclass
class Batch:
    """Fixed-length windows `(batch, time, …)` that never cross an episode boundary.

    Row t of a window holds o_t, the action a_t taken at it and the reward r_t that followed, as in
    the store. Where a window ends on an episode's last row, that row's action and reward (NaN in
    the store) are 0 here and `is_last` is True.
    """

    obs: torch.Tensor
    """(B, T, obs_dim) float32 vector observations (obs_dim may be 0 for image-only stores)."""
    action: torch.Tensor
    """(B, T, action_dim) float32 for Box actions; (B, T) int64 for Discrete."""
    reward: torch.Tensor
    """(B, T) float32."""
    terminated: torch.Tensor
    """(B, T) bool: o_t is terminal (the episode ended by termination at this row)."""
    is_first: torch.Tensor
    """(B, T) bool: o_t is its episode's first row."""
    is_last: torch.Tensor
    """(B, T) bool: o_t is its episode's last row."""
    image: torch.Tensor | None = None
    """(B, T, H, W, C) uint8 image observations, or None."""

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(value: torch.Tensor | None) -> torch.Tensor | None:
            return None if value is None else value.to(device, non_blocking=non_blocking)

        return Batch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})

    @property
    def batch_size(self) -> int:
        return int(self.reward.shape[0])

    @property
    def length(self) -> int:
        return int(self.reward.shape[1])

    @classmethod
    def from_numpy(cls, arrays: dict[str, np.ndarray]) -> Batch:
        """Wrap numpy arrays (zero-copy where possible)."""
        return cls(**{k: (None if v is None else torch.from_numpy(np.ascontiguousarray(v))) for k, v in arrays.items()})


@dataclass
class Normalization:
    """Per-channel statistics of the training split, in physical units.

    `obs_min` / `obs_max` are the recorded range, used to keep imagined rollouts plausible.
    For Discrete actions the action statistics are empty lists and `num_actions` is set.
    """

    obs_mean: list[float]
    obs_std: list[float]
    obs_min: list[float]
    obs_max: list[float]
    action_mean: list[float]
    action_std: list[float]
    action_min: list[float]
    action_max: list[float]
    reward_mean: float
    reward_std: float
    reward_min: float
    reward_max: float
    num_actions: int = 0
    """Number of Discrete actions; 0 for Box actions."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalization:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def tensors(self, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """The statistics as float32 tensors; std floored so constant channels do not divide by zero."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "num_actions":
                continue
            t = torch.as_tensor(value, dtype=torch.float32, device=device)
            if f.name.endswith("_std"):
                t = t.clamp_min(1e-6)
            out[f.name] = t
        return out
