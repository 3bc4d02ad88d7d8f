"""The typed config of `train.py policy` (and of configs/*/policy.yaml): one field per option, each with
the one-line docstring that `python train.py policy --help` shows.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field

from data_pipeline.specfile import Spec


class PolicyConfig(Spec):
    """What `train.py policy` trains, where, and for how long."""

    model_config = ConfigDict(extra="forbid", validate_default=True, use_attribute_docstrings=True)

    model: str = ""
    """World model: checkpoint path or MLflow model URI (runs:/…, models:/…)."""
    store: str = ""
    """Trajectory store the rollouts start from (and real episodes are appended to)."""
    algorithm: Literal["SAC", "PPO", "TD3"] = "SAC"
    """stable-baselines3 algorithm."""
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    """Keyword arguments of the SB3 algorithm (learning_rate, batch_size, policy_kwargs, …)."""
    num_envs: int = 16
    """Learned-env copies stepped as one batch."""
    rollout_horizon: int = 50
    """Steps of a model rollout before it is truncated (short rollouts branched from real data, as MBPO)."""
    timesteps: int = 20_000
    """Learned-env transitions per iteration."""
    reward_fn: str | None = None
    """`module:function` computing the reward from (obs, action, next_obs); None uses the model's reward head."""
    termination_fn: str | None = None
    """`module:function` for termination; None uses the model's termination head."""
    uncertainty_penalty: float = 0.0
    """MOPO-style penalty: reward -= penalty × the model's uncertainty."""
    real_env: str | None = None
    """Gymnasium id of the real system for evaluation and data collection; None evaluates in the learned env."""
    eval_episodes: int = 10
    """Episodes per evaluation."""
    iterations: int = 1
    """Model-based loop iterations (collect → refit → retrain); 1 trains once in the given model."""
    collect_episodes: int = 1
    """Real episodes collected with the policy per iteration (needs real_env)."""
    refit_steps: int = 300
    """World-model gradient steps on the grown store per iteration."""
    refit_lr: float = 1e-3
    """Learning rate of the world-model refit."""
    refit_window: int = 16
    """Training-window length of the refit."""
    refit_batch_size: int = 32
    """Windows per refit batch."""
    seed: int = 0
    """Seeds the agent, the learned env and the collection episodes."""
    out_dir: str = "runs/policy"
    """Where the policy zip, checkpoints and refit models go."""
    checkpoint_every: int = 5_000
    """Learned-env steps between resumable checkpoints."""
    torch_threads: int = 1
    """CPU threads for the agent's updates: small MLPs are fastest on one (more only spin on a busy machine)."""
    experiment: str | None = None
    """MLflow experiment (default: the store's system, e.g. cartpole)."""
    registered_policy_name: str | None = None
    """Model Registry name of the policy ('' to skip registration; default: <system>-policy from the store)."""
