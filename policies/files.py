"""Policy files: weights as tensors and a JSON that rebuilds the agent; nothing in them runs code.

    policy.json          {"format": 2, "algorithm": "SAC", "sb3_version": "2.9.2", "policy": "MlpPolicy",
                          "hyperparameters": {...}, "observation_space": {...}, "action_space": {...}}
    policy.safetensors   the policy network's state dict (safetensors: tensors only, no pickle)
    policy.zip           stable-baselines3's own save, for use with SB3 alone; twinworld never reads it
                         unless the user passes --trust-pickle

A policy is named by any of its files (`policy.zip` by convention). Loading reads the JSON, builds the
agent with SB3's own constructor (`algorithm(policy, env, **hyperparameters)`, see
`policies.hyperparameters`) and loads the weights: nothing is unpickled and nothing is guessed from a
zip (PPO and A2C, TD3 and DDPG save look-alike zips). A stable-baselines3 zip unpickles cloudpickled
objects, which can run any code, so a zip without the safe files is refused unless the caller passes
`trust_pickle=True` (the `--trust-pickle` flag of record and `train.py policy`, and of
`python -m policies.convert`, which writes the safe files once). The spaces use the store's JSON form
(`data_pipeline.spaces`), so a policy can be checked against an env before it acts.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from gymnasium import spaces
from pydantic import Field

from data_pipeline.errors import UserError
from data_pipeline.spaces import space_from_dict, space_to_dict
from data_pipeline.specfile import Spec, load_spec_file
from data_pipeline.store.files import atomic_write
from policies.hyperparameters import PolicyFormatError, from_plain, hyperparameters_of

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.type_aliases import GymEnv

Algorithm = Literal["SAC", "TD3", "DDPG", "PPO", "A2C", "DQN"]
ALGORITHMS: tuple[str, ...] = get_args(Algorithm)
FORMAT: Literal[2] = 2
"""Format 2 has the safetensors weights; format 1 (before) described a zip only."""
SUFFIXES = (".zip", ".json", ".safetensors")
"""The files of one policy; any of them names it."""


class UnsafePolicyError(UserError):
    """A policy exists only as a stable-baselines3 zip, which cannot be loaded without unpickling it."""


class PolicyInfo(Spec):
    """The JSON of a policy: what rebuilds the agent around its weights."""

    format: Literal[1, 2] = FORMAT
    """Version of this description (1: a zip only, written before the safetensors weights)."""
    algorithm: Algorithm
    """stable-baselines3 class of the agent."""
    sb3_version: str
    """stable-baselines3 version that saved it."""
    policy: str = "MlpPolicy"
    """The SB3 policy alias the agent was built with (MlpPolicy, CnnPolicy, MultiInputPolicy)."""
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    """Constructor keyword arguments of the algorithm, as JSON (`policies.hyperparameters`)."""
    observation_space: dict[str, Any]
    """The observations the policy reads (`data_pipeline.spaces.space_to_dict` form)."""
    action_space: dict[str, Any]
    """The actions it returns (same form)."""


def info_path(path: str | Path) -> Path:
    """The JSON of policy `path`: the same name with `.json` (`policy.zip` → `policy.json`)."""
    return Path(path).with_suffix(".json")


def weights_path(path: str | Path) -> Path:
    """The weights of policy `path`: the same name with `.safetensors`."""
    return Path(path).with_suffix(".safetensors")


def is_policy_file(spec: str) -> bool:
    """Whether a command-line policy names a policy file (rather than `random` or `module:function`)."""
    return spec.endswith(SUFFIXES)


def algorithm_of(agent: BaseAlgorithm) -> str:
    """The stable-baselines3 algorithm class an agent is (the nearest one, for a subclass of it)."""
    for cls in type(agent).__mro__:
        if cls.__module__.startswith("stable_baselines3.") and cls.__name__ in ALGORITHMS:
            return cls.__name__
    raise TypeError(f"{type(agent).__name__} is not one of stable-baselines3's {', '.join(ALGORITHMS)}; "
                    "twinworld saves policies of these algorithms only")


def policy_alias(agent: BaseAlgorithm) -> str:
    """The name SB3 builds `agent`'s policy class from (`MlpPolicy`, …): a custom class cannot be rebuilt."""
    for alias, cls in agent.policy_aliases.items():
        if type(agent.policy) is cls:
            return alias
    raise PolicyFormatError(f"policy class {type(agent.policy).__name__} is not one of {algorithm_of(agent)}'s "
                            f"{', '.join(agent.policy_aliases)}; twinworld rebuilds policies by these names only")


def save_sb3(agent: BaseAlgorithm, path: str | Path) -> Path:
    """Save an agent as `path` (a .zip) with its `.safetensors` weights and its JSON; return the zip's path.

    Each file is written atomically, the JSON last, so a JSON always describes complete weights.
    """
    import stable_baselines3
    from safetensors.torch import save_model

    path = Path(path)
    if path.suffix != ".zip":
        raise ValueError(f"{path}: a policy file name ends in .zip (stable-baselines3 appends it otherwise)")
    info = PolicyInfo.model_validate({
        "algorithm": algorithm_of(agent), "sb3_version": stable_baselines3.__version__,
        "policy": policy_alias(agent), "hyperparameters": hyperparameters_of(agent),
        "observation_space": space_to_dict(agent.observation_space), "action_space": space_to_dict(agent.action_space),
    })
    atomic_write(weights_path(path), lambda tmp: save_model(agent.policy, str(tmp)))
    atomic_write(path, agent.save)
    atomic_write(info_path(path), lambda tmp: tmp.write_text(info.model_dump_json(indent=1) + "\n"))
    return path


