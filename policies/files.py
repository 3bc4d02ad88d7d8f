"""Policy files: a stable-baselines3 zip and, beside it, a JSON that says what saved it.

    policy.zip    the SB3 save (network weights, optimizer state, hyperparameters)
    policy.json   {"format": 1, "algorithm": "SAC", "sb3_version": "2.9.2",
                   "observation_space": {...}, "action_space": {...}}

Loading reads the JSON and loads the zip with the algorithm it names: nothing is guessed from the
zip's contents (PPO and A2C, TD3 and DDPG save look-alike zips). The spaces use the store's JSON form
(`data_pipeline.spaces`), so a policy can be checked against an env before it acts. A later step is to
move the weights to tensors + JSON (no pickle); this file is the header of that format.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from gymnasium import spaces

from data_pipeline.spaces import space_from_dict, space_to_dict
from data_pipeline.specfile import Spec, load_spec_file
from data_pipeline.store.files import atomic_write

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

Algorithm = Literal["SAC", "TD3", "DDPG", "PPO", "A2C", "DQN"]
ALGORITHMS: tuple[str, ...] = get_args(Algorithm)


class PolicyInfo(Spec):
    """The JSON beside a policy zip."""

    format: Literal[1] = 1
    """Version of this description."""
    algorithm: Algorithm
    """stable-baselines3 class that saved the zip (and loads it)."""
    sb3_version: str
    """stable-baselines3 version that saved it."""
    observation_space: dict[str, Any]
    """The observations the policy reads (`data_pipeline.spaces.space_to_dict` form)."""
    action_space: dict[str, Any]
    """The actions it returns (same form)."""


def info_path(path: str | Path) -> Path:
    """Where the JSON of policy zip `path` lives: the same name with `.json` (`policy.zip` → `policy.json`)."""
    return Path(path).with_suffix(".json")


def algorithm_of(agent: BaseAlgorithm) -> str:
    """The stable-baselines3 algorithm class an agent is (the nearest one, for a subclass of it)."""
    for cls in type(agent).__mro__:
        if cls.__module__.startswith("stable_baselines3.") and cls.__name__ in ALGORITHMS:
            return cls.__name__
    raise TypeError(f"{type(agent).__name__} is not one of stable-baselines3's {', '.join(ALGORITHMS)}; "
                    "twinworld saves policies of these algorithms only")


def save_sb3(agent: BaseAlgorithm, path: str | Path) -> Path:
    """Save an agent as `path` (a .zip) plus its JSON, each written atomically; return the zip's path.

    The zip is written first and the JSON second, so a JSON always describes a complete zip.
    """
    import stable_baselines3

    path = Path(path)
    if path.suffix != ".zip":
        raise ValueError(f"{path}: a policy file name ends in .zip (stable-baselines3 appends it otherwise)")
    info = PolicyInfo.model_validate({
        "algorithm": algorithm_of(agent), "sb3_version": stable_baselines3.__version__,
        "observation_space": space_to_dict(agent.observation_space), "action_space": space_to_dict(agent.action_space),
    })
    atomic_write(path, agent.save)
    atomic_write(info_path(path), lambda tmp: tmp.write_text(info.model_dump_json(indent=1) + "\n"))
    return path


def read_policy_info(path: str | Path, info_file: str | Path | None = None) -> PolicyInfo:
    """The JSON of policy zip `path` (or `info_file`, where an artifact store keeps them apart)."""
    info = Path(info_file) if info_file is not None else info_path(path)
    if not info.exists():
        raise FileNotFoundError(
            f"{path}: no {info.name} beside it; expected the JSON that names the stable-baselines3 algorithm "
            f"that saved the zip (keys {', '.join(PolicyInfo.model_fields)}). Policies saved by twinworld have "
            f"one; for another zip, re-save it with policies.save_sb3(SAC.load(path), path) (its algorithm "
            f"in place of SAC)")
    return load_spec_file(PolicyInfo, info)


def load_sb3(path: str | Path, device: str = "cpu", info_file: str | Path | None = None) -> BaseAlgorithm:
    """Load a policy zip with the stable-baselines3 algorithm its JSON names."""
    import stable_baselines3

    info = read_policy_info(path, info_file)
    algo = getattr(stable_baselines3, info.algorithm)
    return algo.load(str(path), device=device)


def check_action_space(path: str | Path, info: PolicyInfo, action_space: spaces.Space) -> None:
    """A policy must return actions of the env's kind and shape (Box bounds may differ: envs clip)."""
    saved = space_from_dict(info.action_space)
    boxes = isinstance(saved, spaces.Box) and isinstance(action_space, spaces.Box)
    same_box = boxes and saved.shape == action_space.shape
    if not same_box and saved != action_space:
        raise ValueError(f"policy {path}: returns actions in {saved}, but the env's action space is {action_space}; "
                         "use a policy trained for this system")
