"""Gymnasium environments over learned world models (DESIGN contract 5).

`import envs` registers `WorldModel-v0`, so both of these work:

    gymnasium.make("WorldModel-v0", model="model.pt", store="pendulum.zarr")
    gymnasium.make_vec("WorldModel-v0", num_envs=64, vectorization_mode="vector_entry_point",
                       model="model.pt", store="pendulum.zarr")

`model` is a checkpoint path, an MLflow model URI or a loaded WorldModel; `store` a path or an open
TrajectoryStore. Episodes are truncated after `max_episode_steps` (200 unless given to make/make_vec).
See docs/envs.md.
"""

import gymnasium

from envs.vector_env import WorldModelVectorEnv
from envs.world_model_env import WorldModelEnv

ENV_ID = "WorldModel-v0"
DEFAULT_MAX_EPISODE_STEPS = 200

if ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=ENV_ID,
        entry_point="envs.world_model_env:WorldModelEnv",
        vector_entry_point="envs.vector_env:WorldModelVectorEnv",
        max_episode_steps=DEFAULT_MAX_EPISODE_STEPS,
    )

__all__ = ["DEFAULT_MAX_EPISODE_STEPS", "ENV_ID", "WorldModelEnv", "WorldModelVectorEnv"]
