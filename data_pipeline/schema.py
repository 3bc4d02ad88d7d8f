"""The trajectory store's schema: what a store holds, and one episode to write into it.

The on-disk layout is documented in docs/data-format.md. In short, episodes lie back to back along
one `step` dimension; an episode of N transitions has N+1 rows; the action and reward of its last
row are NaN (or -1 for Discrete actions); an `episode` table says where each episode starts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from gymnasium import spaces

from data_pipeline.spaces import is_image_space, space_from_dict, space_to_dict

SCHEMA_VERSION = "1.0"
DISCRETE_FILL = -1  # action value on an episode's last row when actions are Discrete (RLDS convention)
COMMITTED = 1  # episode_status value of a committed episode; 0 (the fill value) is uncommitted

# Variables along `step`, and the table along `episode`.
STEP_VARS = ("obs", "image", "action", "reward", "terminated", "truncated", "is_first", "is_last", "time")
EPISODE_VARS = (
    "episode_id",
    "episode_start",
    "episode_length",
    "episode_source",
    "episode_seed",
    "episode_start_time",
    "episode_status",  # written last: the commit point
)


@dataclass
class StoreSchema:
    """What every episode of a store shares: channels, units, spaces and the nominal step."""

    obs_channels: list[str]
    """Names of the vector observation channels (sensors); empty for an image-only store."""
    obs_units: list[str]
    """Physical unit of each observation channel."""
    action_channels: list[str]
    """Names of the actuator channels; one channel named after the action for Discrete actions."""
    action_units: list[str]
    """Physical unit of each actuator channel."""
    observation_space: dict[str, Any]
    """The Gymnasium observation space, as written by `space_to_dict`."""
    action_space: dict[str, Any]
    """The Gymnasium action space, as written by `space_to_dict`."""
    dt: float
    """Nominal time between rows, in seconds."""
    image_shape: list[int] | None = None
    """(height, width, channels) of uint8 image observations, or None."""
    reward_unit: str = ""
    """Unit of the reward signal."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """Where the data came from: env id, file, spec, software versions."""

    def __post_init__(self) -> None:
        if len(self.obs_units) != len(self.obs_channels):
            raise ValueError(
                f"schema: {len(self.obs_channels)} obs_channels but {len(self.obs_units)} obs_units"
            )
        if len(self.action_units) != len(self.action_channels):
            raise ValueError(
                f"schema: {len(self.action_channels)} action_channels but {len(self.action_units)} action_units"
            )
        if not self.obs_channels and self.image_shape is None:
            raise ValueError("schema: needs obs_channels, an image_shape, or both")
        if not self.dt > 0:
            raise ValueError(f"schema: dt must be a positive number of seconds, got {self.dt!r}")
        if len(set(self.obs_channels)) != len(self.obs_channels):
            raise ValueError(f"schema: obs_channels has duplicate names: {self.obs_channels}")
        if len(set(self.action_channels)) != len(self.action_channels):
            raise ValueError(f"schema: action_channels has duplicate names: {self.action_channels}")

    @property
    def discrete(self) -> bool:
        """True when actions are Discrete (stored as int64 indices, one channel)."""
        return self.action_space.get("type") == "Discrete"

    @property
    def obs_dim(self) -> int:
        return len(self.obs_channels)

    @property
    def action_dim(self) -> int:
        return len(self.action_channels)

    @property
    def image_obs(self) -> bool:
        """True when the observation the env returns is the image."""
        return is_image_space(space_from_dict(self.observation_space))

    def gym_observation_space(self) -> spaces.Space:
        return space_from_dict(self.observation_space)

    def gym_action_space(self) -> spaces.Space:
        return space_from_dict(self.action_space)

    def to_attrs(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> StoreSchema:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in attrs.items() if k in names})

    @classmethod
    def from_spaces(
        cls,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        dt: float,
        obs_channels: list[str] | None = None,
        obs_units: list[str] | None = None,
        action_channels: list[str] | None = None,
        action_units: list[str] | None = None,
        state_dim: int | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> StoreSchema:
        """A schema for an env's spaces, naming channels `obs_0…` / `action_0…` where no names are given.

        For image observations, `state_dim` adds a vector `obs` channel group alongside the image
        (e.g. the simulator's state recorded next to its rendering).
        """
        image_shape = None
        if is_image_space(observation_space):
            image_shape = list(observation_space.shape)
            n_obs = state_dim or 0
        elif isinstance(observation_space, spaces.Box) and len(observation_space.shape) == 1:
            n_obs = observation_space.shape[0]
        else:
            raise ValueError(
                f"observation space {observation_space} is neither a flat Box nor a uint8 (H, W, C) image Box"
            )
        if isinstance(action_space, spaces.Discrete):
            n_act = 1
        elif isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
            n_act = action_space.shape[0]
        else:
            raise ValueError(f"action space {action_space} is neither a flat Box nor Discrete")
        obs_channels = obs_channels or [f"obs_{i}" for i in range(n_obs)]
        action_channels = action_channels or (["action"] if n_act == 1 else [f"action_{i}" for i in range(n_act)])
        return cls(
            obs_channels=list(obs_channels),
            obs_units=list(obs_units or [""] * len(obs_channels)),
            action_channels=list(action_channels),
            action_units=list(action_units or [""] * len(action_channels)),
            observation_space=space_to_dict(observation_space),
            action_space=space_to_dict(action_space),
            dt=float(dt),
            image_shape=image_shape,
            provenance=dict(provenance or {}),
        )


@dataclass
class Episode:
    """One episode of N transitions as N+1 rows (the final observation is kept).

    Row t holds the observation o_t, the action a_t taken at it and the reward r_t that followed.
    The last row's action and reward are NaN (Discrete: -1). `terminated` / `truncated` are True only
    on the last row, when the episode ended that way.
    """

    action: np.ndarray
    """(N+1, action_dim) float32, or (N+1, 1) int64 for Discrete actions."""
    reward: np.ndarray
    """(N+1,) float32."""
    terminated: np.ndarray
    """(N+1,) bool."""
    truncated: np.ndarray
    """(N+1,) bool."""
    obs: np.ndarray | None = None
    """(N+1, obs_dim) float32 vector observations, or None for an image-only store."""
    image: np.ndarray | None = None
    """(N+1, height, width, channels) uint8 image observations, or None."""
    time: np.ndarray | None = None
    """(N+1,) int64 nanoseconds since the Unix epoch; None to derive it from start_time and dt."""
    episode_id: str | None = None
    """A unique id; None to assign one on append."""
    source: str = ""
    """Where the episode came from (env id, file name, stream)."""
    seed: int = -1
    """The reset seed, or -1 when unknown."""
    start_time: int | None = None
    """Start time in ns since the epoch; defaults to time[0] or the append time."""

    @property
    def num_rows(self) -> int:
        return int(self.reward.shape[0])

    @property
    def num_transitions(self) -> int:
        return self.num_rows - 1
