"""What a Gymnasium env looks like as a store: channel names and units of known simulators, the nominal
step, rendered observations, structured (Dict / Tuple) observations flattened into named channels, and
the store schema built from them (used by `record` and the Minari import)."""

from __future__ import annotations

from typing import Any, TypedDict

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image

from data_pipeline.errors import UserError
from data_pipeline.schema import StoreSchema
from data_pipeline.spaces import is_image_space

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


def _join(prefix: str, part: str) -> str:
    return f"{prefix}.{part}" if prefix else part


def flat_channel_names(space: spaces.Space, prefix: str = "") -> list[str]:
    """The names of `spaces.flatten(space, x)`'s entries, in its order: Dict keys and Tuple / array indices
    joined by dots (`position.0`, `sensors.2.temp`), a Discrete's one-hot entry by its value
    (`mode.3`), a MultiDiscrete's by index and value (`switches.1.0`). Raises UserError for a space
    that is not a vector of numbers (an image, text, a graph or a sequence)."""
    if isinstance(space, spaces.Dict):
        return [n for key, sub in space.spaces.items() for n in flat_channel_names(sub, _join(prefix, str(key)))]
    if isinstance(space, spaces.Tuple):
        return [n for i, sub in enumerate(space.spaces) for n in flat_channel_names(sub, _join(prefix, str(i)))]
    if is_image_space(space):
        raise UserError(f"observation sub-space '{prefix or '(top)'}' is an image {space}; expected numbers only "
                        "in a Dict / Tuple observation (record a flat image Box with --image-size instead)")
    if isinstance(space, spaces.Box | spaces.MultiBinary):
        shape = space.shape if space.shape else ()
        return [_join(prefix, ".".join(map(str, idx))) if idx else prefix or "0" for idx in np.ndindex(*shape)]
    if isinstance(space, spaces.Discrete):
        return [_join(prefix, str(int(space.start) + i)) for i in range(int(space.n))]
    if isinstance(space, spaces.MultiDiscrete):
        nvec, start = space.nvec.reshape(-1), space.start.reshape(-1)
        return [_join(prefix, f"{i}.{int(start[i]) + v}") for i in range(nvec.size) for v in range(int(nvec[i]))]
    raise UserError(f"observation sub-space '{prefix or '(top)'}' is {space}; expected Box, Discrete, MultiBinary, "
                    "MultiDiscrete, or a Dict / Tuple of them")


def is_structured(space: spaces.Space) -> bool:
    """A Dict or Tuple space: recorded flattened."""
    return isinstance(space, spaces.Dict | spaces.Tuple)


def _flattened(env: gym.Env) -> gym.Env:
    """`env` with a Dict / Tuple observation flattened (gymnasium's FlattenObservation), names checked first."""
    if not is_structured(env.observation_space):
        return env
    flat_channel_names(env.observation_space)  # refuses image and other non-numeric sub-spaces
    return gym.wrappers.FlattenObservation(env)


FMU_PREFIX = "fmu:"
"""`--env fmu:PATH.fmu`: the FMU at PATH as `FMU-v0` (envs/fmu.py; `config=` the FMU config)."""


def make_env(env_id: str, image_size: int | None = None, **kwargs: Any) -> gym.Env:
    """`gym.make(env_id, **kwargs)`, a Dict / Tuple observation flattened into one vector; with `image_size`,
    its rendering (size, size, 3) is the observation (and the flattened vector its state). `fmu:PATH` makes
    `FMU-v0` (imported from envs at make time, as gymnasium's `module:EnvId` form does) with `fmu=PATH`."""
    if env_id.startswith(FMU_PREFIX):
        kwargs = {"fmu": env_id[len(FMU_PREFIX):], **kwargs}
        env_id = "envs:FMU-v0"
    if image_size:
        return RenderedObservation(_flattened(gym.make(env_id, render_mode="rgb_array", **kwargs)), image_size)
    return _flattened(gym.make(env_id, **kwargs))


def structured_space(env: gym.Env) -> spaces.Space | None:
    """The Dict / Tuple observation space that `make_env` flattened, or None."""
    inner: Any = env.env if isinstance(env, RenderedObservation) else env
    if isinstance(inner, gym.wrappers.FlattenObservation):
        return inner.env.observation_space
    return None


def read_names(text: str | None, what: str) -> list[str] | None:
    """`--obs-names` / `--action-names`: a comma list (`theta,omega`) or a YAML file holding a list of names."""
    if not text:
        return None
    if text.endswith((".yaml", ".yml")):
        from data_pipeline.specfile import read_yaml  # duplicate-key refusal, errors naming the file

        data = read_yaml(text)
        if not (isinstance(data, list) and data and all(isinstance(n, str) and n for n in data)):
            raise UserError(f"{text}: holds {type(data).__name__}; expected a YAML list of {what} names")
        return list(data)
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise UserError(f"{what} names {text!r} hold an empty name; expected a comma list like 'a,b,c'")
    return names


def _named(names: list[str] | None, count: int, what: str, env_id: str) -> list[str] | None:
    if names is not None and len(names) != count:
        raise UserError(f"--{what}-names: {len(names)} names ({', '.join(names)}); expected {count}, one per "
                        f"{what} channel of {env_id}")
    if names is not None and len(set(names)) != len(names):
        raise UserError(f"--{what}-names: a name is given twice ({', '.join(names)}); expected distinct names")
    return names


def schema_for_env(env: gym.Env, env_id: str, image_size: int | None = None, obs_names: list[str] | None = None,
                   action_names: list[str] | None = None) -> StoreSchema:
    """The store schema of an env: its spaces and dt; channel names from `obs_names` / `action_names`, else
    a flattened Dict / Tuple's key paths, else a known simulator's names and units, else obs_0…."""
    state_space = env.state_space if isinstance(env, RenderedObservation) else env.observation_space
    n_obs = state_space.shape[0] if isinstance(state_space, spaces.Box) and len(state_space.shape) == 1 else 0
    n_act = env.action_space.shape[0] if isinstance(env.action_space, spaces.Box) else 1
    known = known_channels(env_id.split("-")[0], n_obs, n_act)
    provenance: dict[str, Any] = {"source": "record", "env_id": env_id, "image_size": image_size,
                                  "gymnasium": gym.__version__}
    declared = getattr(env.unwrapped, "store_channels", None)  # an env that names its channels (FMU-v0)
    if declared:
        known = ChannelNames(**declared)
        provenance.update(getattr(env.unwrapped, "store_provenance", {}))
    structured = structured_space(env)
    if structured is not None:  # a reader maps the channels back with spaces.unflatten(space, row)
        flat = flat_channel_names(structured)
        known = ChannelNames(obs_channels=flat)
        provenance["flattened_observation"] = {"space": str(structured), "channels": flat,
                                               "by": "gymnasium.spaces.flatten"}
    if (names := _named(obs_names, n_obs, "obs", env_id)) is not None:
        known = ChannelNames(obs_channels=names, action_channels=known.get("action_channels", []),
                             action_units=known.get("action_units", []))
    if (names := _named(action_names, n_act, "action", env_id)) is not None:
        known = ChannelNames(obs_channels=known.get("obs_channels", []), obs_units=known.get("obs_units", []),
                             action_channels=names)
    return StoreSchema.from_spaces(
        env.observation_space,
        env.action_space,
        env_dt(env),
        state_dim=n_obs if image_size else None,
        provenance=provenance,
        **known,
    )
