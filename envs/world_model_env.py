"""`WorldModel-v0`: a learned world model as a Gymnasium environment (the single-env face).

    import envs, gymnasium
    env = gymnasium.make("WorldModel-v0", model="model.pt", store="pendulum.zarr")
    obs, info = env.reset(seed=0, options={"episode": 3, "t": 40})
"""

from __future__ import annotations

import os
from typing import Any, Unpack

import gymnasium as gym
import numpy as np

from data_pipeline.store import TrajectoryStore
from envs.core import RENDER_MODES, BatchedCore, CoreConfig, EnvOptions
from worldmodel.interface import WorldModel


class WorldModelEnv(gym.Env):
    """A digital twin: a learned world model stepped as an environment, started from real recorded states.

    ## Description

    Any model implementing the WorldModel interface (ensemble, RSSM, diffusion) imagines the system's
    next observation from its belief state and the action. Episodes start from the recorded trajectory
    store the model was trained on: the model first assimilates real history (`WorldModel.observe`), so
    the twin starts synced to the real system, then imagines. The env is the batch-of-one case of
    `WorldModelVectorEnv` and shares its stepping code (`envs.core.BatchedCore`).

    ## Action Space

    The store's action space: `Box(action_dim,)` in the actuators' physical units (out-of-range actions
    are clipped to the bounds, as in Gymnasium's own envs) or `Discrete(n)`.

    ## Observation Space

    The store's observation space, in physical units: `Box(obs_dim,)` float32 vectors (channels named in
    `store.schema.obs_channels`, units in `obs_units`), or `Box(0, 255, (H, W, C), uint8)` images.
    Imagined observations are clipped to the space's finite bounds.

    ## Rewards

    The model's reward head, or `reward_fn(obs, action, next_obs)` (a `module:function` or callable on
    batched numpy arrays, e.g. `envs.rewards:pendulum`). With `uncertainty_penalty=λ` the reward is
    `r - λ · uncertainty` (MOPO); the penalty runs every elite of an ensemble on every step.

    ## Starting State

    `reset(seed=None, options=None)`; `options` may hold
    - `{"episode": e, "t": t}`: recorded episode `e` (position or id) at row `t` (default 0; negative
      counts from the end). Rows `t-history+1 … t` are assimilated; the first observation is row `t`'s.
    - `{"history": {"obs": (T, …), "action": (T-1 or T, …)}}`: a caller's history (live sync), actions
      store-aligned (`action[k]` taken at `obs[k]`); optional `"is_first"` (T,) marks restarts.
    - nothing: a random recorded state, uniform over the rows that have a next row, drawn from
      `self.np_random`.

    ## Episode End

    Termination: `termination_fn(obs, action, next_obs)` if given, else the model's termination head,
    `termination="threshold"` (probability > 0.5, the default), `"sample"` (Bernoulli from the env's
    generator) or `"never"`. Truncation: only by the registration's `TimeLimit` (`max_episode_steps`,
    200 by default, overridable in `gymnasium.make`); the env itself never truncates.

    ## Info

    - `step`: `uncertainty` (float, the model's epistemic uncertainty for the step in units of the
      channels' std: ensemble disagreement or latent-sample spread; large means the model extrapolates)
      and, for vector observations, `obs_std` (obs_dim,) the predictive std per channel. An ensemble
      computes its disagreement only with `uncertainty="elites"` (or a penalty); the default "own" runs
      each env's own member alone, 3-5x faster, reporting `uncertainty` 0 and the aleatoric `obs_std`;
      "none" also drops `obs_std`. Observations and rewards are the same under all three.
    - `reset`: `start_episode` (store position, -1 for a given history) and `start_t` (row).

    ## Seeding

    The same seed and the same actions give the same observations: `reset(seed=s)` reseeds
    `np_random` (start states) and, from it, the torch generator the model draws its noise from.

    ## Arguments

    `model` (WorldModel, checkpoint path or MLflow URI), `store` (TrajectoryStore or path); see
    `envs.core.CoreConfig` for `history`, `reward_fn`, `termination_fn`, `termination`,
    `uncertainty_penalty`, `uncertainty`, `device`, `precision` ("bf16-mixed" for speed) and `cache_bytes`;
    `render_mode="rgb_array"` plots the channels over the episode (or returns the predicted image for
    image models).

    ## Version History

    - v0: initial version.
    """

    metadata = {"render_modes": RENDER_MODES, "render_fps": 20}

    def __init__(
        self,
        model: WorldModel | str | os.PathLike,
        store: TrajectoryStore | str | os.PathLike,
        *,
        render_mode: str | None = None,
        **options: Unpack[EnvOptions],
    ) -> None:
        self.core = BatchedCore(model, store, 1, CoreConfig(render_mode=render_mode, **options))
        self.observation_space = self.core.observation_space
        self.action_space = self.core.action_space
        self.render_mode = render_mode
        self.metadata = {**self.metadata, "render_fps": self.core.render_fps}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.core.seed(self.np_random, seed)
        info = self.core.reset(np.zeros(1, np.int64), self.np_random, options)
        return self.core.obs[0].copy(), {k: v[0].item() for k, v in info.items()}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        batch = np.asarray(action)[None] if self.core.discrete else np.asarray(action, np.float32)[None]
        out = self.core.step(batch)  # validates the shape, clips Box actions to the space
        info: dict[str, Any] = {"uncertainty": float(out.uncertainty[0])}
        if out.obs_std is not None:
            info["obs_std"] = out.obs_std[0].copy()
        return out.obs[0], float(out.reward[0]), bool(out.terminated[0]), False, info

    def render(self) -> np.ndarray | None:
        """An RGB array: the channels over the episode so far, or the current (predicted) image."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; make the env with render_mode='rgb_array'")
            return None
        return self.core.render_frame(0)
