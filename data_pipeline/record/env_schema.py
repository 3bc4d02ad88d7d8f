"""What a Gymnasium env looks like as a store: channel names and units of known simulators, the nominal
step, rendered observations, and the store schema built from them (used by `record` and the Minari
import)."""

from __future__ import annotations

from typing import Any, TypedDict

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image

from data_pipeline.schema import StoreSchema

_CHEETAH_JOINTS = ["bthigh", "bshin", "bfoot", "fthigh", "fshin", "ffoot"]



class ChannelNames(TypedDict, total=False):
    """Channel names and units, as `StoreSchema.from_spaces` takes them (empty: generic names)."""

    obs_channels: list[str]
    obs_units: list[str]
    action_channels: list[str]
    action_units: list[str]


# Channel names and units of well-known simulators; others get obs_0…, action_0….
KNOWN_CHANNELS: dict[str, ChannelNames] = {
    "Pendulum": {
        "obs_channels": ["cos_theta", "sin_theta", "theta_dot"],
        "obs_units": ["1", "1", "rad/s"],
        "action_channels": ["torque"],
        "action_units": ["N*m"],
    },
    "CartPole": {
        "obs_channels": ["cart_position", "cart_velocity", "pole_angle", "pole_angular_velocity"],
        "obs_units": ["m", "m/s", "rad", "rad/s"],
        "action_channels": ["push"],
        "action_units": ["0=left,1=right"],
    },
    "MountainCarContinuous": {
        "obs_channels": ["position", "velocity"],
        "obs_units": ["m", "m/s"],
        "action_channels": ["force"],
        "action_units": ["1"],
    },
    "Acrobot": {
        "obs_channels": ["cos_theta1", "sin_theta1", "cos_theta2", "sin_theta2", "theta1_dot", "theta2_dot"],
        "obs_units": ["1", "1", "1", "1", "rad/s", "rad/s"],
        "action_channels": ["torque"],
        "action_units": ["-1,0,+1 N*m"],
    },
    # Gymnasium's HalfCheetah-v5 table (default: the x position is left out of the observation).
    "HalfCheetah": {
        "obs_channels": ["rootz", "rooty", *[f"{j}_angle" for j in _CHEETAH_JOINTS], "rootx_vel", "rootz_vel",
                         "rooty_angvel", *[f"{j}_angvel" for j in _CHEETAH_JOINTS]],
        "obs_units": ["m", "rad", *["rad"] * 6, "m/s", "m/s", "rad/s", *["rad/s"] * 6],
        "action_channels": [f"{j}_torque" for j in _CHEETAH_JOINTS],
        "action_units": ["N*m"] * 6,
    },
}


class RenderedObservation(gym.ObservationWrapper):
    """Replace the observation with the env's rendering resized to (size, size, 3) uint8.

    The simulator's own vector observation stays available as `info["state"]`, so a store
    can keep both the image and the state it shows.
    """

    def __init__(self, env: gym.Env, size: int) -> None:
        super().__init__(env)
        self.size = size
        self.state_space = env.observation_space
        self.observation_space = spaces.Box(0, 255, (size, size, 3), np.uint8)
        self._state: np.ndarray | None = None

    def observation(self, observation: Any) -> np.ndarray:
        self._state = np.asarray(observation, np.float32)
        frame = self.env.render()
        image = Image.fromarray(np.asarray(frame)).resize((self.size, self.size), Image.Resampling.BILINEAR)
        return np.asarray(image, np.uint8)

    def step(self, action: Any) -> tuple:
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated, truncated, {**info, "state": self._state}

    def reset(self, **kwargs: Any) -> tuple:
        obs, info = super().reset(**kwargs)
        return obs, {**info, "state": self._state}


def known_channels(env_name: str, obs_dim: int | None, action_dim: int | None = None) -> ChannelNames:
    """The channel names of a well-known simulator (`env_name` without its version), or none (generic names)
    for other envs and for a variant whose obs dim (and action dim, when given) differs, e.g. one made
    with other constructor arguments."""
    known = KNOWN_CHANNELS.get(env_name, ChannelNames())
    if known and (len(known["obs_channels"]) != obs_dim
                  or (action_dim is not None and len(known["action_channels"]) != action_dim)):
        return ChannelNames()
    return known


def env_dt(env: gym.Env) -> float:
    """The nominal step of a simulator, in seconds."""
    base = env.unwrapped
    for attr in ("dt", "tau"):
        value = getattr(base, attr, None)
        if isinstance(value, int | float) and value > 0:
            return float(value)
    fps = env.metadata.get("render_fps")
    return 1.0 / fps if fps else 1.0


def make_env(env_id: str, image_size: int | None = None, **kwargs: Any) -> gym.Env:
    """`gym.make(env_id, **kwargs)`; with `image_size`, its rendering (size, size, 3) is the observation."""
    if image_size:
        return RenderedObservation(gym.make(env_id, render_mode="rgb_array", **kwargs), image_size)
    return gym.make(env_id, **kwargs)


def schema_for_env(env: gym.Env, env_id: str, image_size: int | None = None) -> StoreSchema:
    """The store schema of an env: its spaces and dt, channel names and units where known."""
    state_space = env.state_space if isinstance(env, RenderedObservation) else env.observation_space
    n_obs = state_space.shape[0] if isinstance(state_space, spaces.Box) and len(state_space.shape) == 1 else 0
    n_act = env.action_space.shape[0] if isinstance(env.action_space, spaces.Box) else 1
    known = known_channels(env_id.split("-")[0], n_obs, n_act)
    return StoreSchema.from_spaces(
        env.observation_space,
        env.action_space,
        env_dt(env),
        state_dim=n_obs if image_size else None,
        provenance={"source": "record", "env_id": env_id, "image_size": image_size,
                    "gymnasium": gym.__version__},
        **known,
    )
