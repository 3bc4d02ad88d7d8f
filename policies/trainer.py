"""`train.py policy`: intervention policies trained in the learned environment, and the model-based loop.

    python train.py policy --config configs/pendulum/policy.yaml --model MODEL --store STORE [--iterations K]

Each iteration (MBPO-style): train a stable-baselines3 agent in the vectorized `WorldModel-v0`,
with short model rollouts started from recorded states; evaluate it on the real system (the
Gymnasium id `real_env`, the stand-in for the physical plant) if one is named; then collect
`collect_episodes` real episodes with the policy into the store (append, commit protocol), fine-tune
the world model on the grown store and continue. The learning curve is real return against real
steps used (the store's transitions, random-policy data included). Everything is logged to MLflow;
the policy zip is an artifact and a Model Registry entry. Ends by printing `policy: PATH`,
`policy_uri: …`, `real_return: …`, `real_steps: …`.

`--resume` continues a killed run from its last checkpoint in `out_dir` (agent, replay buffer,
iteration, model).
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from jsonargparse import ActionConfigFile, ArgumentParser
from stable_baselines3.common.callbacks import BaseCallback

from data_pipeline.store import TrajectoryStore
from data_pipeline.store.files import atomic_write


@dataclass
class PolicyConfig:
    """What `train.py policy` trains, where, and for how long."""

    model: str = ""
    """World model: checkpoint path or MLflow model URI (runs:/…, models:/…)."""
    store: str = ""
    """Trajectory store the rollouts start from (and real episodes are appended to)."""
    algorithm: Literal["SAC", "PPO", "TD3"] = "SAC"
    """stable-baselines3 algorithm."""
    hyperparameters: dict[str, Any] = field(default_factory=dict)
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
    experiment: str = "twinworld"
    """MLflow experiment."""
    registered_policy_name: str = "twinworld-policy"
    """Model Registry name of the policy ('' to skip registration)."""


# ---------------------------------------------------------------------------------------------- helpers
def real_return(agent: Any, env_id: str, episodes: int, seed: int) -> float:
    """Mean return of the agent's deterministic actions on the real Gymnasium env."""
    env = gym.make(env_id)
    returns = []
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        total, done = 0.0, False
        while not done:
            action, _ = agent.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return float(np.mean(returns))


def model_return(agent: Any, venv: Any, episodes: int) -> float:
    """Mean return of deterministic actions in the learned env, over `episodes` finished episodes."""
    from stable_baselines3.common.evaluation import evaluate_policy

    mean, _ = evaluate_policy(agent, venv, n_eval_episodes=episodes, deterministic=True, warn=False)
    return float(mean)


def real_steps(store_path: str) -> int:
    with TrajectoryStore.open(store_path) as store:
        return int(store.num_steps - store.num_episodes)


def refit(model_path: str, store_path: str, cfg: PolicyConfig, out: Path, iteration: int) -> str:
    """Fine-tune the world model on the grown store; return the new model file."""
    import lightning as L

    import worldmodel
    from data_pipeline.datamodule import WindowDataModule
    from worldmodel.lightning import WorldModelModule

    model = worldmodel.load(model_path)
    dm = WindowDataModule(store=store_path, window=cfg.refit_window, batch_size=cfg.refit_batch_size,
                          batches_per_epoch=cfg.refit_steps, val_batches=4, sample_seed=cfg.seed + iteration)
    module = WorldModelModule(kind=model.model_type, config=asdict(model.config), lr=cfg.refit_lr,
                              seed=cfg.seed + iteration)
    module.model = model.train()
    trainer = L.Trainer(max_steps=cfg.refit_steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=4, gradient_clip_val=10.0)
    trainer.fit(module, dm)
    path = out / f"model-iter{iteration}.pt"
    module.model.eval().save(str(path))
    return str(path)


def _make_agent(cfg: PolicyConfig, venv: Any) -> Any:
    import stable_baselines3

    algo = getattr(stable_baselines3, cfg.algorithm)
    return algo("MlpPolicy", venv, seed=cfg.seed, verbose=0, **cfg.hyperparameters)


