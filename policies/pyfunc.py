"""MLflow pyfunc flavour of a stable-baselines3 policy (logged as "models from code").

Input: observations (B, *obs_shape) as an array; output: deterministic actions (B, *action_shape).
The artifacts are the policy zip (`policy`) and its JSON (`policy_info`), which names the algorithm.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class PolicyPyfunc(PythonModel):
    """Deterministic actions of a trained policy."""

    def load_context(self, context: Any) -> None:
        from policies.files import load_sb3

        self.agent = load_sb3(context.artifacts["policy"], info_file=context.artifacts["policy_info"])

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        obs = np.asarray(model_input, dtype=np.float32)
        action, _ = self.agent.predict(obs, deterministic=True)
        return np.asarray(action)


mlflow.models.set_model(PolicyPyfunc())
