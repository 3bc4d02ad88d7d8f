"""The WorldModel interface (DESIGN contract 3), shared by every model.

All methods are batched torch and work in physical units: a model normalizes internally with the
`Normalization` it was trained with, so envs/ and generate.py never see normalized values.

Conventions
-----------
- `State` is a dict of tensors whose first dimension is the batch, so callers can index, repeat and
  scatter states without knowing the model (`index_state`, `repeat_state`, `merge_state`).
- Observations are what the env returns: `(B, obs_dim)` float32 vectors, or `(B, H, W, C)` images
  (uint8 on input; float in [0, 255] in predictions) when the store's observation is an image.
- Actions: `(B, action_dim)` float32 for Box spaces, `(B,)` int64 for Discrete.
- `observe(state, obs, action, is_first)` takes sequences `(B, T, …)` where `action[:, t]` is the
  action taken *before* `obs[:, t]` (ignored where `is_first[:, t]`); the returned state is the belief
  after the last observation. `observe` one step at a time equals `observe` over the whole history.
- `step(state, action)` applies the action taken at the current state and predicts the next
  observation, the reward for this transition and the termination probability, with uncertainty.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import nn

from data_pipeline.batch import Batch, Normalization
from data_pipeline.schema import StoreSchema

State = dict[str, torch.Tensor]

FORMAT = "twinworld-worldmodel"
FORMAT_VERSION = 1


@dataclass
class Prediction:
    """One imagined step `(B, …)`, or a rollout `(B, H, …)` from `imagine`."""

    obs: torch.Tensor
    """Sampled next observation (physical units; images as float in [0, 255])."""
    obs_mean: torch.Tensor
    """Predictive mean of the next observation."""
    obs_std: torch.Tensor
    """Predictive standard deviation per channel (aleatoric and epistemic together)."""
    reward: torch.Tensor
    """(B,) reward of the transition."""
    terminated: torch.Tensor
    """(B,) probability that the next state is terminal."""
    uncertainty: torch.Tensor
    """(B,) epistemic uncertainty: disagreement of ensemble members or spread of samples, in units of
    the channels' standard deviation. Large values mean the model is extrapolating."""

    def detach(self) -> Prediction:
        return Prediction(**{f.name: getattr(self, f.name).detach() for f in fields(self)})

    @staticmethod
    def stack(steps: list[Prediction], dim: int = 1) -> Prediction:
        return Prediction(**{f.name: torch.stack([getattr(p, f.name) for p in steps], dim) for f in fields(Prediction)})


def index_state(state: State, index: torch.Tensor | slice) -> State:
    """The states of a subset of the batch."""
    return {k: v[index] for k, v in state.items()}


def repeat_state(state: State, repeats: int) -> State:
    """Each state repeated `repeats` times along the batch (b0, b0, …, b1, b1, …), e.g. for samples."""
    return {k: v.repeat_interleave(repeats, dim=0) for k, v in state.items()}


def merge_state(state: State, index: torch.Tensor, new: State) -> State:
    """`state` with the rows at `index` replaced by `new` (e.g. the sub-envs that were reset)."""
    out = {}
    for k, v in state.items():
        v = v.clone()
        v[index] = new[k].to(v.dtype)
        out[k] = v
    return out


def previous_actions(action: torch.Tensor, is_first: torch.Tensor) -> torch.Tensor:
    """Store-aligned actions (a_t taken at o_t) to the action before each observation (a_{t-1}).

    Zero where `is_first` and at t=0, where the previous action is unknown; `observe` ignores it there.
    """
    prev = torch.zeros_like(action)
    prev[:, 1:] = action[:, :-1]
    mask = is_first.clone()
    mask[:, 0] = True
    while mask.dim() < prev.dim():
        mask = mask.unsqueeze(-1)
    return torch.where(mask, torch.zeros_like(prev), prev)


