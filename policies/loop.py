"""The model-based policy loop behind `train.py policy` (MBPO-style).

Each iteration trains a stable-baselines3 agent in the vectorized `WorldModel-v0`, with short model
rollouts started from recorded states; evaluates it on the real system (the Gymnasium id `real_env`,
the stand-in for the physical plant) if one is named; then collects `collect_episodes` real episodes
with the policy into the store (append, commit protocol), fine-tunes the world model on the grown
store and continues. The learning curve is real return against real steps used (the store's
transitions, random-policy data included). Everything is logged to MLflow; the policy is an artifact
and a Model Registry entry.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from stable_baselines3.common.base_class import BaseAlgorithm

from data_pipeline.errors import InputError
from data_pipeline.store import TrajectoryStore
from policies.behaviour import make_policy
from policies.checkpoint import (
    IterationCheckpoint,
    LoopState,
    StopSignals,
    check_agent_loadable,
    check_out_dir,
    load_agent,
    preempted,
    save_agent,
)
from policies.config import PolicyConfig
from policies.evaluation import model_return, real_return
from policies.files import info_path, load_sb3, save_sb3, weights_path
from policies.refit import refit

REAL_EVAL_SEED = 10_000  # real evaluation episodes never share a seed with collected ones


def real_steps(store_path: str) -> int:
    """Real transitions in the store: every step the policy loop has cost the real system."""
    with TrajectoryStore.open(store_path) as store:
        return int(store.num_steps - store.num_episodes)


def make_agent(cfg: PolicyConfig, venv: Any) -> BaseAlgorithm:
    """A fresh SB3 agent of `cfg.algorithm` with an MLP policy on the learned env."""
    import stable_baselines3

    algo = getattr(stable_baselines3, cfg.algorithm)
    return algo("MlpPolicy", venv, seed=cfg.seed, verbose=0, **cfg.hyperparameters)


def train_policy(cfg: PolicyConfig, resume: bool = False, trust_pickle: bool = False) -> dict[str, str]:
    """Run the (model-based) policy training loop; return the outputs `train.py policy` prints.

    `out_dir` must be new or empty, or (with `resume`) hold the run to continue; it never holds the model.
    `trust_pickle` lets `resume` load a checkpoint written before the safe format (an SB3 zip and a pickled
    replay buffer), which runs any code those files contain.
    """
    from tracking.lineage import lineage_tags
    from tracking.logger import BufferedMLflowLogger
    from tracking.runs import default_names
    from worldmodel.io import resolve_model_file

    torch.set_num_threads(cfg.torch_threads)
    if not cfg.model or not cfg.store:
        raise InputError("policy: --model and --store are required (the store the rollouts start from)")
    if cfg.iterations > 1 and not cfg.real_env:
        raise InputError("policy: iterations > 1 collects real data and needs real_env (a Gymnasium id)")
    out = Path(cfg.out_dir)
    state_file = out / "state.json"
    model_file = resolve_model_file(cfg.model)
    check_out_dir(out, [Path(cfg.model), model_file], resume)  # before anything is written
    state = LoopState(model=str(model_file))
    agent_file = out / "agent.zip"
    if resume and state_file.exists():
        check_agent_loadable(agent_file, trust_pickle)
        state = LoopState.load(state_file)
    out.mkdir(parents=True, exist_ok=True)

    names = default_names("policy", cfg.store)  # a config carries no system's name: the store does
    registered_name = names.registered_model if cfg.registered_policy_name is None else cfg.registered_policy_name
    tracker = BufferedMLflowLogger(
        experiment_name=cfg.experiment or names.experiment, run_name=f"policy-{cfg.algorithm}-s{cfg.seed}",
        run_id=state.run_id,
        tags={"twinworld.stage": "policy", "twinworld.model_uri": cfg.model, "data.store": cfg.store,
              **lineage_tags(cfg.model)})
    if state.run_id is None:
        state.run_id = tracker.run_id
        tracker.log_hyperparams({k: (json.dumps(v) if isinstance(v, dict) else v) for k, v in cfg.model_dump().items()})

    agent: BaseAlgorithm | None = None
    final_return = float("nan")
    with StopSignals() as signals:  # SIGTERM / SIGUSR1: checkpoint, then exit 128 + signal (docs/policy.md)
        for iteration in range(state.iteration, cfg.iterations):
            agent, final_return = _iteration(cfg, state, state_file, agent_file, agent, iteration, resume, tracker,
                                             trust_pickle, signals)
            resume = False

    if agent is None:  # every iteration was already done: the run finished before it was resumed
        agent = load_sb3(agent_file, trust_pickle=trust_pickle)
    policy_path = save_sb3(agent, out / "policy.zip")
    (out / "learning_curve.json").write_text(json.dumps(state.curve, indent=1))
    policy_uri = publish(policy_path, out / "learning_curve.json", tracker.run_id, registered_name)
    tracker.end_run()
    return {"policy": str(policy_path), "policy_uri": policy_uri, "real_return": f"{final_return:.1f}",
            "real_steps": str(real_steps(cfg.store)), "model": state.model, "run_id": tracker.run_id}


def publish(policy_path: Path, curve_path: Path, run_id: str, registered_name: str) -> str:
    """Log the policy (zip, weights, JSON), its learning curve and a pyfunc model (weights and JSON only) to
    the MLflow run; register it as `registered_name` unless that is empty. Returns the policy's model URI."""
    import mlflow

    from tracking.logger import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    with mlflow.start_run(run_id=run_id):
        mlflow.log_artifact(str(policy_path), artifact_path="policy")
        mlflow.log_artifact(str(weights_path(policy_path)), artifact_path="policy")
        mlflow.log_artifact(str(info_path(policy_path)), artifact_path="policy")
        mlflow.log_artifact(str(curve_path), artifact_path="policy")
        info = mlflow.pyfunc.log_model(
            name="policy_model",
            python_model=str(Path(__file__).with_name("pyfunc.py")),
            artifacts={"policy_weights": str(weights_path(policy_path)), "policy_info": str(info_path(policy_path))},
            pip_requirements=["stable-baselines3", "torch==2.13.0", "numpy", "safetensors"],
            registered_model_name=registered_name or None,
        )
    if registered_name and info.registered_model_version is not None:
        return f"models:/{registered_name}/{info.registered_model_version}"
    return info.model_uri


