"""What the shipped models share beyond the interface: their store, their units and their file.

`ModelBase` is the one base class of ensemble, RSSM and diffusion. It is not the interface (that is
the `WorldModel` Protocol in worldmodel/interface.py): it holds the store's schema and normalization,
a `Units` component, the default `imagine` loop, the writer of the model file, which
worldmodel/io.py reads back, and the one calibration mechanism every kind uses.

Calibration (fitted by worldmodel/calibration.py): `calibration` is a buffer `(L, obs_dim)` of scales in
the state dict, so it travels in the model file; `(0, obs_dim)` means uncalibrated (an old file without it
loads as that). A state carries `horizon`, the imagined steps since the last real observation. At each
step a kind forms a *center* (its predictive mean given the state: the elites' mean, the mean of the
spread samples) and a *sample*; `calibrate` scales the sample's deviation from the center by
`scale[horizon]`. A scale below 1 narrows the step's noise and the trajectory continues from the narrowed
sample (process noise: rollouts stay coherent and a band too wide from member disagreement narrows at
every later step). A scale above 1 widens the reported sample only, as observation noise that does not
feed back: widening the noise that a rollout carries forward compounds over the horizon and drives the
samples apart (their mean with them), where the band only needed to be wider. Past the last fitted horizon
the last scale holds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, is_dataclass
from typing import Any, ClassVar, Generic, TypeVar

import torch
from torch import nn

from data_pipeline.schema import StoreSchema
from data_pipeline.windows.batch import Batch, Normalization
from worldmodel.interface import Prediction, State
from worldmodel.units import Units

FORMAT = "twinworld-worldmodel"
FORMAT_VERSION = 1

ConfigT = TypeVar("ConfigT")


class ModelBase(nn.Module, Generic[ConfigT]):
    """Base of the shipped world models; subclasses set `model_type` and implement `initial_state`,
    `observe`, `step` and `loss` (and `imagine` where a faster one exists)."""

    model_type: ClassVar[str] = ""
    markov: bool = False
    """See `WorldModel.markov`; a class may set it per instance (diffusion with history 1)."""
    supports_member_resampling: bool = False
    """See `WorldModel.supports_member_resampling`."""

    calibration: torch.Tensor

    def __init__(self, config: ConfigT, schema: StoreSchema, normalization: Normalization) -> None:
        super().__init__()
        self.config = config
        self.schema = schema
        self.normalization = normalization
        self.image_obs = schema.image_obs
        self.discrete = schema.discrete
        self.obs_dim = schema.obs_dim
        self.action_dim = normalization.num_actions if self.discrete else schema.action_dim
        self.units = Units(schema, normalization, getattr(config, "plausible_margin", 0.25))
        self.register_buffer("calibration", torch.ones(0, self.obs_dim))

    # -------------------------------------------------------------- calibration
    @property
    def calibrated(self) -> bool:
        return self.calibration.shape[0] > 0

    def set_calibration(self, scale: torch.Tensor) -> None:
        """Store per-horizon, per-channel scales `(L, obs_dim)` (row h-1: the h-th imagined step); `(0, D)`
        removes the calibration."""
        if scale.dim() != 2 or scale.shape[1] != self.obs_dim:
            raise ValueError(f"calibration scales of shape {tuple(scale.shape)}; expected (L, {self.obs_dim})")
        self.calibration = scale.detach().to(device=self.calibration.device, dtype=torch.float32).clone()

    def fresh_horizon(self, batch: int, device: torch.device) -> torch.Tensor:
        """`state["horizon"]` of a state that has just seen real data: no imagined step yet."""
        return torch.zeros(batch, dtype=torch.long, device=device)

    def calibration_scale(self, state: State) -> torch.Tensor:
        """(B, obs_dim) scale of each trajectory's next imagined step (ones when uncalibrated)."""
        horizon = state["horizon"]
        if not self.calibrated:
            return torch.ones(horizon.shape[0], self.obs_dim, device=horizon.device)
        return self.calibration[horizon.clamp(0, self.calibration.shape[0] - 1)]

    def calibrate(self, state: State, center_n: torch.Tensor, sample_n: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """The calibrated sample `(B, D)` (normalized units) the trajectory carries forward, `center +
        min(scale, 1) * (sample - center)`, and the one it reports, `center + scale * (sample - center)`."""
        if not self.calibrated:
            return sample_n, sample_n
        scale = self.calibration_scale(state).to(sample_n.dtype)
        deviation = sample_n - center_n
        return center_n + scale.clamp_max(1.0) * deviation, center_n + scale * deviation

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """A file without `calibration` (written before it existed) loads uncalibrated; one with it may
        have any number of horizons, so the buffer takes the file's shape first."""
        key = prefix + "calibration"
        if key not in state_dict:
            state_dict[key] = torch.ones(0, self.obs_dim)
        scale = state_dict[key]
        # The file is not trusted: scales that are not (L, obs_dim), not finite or negative would fail or turn
        # every imagined sample into NaN later, far from the file that caused it.
        if not (isinstance(scale, torch.Tensor) and scale.dim() == 2 and scale.shape[1] == self.obs_dim
                and scale.is_floating_point() and bool(torch.isfinite(scale).all()) and bool((scale >= 0).all())):
            found = (f"shape {tuple(scale.shape)}, {scale.dtype}" if isinstance(scale, torch.Tensor)
                     else type(scale).__name__)
            raise ValueError(f"state_dict[{key!r}] ({found}): expected finite scales >= 0 of shape (L, {self.obs_dim})")
        if scale.shape != self.calibration.shape:
            self.calibration = torch.empty_like(scale, dtype=torch.float32, device=self.calibration.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def obs_mean(self) -> torch.Tensor:
        """The store's per-channel observation mean (on the model's device)."""
        return self.units.obs_mean

    @property
    def obs_std(self) -> torch.Tensor:
        """The store's per-channel observation standard deviation (on the model's device)."""
        return self.units.obs_std

    # -------------------------------------------------------------- interface defaults
    def imagine(
        self, state: State, actions: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[State, Prediction]:
        """Roll out `actions` `(B, H, …)` from `state` one `step` at a time; predictions are `(B, H, …)`."""
        steps = []
        for t in range(actions.shape[1]):
            state, pred = self.step(state, actions[:, t], generator)
            steps.append(pred)
        return state, Prediction.stack(steps)

    def initial_state(self, batch: int) -> State:
        raise NotImplementedError(f"{type(self).__name__}.initial_state")

    def observe(self, state: State, obs: torch.Tensor, action: torch.Tensor, is_first: torch.Tensor) -> State:
        raise NotImplementedError(f"{type(self).__name__}.observe")

    def step(
        self, state: State, action: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[State, Prediction]:
        raise NotImplementedError(f"{type(self).__name__}.step")

    def resample_members(self, state: State, generator: torch.Generator | None = None) -> State:
        """No members to draw: the state unchanged (see `supports_member_resampling`)."""
        return state

    def describe(self) -> dict[str, Any]:
        """Nothing physical identified: a black-box model (the hybrid model reports its parameters)."""
        return {}

    # -------------------------------------------------------------- training hooks
    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Training loss of a batch of windows and the metrics to log."""
        raise NotImplementedError(f"{type(self).__name__}.loss")

    def end_validation(self, metrics: dict[str, torch.Tensor]) -> None:
        """Called with the validation metrics averaged over an epoch (e.g. to pick ensemble elites)."""

    # -------------------------------------------------------------- the model file
    def checkpoint_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild the model, in types `torch.load(weights_only=True)` accepts."""
        if not is_dataclass(self.config) or isinstance(self.config, type):
            raise TypeError(f"model config must be a dataclass instance, got {type(self.config).__name__}")
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_type": self.model_type,
            "config": json.dumps(asdict(self.config)),
            "schema": json.dumps(self.schema.to_attrs(), default=str),
            "normalization": json.dumps(self.normalization.to_dict()),
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict().items()},
        }

    def save(self, path: str) -> str:
        """Write a self-describing model file (config, normalization, spaces, weights); return its path."""
        torch.save(self.checkpoint_dict(), path)
        return str(path)