class WorldModel(nn.Module):
    """Base of every world model: normalization, action encoding, plausibility and save/load.

    Subclasses set `model_type`, keep their typed config in `self.config`, and implement
    `initial_state`, `observe`, `step` and `loss`; `imagine` loops `step` unless overridden.
    """

    model_type: ClassVar[str] = ""
    # Declared capabilities: envs, scenarios and the live twin read these instead of probing the model.
    markov: ClassVar[bool] = False
    """The belief after `observe` depends on the last observation alone (not on older history), so
    rows can be assimilated independently, as one batch."""
    supports_member_resampling: ClassVar[bool] = False
    """`resample_members` draws a new ensemble member per trajectory (trajectory sampling, TS-inf)."""

    def __init__(self, config: Any, schema: StoreSchema, normalization: Normalization) -> None:
        super().__init__()
        self.config = config
        self.schema = schema
        self.normalization = normalization
        self.image_obs = schema.image_obs
        self.discrete = schema.discrete
        self.obs_dim = schema.obs_dim
        self.action_dim = normalization.num_actions if self.discrete else schema.action_dim
        stats = normalization.tensors()
        for name, value in stats.items():
            self.register_buffer(name, value, persistent=False)
        # Rollouts stay within the recorded range widened by this fraction of it (contract 3).
        self.plausible_margin = float(getattr(config, "plausible_margin", 0.25))

    # -------------------------------------------------------------- units
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
            return nn.functional.one_hot(action.long(), self.action_dim).float()
        return (action.float() - self.action_mean) / self.action_std

    def normalize_reward(self, reward: torch.Tensor) -> torch.Tensor:
        return (reward - self.reward_mean) / self.reward_std

    def denormalize_reward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.reward_std + self.reward_mean

    def clamp_plausible(self, obs: torch.Tensor) -> torch.Tensor:
        """Keep predicted observations within the recorded range, widened by `plausible_margin`."""
        if self.image_obs:
            return obs.clamp(0.0, 255.0)
        span = (self.obs_max - self.obs_min).clamp_min(1e-6)
        return torch.maximum(torch.minimum(obs, self.obs_max + self.plausible_margin * span),
                             self.obs_min - self.plausible_margin * span)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -------------------------------------------------------------- interface
    def initial_state(self, batch: int) -> State:
        """An empty belief for `batch` systems."""
        raise NotImplementedError

    def observe(self, state: State, obs: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor) -> State:
        """Assimilate real data `(B, T, …)` (filtering): sync the twin to the physical system."""
        raise NotImplementedError

    def step(
        self, state: State, action: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[State, Prediction]:
        """One imagined step from `state` under `action`."""
        raise NotImplementedError

    def imagine(
        self, state: State, actions: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[State, Prediction]:
        """Roll out `actions` `(B, H, …)` from `state`; predictions are `(B, H, …)`."""
        steps = []
        for t in range(actions.shape[1]):
            state, pred = self.step(state, actions[:, t], generator)
            steps.append(pred)
        return state, Prediction.stack(steps)

    def resample_members(self, state: State, generator: torch.Generator | None = None) -> State:
        """Give each trajectory a freshly drawn member (where `supports_member_resampling`); else `state`."""
        return state

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss of a batch of windows and the metrics to log."""
        raise NotImplementedError

    def end_validation(self, metrics: dict[str, torch.Tensor]) -> None:
        """Called with the validation metrics averaged over an epoch (e.g. to pick ensemble elites)."""

    # -------------------------------------------------------------- files
    def checkpoint_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the model, in types `torch.load(weights_only=True)` accepts."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_type": self.model_type,
            "config": json.dumps(_dataclass_dict(self.config)),
            "schema": json.dumps(self.schema.to_attrs(), default=str),
            "normalization": json.dumps(self.normalization.to_dict()),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }

    def save(self, path: str) -> str:
        """Write a self-describing model file (config, normalization, spaces, weights)."""
        torch.save(self.checkpoint_dict(), path)
        return str(path)

    @classmethod
    def load(cls, source: str, map_location: str | torch.device = "cpu") -> WorldModel:
        """Rebuild a model from a file or an MLflow URI (see `worldmodel.load`)."""
        from worldmodel.io import load

        return load(source, map_location)


def _dataclass_dict(config: Any) -> dict[str, Any]:
    from dataclasses import asdict, is_dataclass

    if is_dataclass(config):
        return asdict(config)
    raise TypeError(f"model config must be a dataclass, got {type(config).__name__}")