def _iteration(cfg: PolicyConfig, state: LoopState, state_file: Path, agent_file: Path, agent: BaseAlgorithm | None,
               iteration: int, resume: bool, tracker: Any, trust_pickle: bool, signals: StopSignals
               ) -> tuple[BaseAlgorithm, float]:
    """One loop iteration: learn in the model, evaluate, collect real episodes and refit; the agent and the
    iteration's return. A stop signal ends it at the next learned-env step or phase boundary, checkpointed."""
    from data_pipeline.record import RecordInterrupted, record
    from envs.sb3 import make_sb3_env

    t0 = time.time()
    venv = make_sb3_env(state.model, cfg.store, num_envs=cfg.num_envs, seed=cfg.seed + iteration,
                        reward_fn=cfg.reward_fn, termination_fn=cfg.termination_fn,
                        uncertainty_penalty=cfg.uncertainty_penalty, max_episode_steps=cfg.rollout_horizon)
    if agent is None and resume and info_path(agent_file).exists():
        agent = load_agent(agent_file, venv, trust_pickle=trust_pickle)
    elif agent is None:
        agent = make_agent(cfg, venv)
    else:
        agent.set_env(venv)
    done_steps = state.iteration_steps if resume else 0
    remaining = max(cfg.timesteps - done_steps, 0)
    if resume:
        print(f"[policy] resuming iteration {iteration} at learned-env step {done_steps}", flush=True)
    checkpoint = IterationCheckpoint(cfg.checkpoint_every, agent_file, state, state_file, iteration, done_steps,
                                     signals)
    if remaining:
        agent.learn(remaining, reset_num_timesteps=False, callback=[checkpoint])
    if signals.signum is not None:  # saved at the step the signal arrived, or now if learning had just ended
        if not checkpoint.stopped:
            save_agent(agent, agent_file)
            state.iteration, state.iteration_steps = iteration, cfg.timesteps
            state.save(state_file)
        raise preempted(signals.signum, state, state_file)
    state.iteration_steps = 0

    metrics = {"model_return": model_return(agent, venv, min(cfg.eval_episodes, cfg.num_envs * 4))}
    steps_used = real_steps(cfg.store)
    if cfg.real_env:
        final_return = real_return(agent, cfg.real_env, cfg.eval_episodes, seed=REAL_EVAL_SEED)
        metrics["real_return"] = final_return
    else:
        final_return = metrics["model_return"]
    metrics["real_steps"] = steps_used
    metrics["iteration_seconds"] = time.time() - t0
    tracker.log_metrics(metrics, step=iteration)
    if cfg.real_env:
        tracker.log_metrics({"real_return_vs_real_steps": final_return}, step=steps_used)
    state.curve.append({"iteration": iteration, **metrics})
    print(f"[policy] iteration {iteration}: " + ", ".join(f"{k} {v:.1f}" for k, v in metrics.items()), flush=True)
    venv.close()
    save_agent(agent, agent_file)

    if cfg.real_env and iteration < cfg.iterations - 1:
        # Collect real data with the current policy, then refit the model on the grown store.
        behaviour = make_policy(str(agent_file), agent.action_space)
        try:
            record(cfg.real_env, cfg.collect_episodes, cfg.store, policy=behaviour,
                   seed=cfg.seed * 1000 + 500 + iteration * cfg.collect_episodes, append=True,
                   progress=False).close()
            state.model = refit(state.model, cfg.store, cfg, Path(cfg.out_dir), iteration)
        except (SIGTERMException, RecordInterrupted) as err:
            # record's or Lightning's own stop on SIGTERM (they take the signal from StopSignals while they run):
            # learning is done (the collected episodes are committed), so a resume redoes only the rest
            state.iteration, state.iteration_steps = iteration, cfg.timesteps
            state.save(state_file)
            signum = err.signum if isinstance(err, RecordInterrupted) else signals.signum or signal.SIGTERM
            raise preempted(signum, state, state_file) from None
    state.iteration = iteration + 1
    state.save(state_file)
    if signals.signum is not None:  # arrived during evaluation or collection: the iteration is complete
        raise preempted(signals.signum, state, state_file)
    return agent, final_return

