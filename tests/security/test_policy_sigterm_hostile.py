"""SIGTERM at an awkward moment of a policy run (policies/loop.py): while the loop collects real episodes,
`record` takes the signal itself (it commits the finished episodes and stops). The run then saves its
state and ends preempted (exit 143, how to resume), and `--resume` continues without relearning the
iteration. Before, the run ended with record's exception, a traceback and exit 1, its state.json still at
the last mid-learning checkpoint."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from data_pipeline.store import TrajectoryStore


@pytest.mark.slow
def test_sigterm_while_collecting_real_episodes_is_a_resumable_preemption(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import policies.loop
    from data_pipeline.record import record
    from data_pipeline.windows import normalization_for
    from policies.config import PolicyConfig
    from policies.loop import train_policy
    from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel
    from worldmodel.lightning import Preempted

    store = str(tmp_path / "p.zarr")
    record("Pendulum-v1", 3, store, seed=0, max_episode_steps=30, progress=False).close()
    with TrajectoryStore.open(store) as s:
        torch.manual_seed(0)
        EnsembleWorldModel(EnsembleConfig.preset("tiny"), s.schema,
                           normalization_for(s, np.arange(s.num_episodes))).save(str(tmp_path / "model.pt"))
        before = s.num_episodes
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    make_policy = policies.loop.make_policy

    def terminated_at_first_action(path: str, space: Any) -> Any:  # the scheduler's SIGTERM arrives mid-collection
        policy, sent = make_policy(path, space), [False]

        def act(obs: np.ndarray) -> np.ndarray:
            if not sent[0]:
                sent[0] = True
                os.kill(os.getpid(), signal.SIGTERM)
            return policy(obs)
        return act

    monkeypatch.setattr(policies.loop, "make_policy", terminated_at_first_action)
    cfg = PolicyConfig(model=str(tmp_path / "model.pt"), store=store, algorithm="PPO", timesteps=64, num_envs=2,
                       rollout_horizon=16, hyperparameters={"n_steps": 32, "batch_size": 32,
                                                            "policy_kwargs": {"net_arch": [8]}},
                       reward_fn="envs.rewards:pendulum", real_env="Pendulum-v1", eval_episodes=1, iterations=2,
                       collect_episodes=2, refit_steps=2, refit_window=8, refit_batch_size=8,
                       out_dir=str(tmp_path / "out"), registered_policy_name="")
    with pytest.raises(Preempted) as stop:
        train_policy(cfg)
    assert stop.value.signum == signal.SIGTERM and stop.value.code == 143
    state = json.loads((tmp_path / "out" / "state.json").read_text())
    assert (state["iteration"], state["iteration_steps"]) == (0, 64)  # learning was done: not redone on resume
    assert "preempted: SIGTERM in iteration 0" in capsys.readouterr().err
    with TrajectoryStore.open(store) as s:
        assert s.num_episodes >= before  # what was collected is committed, nothing else touched

    monkeypatch.setattr(policies.loop, "make_policy", make_policy)
    train_policy(cfg, resume=True)
    assert "resuming iteration 0 at learned-env step 64" in capsys.readouterr().out
    assert json.loads((tmp_path / "out" / "state.json").read_text())["iteration"] == 2
