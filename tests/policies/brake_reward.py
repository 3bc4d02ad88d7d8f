"""A reward a tiny agent improves on within a second of training: brake the pendulum (small next θ̇).

Pendulum's own reward needs a swing-up, thousands of steps away; the policy tests need a task whose
improvement shows after a few hundred, in the learned env. Imported by name: `brake_reward:brake`.
"""

import numpy as np


def brake(obs: np.ndarray, action: np.ndarray, next_obs: np.ndarray) -> np.ndarray:
    """-(θ̇ after the step)² for Pendulum's channels (cos θ, sin θ, θ̇)."""
    return -(next_obs[:, 2] ** 2).astype(np.float32)
