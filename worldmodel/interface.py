"""The WorldModel interface (DESIGN contract 3): what envs/, scenarios/, policies/ and twin/ may call.

All methods are batched torch and work in physical units: a model normalizes internally with the
`Normalization` it was trained with, so callers never see normalized values.

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

The interface is a `Protocol`: code shared by the models (units, save) lives in `worldmodel/base.py`,
which every shipped model subclasses but which callers never need to know about.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Protocol, Self, runtime_checkable

import torch

from data_pipeline.schema import StoreSchema
from data_pipeline.windows.batch import Normalization

State = dict[str, torch.Tensor]


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


@runtime_checkable
class WorldModel(Protocol):
    """A batched, generative model of a recorded system (see the module docstring for shapes).

    Declared capabilities (`markov`, `supports_member_resampling`) let envs, scenarios and the live twin
    choose a code path without probing the model.
    """

    @property
    def model_type(self) -> str:
        """The model's kind in the model file and in `worldmodel.kinds.MODEL_KINDS` (e.g. "ensemble")."""
        ...

    schema: StoreSchema
    """The spaces, channels and dt of the store the model was trained on."""
    normalization: Normalization
    """The store's statistics the model normalizes with."""
    image_obs: bool
    """Observations are images `(H, W, C)` rather than vectors."""
    discrete: bool
    """Actions are Discrete indices."""
    obs_dim: int
    """Number of vector observation channels (0 for images)."""
    action_dim: int
    """Action features: channels for Box actions, the number of actions for Discrete ones."""
    markov: bool
    """The belief after `observe` depends on the last observation alone (not on older history), so
    rows can be assimilated independently, as one batch."""
    supports_member_resampling: bool
    """`resample_members` draws a new ensemble member per trajectory (trajectory sampling, TS-inf)."""

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live; inputs go there."""
        ...

    def initial_state(self, batch: int) -> State:
        """An empty belief for `batch` systems."""
        ...

    def observe(self, state: State, obs: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor) -> State:
        """Assimilate real data `(B, T, …)` (filtering): sync the twin to the physical system."""
        ...

    def step(
        self, state: State, action: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[State, Prediction]:
        """One imagined step from `state` under `action`."""
        ...

    def imagine(
        self, state: State, actions: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[State, Prediction]:
        """Roll out `actions` `(B, H, …)` from `state`; predictions are `(B, H, …)`."""
        ...

    def resample_members(self, state: State, generator: torch.Generator | None = None) -> State:
        """Give each trajectory a freshly drawn member (where `supports_member_resampling`); else `state`."""
        ...

    def describe(self) -> dict[str, Any]:
        """What the model identified about the physical system (a hybrid's parameters with units and spread,
        its residual fraction), as JSON-ready data; empty for black-box models."""
        ...

    def save(self, path: str) -> str:
        """Write a self-describing model file (config, normalization, spaces, weights); return its path."""
        ...

    def to(self, device: torch.device | str) -> Self:
        """The model on `device` (in place, as `nn.Module.to`)."""
        ...

    def eval(self) -> Self:
        """The model in inference mode (in place, as `nn.Module.eval`)."""
        ...


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
