"""stable-baselines3 on the learned env: a VecEnv adapter over `WorldModelVectorEnv`.

    from stable_baselines3 import SAC
    from envs.sb3 import make_sb3_env
    venv = make_sb3_env("model.pt", "pendulum.zarr", num_envs=16, seed=0, reward_fn="envs.rewards:pendulum")
    SAC("MlpPolicy", venv).learn(10_000)

The batched observation, reward and done arrays pass straight through (no per-sub-env copies); the
only per-sub-env work is the list of info dicts SB3's API requires, and `terminal_observation` for the
sub-envs that finished. The vector env resets finished sub-envs in the same step, which is what SB3
expects.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.vec_env import VecEnv, VecMonitor
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn

from data_pipeline.errors import InputError
from data_pipeline.store import TrajectoryStore
from worldmodel.interface import WorldModel


class SB3VecEnv(VecEnv):
    """An SB3 `VecEnv` over a same-step-autoreset Gymnasium vector env (e.g. `WorldModelVectorEnv`).

    `get_attr`, `set_attr` and `env_method` act on the one vector env (all sub-envs share it), and
    return its value once per requested index. `seed(s)` takes effect at the next `reset()`, as in SB3;
    `set_options` must give every sub-env the same options (the vector env's `reset` takes per-sub-env
    episodes as lists inside one options dict instead).
    """

    def __init__(self, venv: gymnasium.vector.VectorEnv) -> None:
        mode = venv.metadata.get("autoreset_mode")
        if mode != AutoresetMode.SAME_STEP:
            raise InputError(f"SB3VecEnv needs a vector env with autoreset_mode SAME_STEP (SB3 resets in the "
                             f"same step); {type(venv).__name__} declares {mode}")
        self.venv = venv
        self._actions: np.ndarray | None = None
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)

    def reset(self) -> VecEnvObs:
        # SB3 seeds sub-env i with s + i; one int does the same for a Gymnasium vector env.
        seed = next((s for s in self._seeds if s is not None), None)
        options = None
        if any(self._options):
            if any(o != self._options[0] for o in self._options):
                raise InputError("SB3VecEnv.set_options: give all sub-envs the same options dict (per-sub-env "
                                 "starts go inside it, e.g. {'episode': [e0, e1, …], 't': [t0, t1, …]})")
            options = self._options[0]
        obs, info = self.venv.reset(seed=seed, options=options)
        self.reset_infos = [{} for _ in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        obs, reward, terminated, truncated, info = self.venv.step(self._actions)
        dones = terminated | truncated
        uncertainty = info.get("uncertainty")
        if uncertainty is not None:
            infos: list[dict[str, Any]] = [{"uncertainty": u} for u in uncertainty.tolist()]
        else:
            infos = [{} for _ in range(self.num_envs)]
        if dones.any():
            final_obs = info["final_obs"]
            for i in np.flatnonzero(dones):  # only the finished sub-envs
                infos[i]["terminal_observation"] = final_obs[i]
                # SB3 bootstraps the value of time-limit truncations from the terminal observation.
                infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
        return obs, reward, dones, infos

    def close(self) -> None:
        self.venv.close()

    def _count(self, indices: VecEnvIndices) -> int:
        return len(list(self._get_indices(indices)))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.venv, attr_name)] * self._count(indices)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result] * self._count(indices)

    def env_is_wrapped(self, wrapper_class: type[gymnasium.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False] * self._count(indices)

    def get_images(self) -> Sequence[np.ndarray | None]:
        frames = self.venv.render()
        return [np.asarray(f) for f in frames] if frames is not None else [None] * self.num_envs


def make_sb3_env(
    model: WorldModel | str | os.PathLike,
    store: TrajectoryStore | str | os.PathLike,
    num_envs: int = 1,
    *,
    seed: int | None = None,
    monitor: bool = True,
    **env_kwargs: Any,
) -> VecEnv:
    """`WorldModel-v0` as an SB3 VecEnv: `make_vec` + `SB3VecEnv`, wrapped in `VecMonitor` (episode
    returns and lengths in the logs) unless `monitor=False`. `env_kwargs` go to `WorldModelVectorEnv`
    (e.g. `reward_fn`, `max_episode_steps`, `uncertainty_penalty`)."""
    import envs  # noqa: F401 - registers WorldModel-v0

    venv = gymnasium.make_vec("WorldModel-v0", num_envs=num_envs, vectorization_mode="vector_entry_point",
                              model=model, store=store, **env_kwargs)
    env: VecEnv = SB3VecEnv(venv)
    if seed is not None:
        env.seed(seed)
    return VecMonitor(env) if monitor else env