# ---------------------------------------------------------------------------------------------- loop
def train_policy(cfg: PolicyConfig, resume: bool = False) -> dict[str, str]:
    """Run the (model-based) policy training loop; return the printed outputs."""
    import mlflow

    from data_pipeline.record import record
    from envs.sb3 import make_sb3_env
    from policies.behaviour import load_sb3
    from tracking.lineage import lineage_tags
    from tracking.logger import BufferedMLflowLogger, tracking_uri
    from worldmodel.io import resolve_model_file

    torch.set_num_threads(cfg.torch_threads)
    if not cfg.model or not cfg.store:
        raise ValueError("policy: --model and --store are required (the store the rollouts start from)")
    if cfg.iterations > 1 and not cfg.real_env:
        raise ValueError("policy: iterations > 1 collects real data and needs real_env (a Gymnasium id)")
    out = Path(cfg.out_dir)
    state_file = out / "state.json"
    state: dict[str, Any] = {"iteration": 0, "model": str(resolve_model_file(cfg.model)), "curve": []}
    if resume and state_file.exists():
        state = json.loads(state_file.read_text())
    elif out.exists() and not resume:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    tracker = BufferedMLflowLogger(
        experiment_name=cfg.experiment, run_name=f"policy-{cfg.algorithm}-s{cfg.seed}", run_id=state.get("run_id"),
        tags={"twinworld.stage": "policy", "twinworld.model_uri": cfg.model, "data.store": cfg.store,
              **lineage_tags(cfg.model)})
    if "run_id" not in state:
        state["run_id"] = tracker.run_id
        tracker.log_hyperparams({k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in asdict(cfg).items()})

    agent = None
    agent_file = out / "agent.zip"
    buffer_file = out / "replay_buffer.pkl"
    final_return = float("nan")
    for iteration in range(state["iteration"], cfg.iterations):
        t0 = time.time()
        venv = make_sb3_env(state["model"], cfg.store, num_envs=cfg.num_envs, seed=cfg.seed + iteration,
                            reward_fn=cfg.reward_fn, termination_fn=cfg.termination_fn,
                            uncertainty_penalty=cfg.uncertainty_penalty, max_episode_steps=cfg.rollout_horizon)
        if agent is None:
            if agent_file.exists() and resume:
                agent = load_sb3(agent_file)
                agent.set_env(venv)
                if buffer_file.exists() and hasattr(agent, "load_replay_buffer"):
                    agent.load_replay_buffer(buffer_file)
            else:
                agent = _make_agent(cfg, venv)
        else:
            agent.set_env(venv)
        done_steps = int(state.get("iteration_steps", 0)) if resume else 0
        remaining = max(cfg.timesteps - done_steps, 0)
        checkpoint = _IterationCheckpoint(cfg.checkpoint_every, agent_file, buffer_file, state, state_file,
                                          iteration, done_steps)
        if remaining:
            agent.learn(remaining, reset_num_timesteps=False, callback=[checkpoint])
        resume = False
        state["iteration_steps"] = 0

        metrics = {"model_return": model_return(agent, venv, min(cfg.eval_episodes, cfg.num_envs * 4))}
        steps_used = real_steps(cfg.store)
        if cfg.real_env:
            final_return = real_return(agent, cfg.real_env, cfg.eval_episodes, seed=10_000)
            metrics["real_return"] = final_return
        else:
            final_return = metrics["model_return"]
        metrics["real_steps"] = steps_used
        metrics["iteration_seconds"] = time.time() - t0
        tracker.log_metrics(metrics, step=iteration)
        if cfg.real_env:
            tracker.log_metrics({"real_return_vs_real_steps": final_return}, step=steps_used)
        state["curve"].append({"iteration": iteration, **metrics})
        print(f"[policy] iteration {iteration}: " + ", ".join(f"{k} {v:.1f}" for k, v in metrics.items()), flush=True)
        venv.close()
        atomic_write(agent_file, agent.save)

        if iteration < cfg.iterations - 1:
            # Collect real data with the current policy, then refit the model on the grown store.
            record(cfg.real_env, cfg.collect_episodes, cfg.store, policy=str(agent_file),
                   seed=cfg.seed * 1000 + 500 + iteration * cfg.collect_episodes, append=True,
                   progress=False).close()
            state["model"] = refit(state["model"], cfg.store, cfg, out, iteration)
        state["iteration"] = iteration + 1
        atomic_write(state_file, lambda p: Path(p).write_text(json.dumps(state)))

    policy_path = out / "policy.zip"
    agent.save(policy_path)
    mlflow.set_tracking_uri(tracking_uri())
    (out / "learning_curve.json").write_text(json.dumps(state["curve"], indent=1))
    with mlflow.start_run(run_id=tracker.run_id):
        mlflow.log_artifact(str(policy_path), artifact_path="policy")
        mlflow.log_artifact(str(out / "learning_curve.json"), artifact_path="policy")
        info = mlflow.pyfunc.log_model(
            name="policy_model",
            python_model=str(Path(__file__).with_name("pyfunc.py")),
            artifacts={"policy": str(policy_path)},
            pip_requirements=["stable-baselines3", "torch==2.13.0", "numpy"],
            registered_model_name=cfg.registered_policy_name or None,
        )
    tracker.end_run()
    if cfg.registered_policy_name and info.registered_model_version is not None:
        policy_uri = f"models:/{cfg.registered_policy_name}/{info.registered_model_version}"
    else:
        policy_uri = info.model_uri
    return {"policy": str(policy_path), "policy_uri": policy_uri, "real_return": f"{final_return:.1f}",
            "real_steps": str(real_steps(cfg.store)), "model": state["model"], "run_id": tracker.run_id}


