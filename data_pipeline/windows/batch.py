"""What the window samplers hand to models (contract 2): a batch of windows and the store's normalization.

Windows are in physical units; models normalize with `Normalization`, which they save in their
checkpoint so a loaded model needs nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:  # models import Batch; they need not load the store's dependencies for it
    from data_pipeline.store import TrajectoryStore


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
        def move(value: torch.Tensor) -> torch.Tensor:
            return value.to(device, non_blocking=non_blocking)

        return Batch(obs=move(self.obs), action=move(self.action), reward=move(self.reward),
                     terminated=move(self.terminated), is_first=move(self.is_first), is_last=move(self.is_last),
                     image=None if self.image is None else move(self.image))

    @property
    def batch_size(self) -> int:
        return int(self.reward.shape[0])

    @property
    def length(self) -> int:
        return int(self.reward.shape[1])

    @classmethod
    def from_numpy(cls, arrays: Mapping[str, np.ndarray | None]) -> Batch:
        """Wrap numpy arrays, one per field (`image` may be missing or None), zero-copy where possible."""
        names = {f.name for f in fields(cls)}
        if unknown := sorted(set(arrays) - names):
            raise TypeError(f"Batch.from_numpy: unknown fields {unknown}; expected some of {sorted(names)}")

        def wrap(name: str) -> torch.Tensor:
            value = arrays[name]
            if value is None:
                raise TypeError(f"Batch.from_numpy: field '{name}' is None; only 'image' may be")
            return torch.from_numpy(np.ascontiguousarray(value))

        image = arrays.get("image")
        return cls(obs=wrap("obs"), action=wrap("action"), reward=wrap("reward"), terminated=wrap("terminated"),
                   is_first=wrap("is_first"), is_last=wrap("is_last"),
                   image=None if image is None else torch.from_numpy(np.ascontiguousarray(image)))


def to_batch(arrays: dict[str, np.ndarray], store: TrajectoryStore) -> Batch:
    """Physical-unit Batch from a window's store rows: last-row action and reward (NaN / the Discrete fill)
    set to 0. The store allows the fill on an episode's last row only (`validate`), so nothing else is
    non-finite. Modifies `arrays` in place."""
    schema = store.schema
    is_last = arrays["is_last"]
    action = arrays["action"]
    if schema.discrete:
        action = action[..., 0].astype(np.int64)  # (B, T, 1) -> (B, T)
    action[is_last] = 0
    reward = arrays["reward"]
    reward[is_last] = 0.0
    b, t = reward.shape
    return Batch.from_numpy({
        "obs": arrays["obs"] if "obs" in arrays else np.zeros((b, t, 0), np.float32),
        "action": action,
        "reward": reward,
        "terminated": arrays["terminated"],
        "is_first": arrays["is_first"],
        "is_last": is_last,
        "image": arrays.get("image"),
    })


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
