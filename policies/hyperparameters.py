"""An agent's constructor arguments as plain JSON, and back: what a safe policy file needs to rebuild it.

stable-baselines3 pickles whatever an agent holds; a twinworld policy file stores only what can be
written as JSON (numbers, strings, lists, mappings) and rebuilds the agent with SB3's own constructor.
Three kinds of class may appear in `policy_kwargs`, written by their public name and read back only
from their own namespace (nothing is imported by a name found in a file):

    activation_fn               torch.nn.<Module>            e.g. "torch.nn.ReLU"
    optimizer_class             torch.optim.<Optimizer>      e.g. "torch.optim.RMSprop" (A2C's default)
    features_extractor_class    stable_baselines3.common.torch_layers.<BaseFeaturesExtractor>

Anything else that is not plain data (an action-noise object, a learning-rate schedule other than a
constant, a custom buffer or policy class) is refused when saving, with the argument's name.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch

from data_pipeline.errors import UserError

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm

NOT_HYPERPARAMETERS = frozenset({"self", "policy", "env", "device", "_init_setup_model", "verbose", "seed",
                                 "tensorboard_log", "stats_window_size"})
"""Constructor arguments that describe a run, not the agent (the loader passes its own device and env)."""


class PolicyFormatError(UserError, ValueError):
    """An agent cannot be written as plain JSON, or a policy file names a class outside the allowed ones."""


def _class_namespaces() -> dict[str, tuple[Any, type]]:
    """The modules a class in `policy_kwargs` may come from, each with the base its classes must have."""
    from stable_baselines3.common import torch_layers

    return {"torch.nn": (torch.nn, torch.nn.Module), "torch.optim": (torch.optim, torch.optim.Optimizer),
            "stable_baselines3.common.torch_layers": (torch_layers, torch_layers.BaseFeaturesExtractor)}


def _class_name(cls: type) -> str | None:
    """`torch.nn.ReLU` for an allowed class (found by its public name in its namespace), else None."""
    for prefix, (module, base) in _class_namespaces().items():
        if getattr(module, cls.__name__, None) is cls and issubclass(cls, base):
            return f"{prefix}.{cls.__name__}"
    return None


def _sb3_default_buffer(cls: type) -> bool:
    """SB3 picks these buffers itself from the observation space, so the file need not name them."""
    from stable_baselines3.common.buffers import DictReplayBuffer, DictRolloutBuffer, ReplayBuffer, RolloutBuffer

    return cls in (ReplayBuffer, DictReplayBuffer, RolloutBuffer, DictRolloutBuffer)


def to_plain(value: Any, key: str) -> Any:
    """`value` as JSON data; `key` names it in the error when it cannot be."""
    from stable_baselines3.common.type_aliases import TrainFreq
    from stable_baselines3.common.utils import ConstantSchedule, FloatSchedule

    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, TrainFreq):  # SB3 stores train_freq=(4, "step") as a named tuple with an enum
        return [value.frequency, value.unit.value]
    if isinstance(value, FloatSchedule):
        value = value.value_schedule
    if isinstance(value, ConstantSchedule):
        return value.val
    if isinstance(value, list | tuple):
        return [to_plain(v, f"{key}.{i}") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: to_plain(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, type) and (name := _class_name(value)):
        return name
    raise PolicyFormatError(
        f"hyperparameter {key!r} is {value!r}; a twinworld policy file holds plain values only (numbers, strings, "
        f"lists, mappings, constant schedules, and classes of torch.nn, torch.optim or SB3's torch_layers), so the "
        f"agent can be rebuilt without unpickling. Use a plain value, or SB3's own agent.save for this agent")


def hyperparameters_of(agent: BaseAlgorithm) -> dict[str, Any]:
    """The keyword arguments of `type(agent)(...)` that rebuild `agent` (as JSON data), read from the agent."""
    out: dict[str, Any] = {}
    for name in inspect.signature(type(agent).__init__).parameters:
        if name in NOT_HYPERPARAMETERS or not hasattr(agent, name):
            continue
        value = getattr(agent, name)
        if name.endswith("buffer_class") and isinstance(value, type) and _sb3_default_buffer(value):
            value = None
        out[name] = to_plain(value, name)
    return out


def from_plain(hyperparameters: dict[str, Any], source: str) -> dict[str, Any]:
    """The constructor keyword arguments for JSON `hyperparameters`: the class names in `policy_kwargs` are
    looked up in their allowed namespace (never imported); `source` names the file in errors."""
    kwargs = dict(hyperparameters)
    policy_kwargs = dict(kwargs.get("policy_kwargs") or {})
    namespaces = _class_namespaces()
    for key in ("activation_fn", "optimizer_class", "features_extractor_class"):
        name = policy_kwargs.get(key)
        if name is None:
            continue
        prefix, _, attr = str(name).rpartition(".")
        module, base = namespaces.get(prefix, (None, object))
        cls = getattr(module, attr, None) if module is not None and not attr.startswith("_") else None
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PolicyFormatError(
                f"{source}: key 'hyperparameters.policy_kwargs.{key}' is {name!r}; expected a class of "
                f"{' or '.join(namespaces)} by its public name (e.g. 'torch.nn.ReLU')")
        policy_kwargs[key] = cls
    if "policy_kwargs" in kwargs:
        kwargs["policy_kwargs"] = policy_kwargs
    if isinstance(kwargs.get("train_freq"), list):
        kwargs["train_freq"] = tuple(kwargs["train_freq"])
    return kwargs
