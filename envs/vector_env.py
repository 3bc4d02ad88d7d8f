"""`WorldModel-v0`, vectorized: all sub-envs advanced in one batched model call per step.

    import envs, gymnasium
    envs_ = gymnasium.make_vec("WorldModel-v0", num_envs=1024, vectorization_mode="vector_entry_point",
                               model="model.pt", store="pendulum.zarr")
"""

from __future__ import annotations

import os
from typing import Any, Unpack

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from data_pipeline.errors import InputError
from data_pipeline.store import TrajectoryStore
from envs.core import RENDER_MODES, BatchedCore, CoreConfig, EnvOptions
from worldmodel.interface import WorldModel


class WorldModelVectorEnv(VectorEnv):
    """`num_envs` copies of `WorldModelEnv` (see its docstring for spaces, reward, termination, seeding)
    stepped as one batch: one `WorldModel.step` per `step()` on the model's device, numpy in and out.

    ## Autoreset

    `metadata["autoreset_mode"]` is `AutoresetMode.SAME_STEP`: a sub-env that terminates or truncates
    is reset within the same `step()` to a random recorded state (drawn from `np_random`). The returned
    observation is then the new episode's first; the last one is in `info["final_obs"]` (an object
    array, set where `info["_final_obs"]`), its step info in `info["final_info"]`. Same-step reset is
    what stable-baselines3's VecEnv API expects (`envs.sb3.SB3VecEnv` passes it straight through).

    ## Truncation

    `max_episode_steps` (a constructor argument, as in Gymnasium's own vector envs): a sub-env is
    truncated after that many steps. `gymnasium.make_vec(..., vectorization_mode="vector_entry_point")`
    passes the registration's value (200) unless `max_episode_steps=` is given; `None` never truncates.

    ## Reset options

    As for `WorldModelEnv`, applied to every sub-env, where `episode` / `t` may also be sequences (one
    per sub-env) and `history` arrays may carry a leading sub-env dimension. `{"reset_mask": (num_envs,)
    bool}` resets only the masked sub-envs (after a first full reset). `reset(seed=…)` takes an int, or
    a list whose first element is used (all sub-envs share one generator).

    ## Info

    Gymnasium's vector convention (a `_key` mask beside each key): `uncertainty` (num_envs,), `obs_std`
    (num_envs, obs_dim) for vector observations, and after a reset `start_episode` / `start_t`.
    """

    metadata = {"render_modes": RENDER_MODES, "render_fps": 20, "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        model: WorldModel | str | os.PathLike | None = None,
        store: TrajectoryStore | str | os.PathLike | None = None,
        *,
        max_episode_steps: int | None = None,
        render_mode: str | None = None,
        **options: Unpack[EnvOptions],
    ) -> None:
        if model is None or store is None:
            raise TypeError("WorldModelVectorEnv needs model= (WorldModel, path or MLflow URI) and store= "
                            "(TrajectoryStore or path)")
        if max_episode_steps is not None and max_episode_steps < 1:
            raise InputError(f"max_episode_steps={max_episode_steps}; expected a positive number or None")
        self.core = BatchedCore(model, store, num_envs, CoreConfig(render_mode=render_mode, **options))
        self.num_envs = num_envs
        self.max_episode_steps = max_episode_steps
        self.render_mode = render_mode
        self.single_observation_space = self.core.observation_space
        self.single_action_space = self.core.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.metadata = {**self.metadata, "render_fps": self.core.render_fps}
        self.elapsed = np.zeros(num_envs, np.int64)
        self._all = np.ones(num_envs, bool)

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        if isinstance(seed, list | tuple):
            seed = next((s for s in seed if s is not None), None)
        super().reset(seed=seed)
        self.core.seed(self.np_random, seed)
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        if mask is None:
            mask = self._all
        mask = np.asarray(mask, bool)
        if mask.shape != (self.num_envs,):
            raise InputError(f"reset options['reset_mask']: shape {mask.shape}; expected ({self.num_envs},) bool")
        index = np.flatnonzero(mask)
        start = self.core.reset(index, self.np_random, options)
        self.elapsed[index] = 0
        info: dict[str, Any] = {}
        for key, value in start.items():
            full = np.full(self.num_envs, -1, np.int64)
            full[index] = value
            info[key], info[f"_{key}"] = full, mask.copy()
        return self.core.obs.copy(), info

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        out = self.core.step(actions)
        self.elapsed += 1
        terminated = out.terminated
        if self.max_episode_steps is None:
            truncated = np.zeros(self.num_envs, bool)
        else:
            truncated = self.elapsed >= self.max_episode_steps
        info: dict[str, Any] = {"uncertainty": out.uncertainty, "_uncertainty": self._all.copy()}
        if out.obs_std is not None:
            info["obs_std"], info["_obs_std"] = out.obs_std, self._all.copy()
        obs = out.obs
        done = terminated | truncated
        if done.any():
            index = np.flatnonzero(done)
            final = obs[index]  # a copy: `obs` rows are overwritten by the new episodes below
            final_obs = np.full(self.num_envs, None, dtype=object)
            for j, i in enumerate(index):  # only the finished sub-envs
                final_obs[i] = final[j]
            final_info = {k: v.copy() for k, v in info.items() if not k.startswith("_")}
            final_info.update({f"_{k}": done.copy() for k in list(final_info)})
            info.update(final_obs=final_obs, _final_obs=done.copy(), final_info=final_info, _final_info=done.copy())
            start = self.core.reset(index, self.np_random, None)
            self.elapsed[index] = 0
            obs[index] = self.core.obs[index]
            for key, value in start.items():
                full = np.full(self.num_envs, -1, np.int64)
                full[index] = value
                info[key], info[f"_{key}"] = full, done.copy()
        return obs, out.reward, terminated, truncated, info

    def render(self) -> tuple[np.ndarray, ...] | None:
        """One RGB array per sub-env (Gymnasium's vector convention): each plot costs a matplotlib draw,
        so render few sub-envs (or make a small `num_envs` for viewing)."""
        if self.render_mode is None:
            return None
        return tuple(self.core.render_frame(i) for i in range(self.num_envs))
