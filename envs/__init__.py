"""Gymnasium environments over learned world models (DESIGN contract 5).

`import envs` registers `WorldModel-v0` (and `FMU-v0`, an FMU as an env: envs/fmu.py), so both of these work:

    gymnasium.make("WorldModel-v0", model="model.pt", store="pendulum.zarr")
    gymnasium.make_vec("WorldModel-v0", num_envs=64, vectorization_mode="vector_entry_point",
                       model="model.pt", store="pendulum.zarr")

`model` is a checkpoint path, an MLflow model URI or a loaded WorldModel; `store` a path or an open
TrajectoryStore. Episodes are truncated after `max_episode_steps` (200 unless given to make/make_vec).
See docs/envs.md.

| module | job |
| --- | --- |
| `world_model_env.py` | `WorldModelEnv`: the single env (its docstring is the env's spec) |
| `vector_env.py` | `WorldModelVectorEnv`: all sub-envs in one batched model call, same-step autoreset |
| `core.py` | `BatchedCore`, `CoreConfig`: the one stepping, seeding and rendering path both envs use |
| `loading.py` | model / store / `module:function` arguments to objects; model-store compatibility |
| `starts.py` | start states: recorded rows of the store, or a caller's history |
| `render.py` | `render()`: channels over the episode, or the predicted image |
| `rewards.py` | known reward and termination formulas (`envs.rewards:pendulum`, …) |
| `sb3.py` | `SB3VecEnv` / `make_sb3_env`: the vector env as a stable-baselines3 VecEnv |
| `fmu.py` | `FMUEnv`: `FMU-v0`, an FMI 2.0 co-simulation FMU as an env (docs/fmu.md) |
| `live.py` | `python -m envs.live`, an alias of `python -m twin.live` |
"""

import gymnasium

from envs.core import BatchedCore, CoreConfig
from envs.loading import load_model, open_store
from envs.vector_env import WorldModelVectorEnv
from envs.world_model_env import WorldModelEnv

ENV_ID = "WorldModel-v0"
DEFAULT_MAX_EPISODE_STEPS = 200
FMU_ENV_ID = "FMU-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=ENV_ID,
        entry_point="envs.world_model_env:WorldModelEnv",
        vector_entry_point="envs.vector_env:WorldModelVectorEnv",
        max_episode_steps=DEFAULT_MAX_EPISODE_STEPS,
    )

if FMU_ENV_ID not in gymnasium.registry:  # the FMU's config sets the episode length
    gymnasium.register(id=FMU_ENV_ID, entry_point="envs.fmu:FMUEnv")

__all__ = ["DEFAULT_MAX_EPISODE_STEPS", "ENV_ID", "FMU_ENV_ID", "BatchedCore", "CoreConfig", "WorldModelEnv",
           "WorldModelVectorEnv", "load_model", "open_store"]
