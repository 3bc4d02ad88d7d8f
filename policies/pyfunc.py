"""MLflow pyfunc flavour of a twinworld policy (logged as "models from code").

Input: observations (B, *obs_shape) as an array; output: deterministic actions (B, *action_shape).
The artifacts are the policy's JSON (`policy_info`, naming the algorithm, hyperparameters and spaces)
and its weights (`policy_weights`, safetensors): the agent is rebuilt from them and nothing is
unpickled. A model logged before the safe format (a zip only, artifact `policy`) is refused.
"""

from __future__ import annotations

from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class PolicyPyfunc(PythonModel):
    """Deterministic actions of a trained policy."""

    # `model_input` is an array of observations, checked in `predict`. MLflow reads an annotation there as an input
    # schema (list[...] only) and warns on every log and load when it is not one, or when there is none.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from policies.files import load_sb3

        artifacts = context.artifacts
        info, weights = artifacts["policy_info"], artifacts.get("policy_weights")
        self.agent = load_sb3(artifacts.get("policy", info), info_file=info, weights_file=weights)

    def predict(self, context: Any, model_input, params: dict[str, Any] | None = None) -> np.ndarray:
        obs = np.asarray(model_input, dtype=np.float32)
        action, _ = self.agent.predict(obs, deterministic=True)
        return np.asarray(action)


mlflow.models.set_model(PolicyPyfunc())
