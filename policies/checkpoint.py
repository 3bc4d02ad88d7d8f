"""Resumable policy runs: the loop's state file and the SB3 callback that checkpoints mid-iteration.

`out_dir/state.json` is the commit point of a checkpoint: the agent (`agent.zip` + `agent.json`) and
its replay buffer are written first, the state last, each atomically, so a run killed at any moment
resumes (`--resume`) from a consistent checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from data_pipeline.store.files import atomic_write
from policies.files import save_sb3


@dataclass
class LoopState:
    """Where a policy run stands (the JSON of `state.json`)."""

    model: str
    """The world model the current iteration trains in (the last refit's file)."""
    iteration: int = 0
    """Loop iterations finished."""
    iteration_steps: int = 0
    """Learned-env steps done in the current iteration at the last checkpoint."""
    run_id: str | None = None
    """The MLflow run, continued on resume."""
    curve: list[dict[str, Any]] = field(default_factory=list)
    """One row of metrics per finished iteration (the learning curve)."""

    @classmethod
    def load(cls, path: Path) -> LoopState:
        return cls(**json.loads(path.read_text()))

    def save(self, path: Path) -> None:
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(asdict(self))))


class IterationCheckpoint(BaseCallback):
    """Every `every` learned-env steps, save the agent, its replay buffer and then the loop state."""

    def __init__(self, every: int, agent_file: Path, buffer_file: Path, state: LoopState, state_file: Path,
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
            save_sb3(self.model, self.agent_file)
            if isinstance(self.model, OffPolicyAlgorithm):
                atomic_write(self.buffer_file, self.model.save_replay_buffer)
            self.state.iteration, self.state.iteration_steps = self.iteration, steps
            self.state.save(self.state_file)
        return True
