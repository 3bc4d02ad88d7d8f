"""MLflow pyfunc flavour of a twinworld world model (logged as "models from code").

Input: a dict of arrays
    obs:     (B, T, obs_dim) recorded history (or (B, T, H, W, C) images)
    action:  (B, T - 1 + horizon, action_dim) store-aligned actions: T - 1 for the history, then the
             actions to imagine (Discrete: (B, T - 1 + horizon) integers)
    samples: optional int, imagined samples per history (default 1)
    seed:    optional int
Output: a dict of arrays `obs` (B, samples, horizon, …) sampled trajectories, `obs_mean`, `obs_std`,
`reward`, `terminated`, `uncertainty` (B, samples, horizon, …).
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel


class WorldModelPyfunc(PythonModel):
    """Predict trajectories from a history and an action sequence."""

    # `model_input` is a dict of arrays (see the module docstring), checked in `predict`. MLflow reads an
    # annotation there as an input schema (list[...] only) and warns on every log and load when it is not
    # one, or when there is none.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        import worldmodel

        self.model = worldmodel.load(context.artifacts["checkpoint"])

    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> dict:
        from worldmodel.interface import previous_actions

        model = self.model
        obs = torch.as_tensor(np.asarray(model_input["obs"]))
        action = torch.as_tensor(np.asarray(model_input["action"]))
        samples = int(np.asarray(model_input.get("samples", 1)).item())
        seed = int(np.asarray(model_input.get("seed", 0)).item())
        b, t = obs.shape[:2]
        if action.shape[1] < t:
            raise ValueError(f"action has {action.shape[1]} steps; expected T - 1 + horizon with T = {t}")
        hist = torch.cat([action[:, : t - 1], torch.zeros_like(action[:, :1])], 1)
        is_first = torch.zeros(b, t, dtype=torch.bool)
        is_first[:, 0] = True
        prev = previous_actions(hist, is_first)
        future = action[:, t - 1 :]

        def rep(x: torch.Tensor) -> torch.Tensor:
            return x.repeat_interleave(samples, 0)

        with torch.no_grad():
            state = model.observe(model.initial_state(b * samples), rep(obs).float() if not model.image_obs
                                  else rep(obs), rep(prev), rep(is_first))
            _, pred = model.imagine(state, rep(future), torch.Generator().manual_seed(seed))
        out = {}
        for name in ("obs", "obs_mean", "obs_std", "reward", "terminated", "uncertainty"):
            value = getattr(pred, name).float().cpu().numpy()
            out[name] = value.reshape(b, samples, *value.shape[1:])
        return out


mlflow.models.set_model(WorldModelPyfunc())