def read_policy_info(path: str | Path, info_file: str | Path | None = None) -> PolicyInfo:
    """The JSON of policy `path` (or `info_file`, where an artifact store keeps them apart)."""
    info = Path(info_file) if info_file is not None else info_path(path)
    if not info.exists():
        raise FileNotFoundError(
            f"{path}: no {info.name} beside it; expected the JSON of a twinworld policy, which names the "
            f"stable-baselines3 algorithm, its hyperparameters and spaces (keys {', '.join(PolicyInfo.model_fields)}), "
            f"with the weights in {weights_path(info).name}. For a zip saved elsewhere, if you trust whoever made it "
            f"(loading a zip runs code it contains): python -m policies.convert {path} --algorithm SAC --trust-pickle "
            f"(its algorithm in place of SAC)")
    return load_spec_file(PolicyInfo, info)


def safe_files(path: str | Path, info_file: str | Path | None = None,
               weights_file: str | Path | None = None) -> tuple[PolicyInfo, Path | None]:
    """The JSON of policy `path` and its weights file; None for weights where the policy is a zip only."""
    info = read_policy_info(path, info_file)
    weights = Path(weights_file) if weights_file is not None else weights_path(path)
    return info, weights if info.format >= 2 and weights.exists() else None


def refusal(path: str | Path, weights: Path) -> str:
    """Why a zip-only policy is not loaded, and the two ways on."""
    return (f"policy {path}: no {weights.name} beside it, only a stable-baselines3 zip; loading a zip unpickles "
            f"it, which runs any code it contains, so twinworld does not. If you trust whoever made it, pass "
            f"--trust-pickle, or convert it once: python -m policies.convert {Path(path).with_suffix('.zip')} "
            f"--trust-pickle (writes {weights.name} and the JSON; docs/policy.md)")


def load_sb3(path: str | Path, device: str = "cpu", info_file: str | Path | None = None,
             weights_file: str | Path | None = None, env: GymEnv | None = None,
             trust_pickle: bool = False) -> BaseAlgorithm:
    """Rebuild the agent of policy `path` from its JSON and weights (on `env` if given, e.g. to resume training).

    A policy without weights (a zip saved by SB3 or by twinworld before format 2) is refused with
    `UnsafePolicyError`, unless `trust_pickle`: then its zip is loaded with stable-baselines3, which runs
    whatever code the zip contains.
    """
    info, weights = safe_files(path, info_file, weights_file)
    if weights is not None:
        return rebuild(info, weights, env=env, device=device, source=info_file or info_path(path))
    if not trust_pickle:
        raise UnsafePolicyError(refusal(path, weights_path(weights_file or path)))
    import stable_baselines3

    algo = getattr(stable_baselines3, info.algorithm)
    return algo.load(str(Path(path).with_suffix(".zip")), env=env, device=device)


def rebuild(info: PolicyInfo, weights: Path, env: GymEnv | None = None, device: str = "cpu",
            source: str | Path = "<policy>") -> BaseAlgorithm:
    """The agent `info` describes, built by SB3's constructor (as SB3's own `load` does, without its
    unpickling), with the policy network's weights read from `weights`."""
    import stable_baselines3
    from safetensors import SafetensorError
    from safetensors.torch import load_model
    from stable_baselines3.common.utils import check_for_correct_spaces

    algo = getattr(stable_baselines3, info.algorithm)
    if info.policy not in algo.policy_aliases:
        raise PolicyFormatError(f"{source}: key 'policy' is {info.policy!r}; expected one of "
                                f"{', '.join(algo.policy_aliases)}")
    obs_space, action_space = space_from_dict(info.observation_space), space_from_dict(info.action_space)
    kwargs = from_plain(info.hyperparameters, str(source))
    try:  # SB3 checks its arguments with TypeError (unknown keyword), ValueError and assert
        agent = algo(policy=info.policy, env=env, device=device, _init_setup_model=False, **kwargs)
        if env is None:
            agent.observation_space, agent.action_space, agent.n_envs = obs_space, action_space, 1
        else:
            check_for_correct_spaces(env, obs_space, action_space)
        agent._setup_model()
    except (TypeError, ValueError, AssertionError) as err:
        raise PolicyFormatError(f"{source}: key 'hyperparameters' does not build a {info.algorithm} agent"
                                f"{' on this env' if env is not None else ''}: {err}") from err
    try:
        load_model(agent.policy, str(weights), strict=True, device=device)
    except (RuntimeError, SafetensorError) as err:
        raise PolicyFormatError(f"{weights}: does not hold the weights of the {info.algorithm} policy {source} "
                                f"describes: {' '.join(str(err).split())[:300]}") from err
    return agent


def check_action_space(path: str | Path, info: PolicyInfo, action_space: spaces.Space) -> None:
    """A policy must return actions of the env's kind and shape (Box bounds may differ: envs clip)."""
    saved = space_from_dict(info.action_space)
    boxes = isinstance(saved, spaces.Box) and isinstance(action_space, spaces.Box)
    same_box = boxes and saved.shape == action_space.shape
    if not same_box and saved != action_space:
        raise ValueError(f"policy {path}: returns actions in {saved}, but the env's action space is {action_space}; "
                         "use a policy trained for this system")