class _IterationCheckpoint(BaseCallback):
    """SB3 callback: every `every` learned-env steps, save the agent, its replay buffer and the loop state."""

    def __init__(self, every: int, agent_file: Path, buffer_file: Path, state: dict, state_file: Path,
                 iteration: int, done: int) -> None:
        super().__init__()
        self.every, self.agent_file, self.buffer_file = every, agent_file, buffer_file
        self.state, self.state_file, self.iteration, self.done = state, state_file, iteration, done
        self.start: int | None = None

    def _on_step(self) -> bool:
        n = self.training_env.num_envs
        if self.start is None:
            self.start = self.num_timesteps - n
        steps = self.done + self.num_timesteps - self.start
        if self.every and steps // self.every > (steps - n) // self.every:
            # Agent and buffer first, the state file last: it is the checkpoint's commit point.
            atomic_write(self.agent_file, self.model.save)
            if hasattr(self.model, "save_replay_buffer"):
                atomic_write(self.buffer_file, self.model.save_replay_buffer)
            self.state.update(iteration=self.iteration, iteration_steps=steps)
            atomic_write(self.state_file, lambda p: Path(p).write_text(json.dumps(self.state)))
        return True


# ---------------------------------------------------------------------------------------------- CLI
def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python train.py policy", description=__doc__,
                            default_config_files=[], env_prefix="TWINWORLD_POLICY")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML config (keys of PolicyConfig)")
    parser.add_class_arguments(PolicyConfig, as_group=False)
    parser.add_argument("--resume", action="store_true", help="continue a killed run from out_dir's checkpoint")
    return parser


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = build_parser()
    ns = parser.parse_args(argv)
    resume = bool(ns.pop("resume"))
    ns.pop("config", None)
    cfg = PolicyConfig(**parser.instantiate_classes(ns).as_dict())
    outputs = train_policy(cfg, resume=resume)
    for key in ("policy", "policy_uri", "real_return", "real_steps", "model", "run_id"):
        print(f"{key}: {outputs[key]}")
    return outputs
