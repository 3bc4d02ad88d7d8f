"""Resumable policy runs: the run directory's rules, the loop's state file, the agent's training state,
and the SB3 callback that checkpoints mid-iteration.

    out_dir/state.json          the commit point of a checkpoint (`LoopState`), written last
    out_dir/agent.{json,safetensors,zip}   the agent as a policy file (`policies.files`)
    out_dir/agent.train.pt      optimizer states, SAC's entropy coefficient and the step counters:
                                tensors and numbers only, read with torch.load(weights_only=True)
    out_dir/agent.buffer.npz    the replay buffer's filled rows (numpy arrays, read with allow_pickle=False)

Each file is written atomically, the state last, so a run killed at any moment resumes (`--resume`)
from a consistent checkpoint. Nothing here is unpickled, and nothing in out_dir is ever deleted: a run
starts in a new or empty directory, or resumes the one whose state.json is there.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from data_pipeline.errors import UserError
from data_pipeline.store.files import atomic_write
from policies.files import UnsafePolicyError, load_sb3, refusal, safe_files, save_sb3, weights_path
from policies.hyperparameters import PolicyFormatError

if TYPE_CHECKING:
    from stable_baselines3.common.base_class import BaseAlgorithm
    from stable_baselines3.common.buffers import ReplayBuffer
    from stable_baselines3.common.type_aliases import GymEnv

COUNTERS = ("num_timesteps", "_n_updates", "_episode_num", "_n_calls")
"""The agent's step counters a resumed run continues from (those it has; `_n_calls` is DQN's)."""
OLD_BUFFER = "replay_buffer.pkl"
"""The pickled replay buffer of runs before the safe format, read only with --trust-pickle."""


class OutDirError(UserError):
    """A policy run's out_dir would overwrite something the user did not name."""


def check_out_dir(out: Path, models: list[Path], resume: bool) -> None:
    """Refuse an out_dir that holds the world model, or files that are not a run to resume, before anything
    is written. `models` are the local paths of --model (as given and as resolved)."""
    here = out.resolve()
    for model in models:
        if model.exists() and (model.resolve() == here or here in model.resolve().parents):
            raise OutDirError(f"out_dir {out}: contains the world model {model} (--model); a policy run writes its "
                              "agent, refitted models and policy there. Choose a new directory for --out_dir")
    if out.exists() and not out.is_dir():
        raise OutDirError(f"out_dir {out}: is a file; expected a new or empty directory (or a run to --resume)")
    entries = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    listing = ", ".join(entries[:6]) + (f", … ({len(entries)} entries)" if len(entries) > 6 else "")
    if entries and not resume:
        raise OutDirError(f"out_dir {out}: not empty ({listing}); a policy run starts in a new or empty directory "
                          "and deletes nothing. Choose another --out_dir, or pass --resume to continue the run "
                          "whose state.json is there")
    if entries and not (out / "state.json").exists():
        raise OutDirError(f"out_dir {out}: nothing to resume (no state.json; it holds {listing}). Choose a new "
                          "--out_dir for a new run")


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
        """The state of a run to resume; a damaged or hand-edited file is an OutDirError naming it."""
        try:
            data = json.loads(path.read_text())
            state = cls(**data)
            if not (isinstance(state.model, str) and isinstance(state.iteration, int)
                    and isinstance(state.iteration_steps, int) and isinstance(state.curve, list)):
                raise TypeError("a field has the wrong type")
        except (ValueError, TypeError) as err:  # not JSON, not an object, unknown or missing keys, wrong types
            raise OutDirError(f"{path}: not the state of a policy run ({type(err).__name__}: {err}); expected the "
                              "state.json a run wrote (keys model, iteration, iteration_steps, run_id, curve). "
                              "Choose a new --out_dir for a new run") from None
        return state

    def save(self, path: Path) -> None:
        atomic_write(path, lambda tmp: tmp.write_text(json.dumps(asdict(self))))


def train_state_path(agent_file: Path) -> Path:
    return agent_file.with_suffix(".train.pt")


def buffer_path(agent_file: Path) -> Path:
    return agent_file.with_suffix(".buffer.npz")


def save_buffer(buffer: ReplayBuffer, path: Path) -> None:
    """The buffer's filled rows (its first dimension) as arrays; a dict observation as `observations/KEY`."""
    rows = buffer.buffer_size if buffer.full else buffer.pos
    arrays = {"pos": np.asarray(buffer.pos), "full": np.asarray(buffer.full)}
    for name, value in vars(buffer).items():
        if isinstance(value, np.ndarray):
            arrays[name] = value[:rows]
        elif isinstance(value, dict) and all(isinstance(v, np.ndarray) for v in value.values()):
            arrays.update({f"{name}/{key}": v[:rows] for key, v in value.items()})
    atomic_write(path, lambda tmp: np.savez(tmp, **arrays))  # type: ignore[arg-type]


def load_buffer(buffer: ReplayBuffer, path: Path) -> None:
    """Fill a fresh buffer (same size and env count) from `save_buffer`'s arrays."""
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            if key in ("pos", "full"):
                continue
            name, _, sub = key.partition("/")
            target = getattr(buffer, name, None)
            target = target.get(sub) if sub and isinstance(target, dict) else target
            value = data[key]
            if not isinstance(target, np.ndarray) or value.shape[1:] != target.shape[1:] or len(value) > len(target):
                expected = f"shape (≤{len(target)}, {', '.join(map(str, target.shape[1:]))})" if isinstance(
                    target, np.ndarray) else "no such array"
                raise PolicyFormatError(f"{path}: array {key!r} has shape {value.shape}; expected {expected} "
                                        "(the replay buffer of this run's agent)")
            target[: len(value)] = value
        buffer.pos, buffer.full = int(data["pos"]), bool(data["full"])


def save_agent(agent: BaseAlgorithm, agent_file: Path) -> None:
    """The agent with what continues its training: replay buffer, optimizers and counters, then the policy."""
    if isinstance(agent, OffPolicyAlgorithm) and agent.replay_buffer is not None:
        save_buffer(agent.replay_buffer, buffer_path(agent_file))
    names, variables = agent._get_torch_save_params()
    params = agent.get_parameters()
    state = {"optimizers": {k: v for k, v in params.items() if k != "policy" and k in names},
             "variables": {name: getattr(agent, name).detach().cpu() for name in variables},
             "counters": {name: int(getattr(agent, name)) for name in COUNTERS if hasattr(agent, name)}}
    atomic_write(train_state_path(agent_file), lambda tmp: torch.save(state, tmp))
    save_sb3(agent, agent_file)


def check_agent_loadable(agent_file: Path, trust_pickle: bool) -> None:
    """Refuse to resume from an agent saved as a zip only (before the safe format) unless `trust_pickle`."""
    if (agent_file.exists() or agent_file.with_suffix(".json").exists()) and not trust_pickle:
        _, weights = safe_files(agent_file)
        if weights is None:
            raise UnsafePolicyError(refusal(agent_file, weights_path(agent_file)))


def load_agent(agent_file: Path, env: GymEnv, trust_pickle: bool = False) -> BaseAlgorithm:
    """The checkpointed agent on `env`, ready to continue training (`save_agent`'s files)."""
    agent = load_sb3(agent_file, env=env, trust_pickle=trust_pickle)
    old_buffer = agent_file.with_name(OLD_BUFFER)
    if safe_files(agent_file)[1] is None:  # a zip loaded with --trust-pickle: its buffer was pickled too
        if old_buffer.exists() and isinstance(agent, OffPolicyAlgorithm):
            agent.load_replay_buffer(old_buffer)
        return agent
    state_file = train_state_path(agent_file)
    if state_file.exists():
        state = torch.load(state_file, map_location=agent.device, weights_only=True)
        names, variables = agent._get_torch_save_params()
        agent.set_parameters({k: v for k, v in state["optimizers"].items() if k in names}, exact_match=False,
                             device=agent.device)
        for name in variables:
            if name in state["variables"]:
                getattr(agent, name).data.copy_(state["variables"][name])
        for name in COUNTERS:
            if name in state["counters"] and hasattr(agent, name):
                setattr(agent, name, int(state["counters"][name]))
    if buffer_path(agent_file).exists() and isinstance(agent, OffPolicyAlgorithm) and agent.replay_buffer is not None:
        load_buffer(agent.replay_buffer, buffer_path(agent_file))
    return agent


class StopSignals:
    """While a policy run is in progress, SIGTERM and SIGUSR1 (what cluster schedulers send before preemption)
    are noted instead of ending the process, so the loop saves a resumable checkpoint at the next learned-env
    step (`IterationCheckpoint`) or phase boundary and exits with 128 + the signal (`preempted`). The previous
    handlers come back on exit. Outside the main thread (no signals there) it does nothing."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _note(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._note) for s in self.SIGNALS}
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def preempted(signum: int, state: LoopState, state_file: Path) -> SystemExit:
    """Print where the run stopped and how to resume it; the exception to raise (exit code 128 + signum, as
    `train.py fit`'s preemption: 143 for SIGTERM, 138 for SIGUSR1). `state` is already saved."""
    from worldmodel.lightning import Preempted

    print(f"preempted: {signal.Signals(signum).name} in iteration {state.iteration} at learned-env step "
          f"{state.iteration_steps}; checkpoint saved: {state_file} (run the same command with --resume to "
          "continue)", file=sys.stderr, flush=True)
    return Preempted(signum)


class IterationCheckpoint(BaseCallback):
    """Every `every` learned-env steps, save the agent (with its training state) and then the loop state; on a
    noted stop signal (`StopSignals`), save them and stop the learning (`stopped` is then True)."""

    def __init__(self, every: int, agent_file: Path, state: LoopState, state_file: Path, iteration: int,
                 done: int, signals: StopSignals | None = None) -> None:
        super().__init__()
        self.every, self.agent_file = every, agent_file
        self.state, self.state_file, self.iteration, self.done = state, state_file, iteration, done
        self.signals, self.stopped = signals, False
        self.start: int | None = None

    def _on_step(self) -> bool:
        n = self.training_env.num_envs
        if self.start is None:
            self.start = self.num_timesteps - n
        steps = self.done + self.num_timesteps - self.start
        self.stopped = self.signals is not None and self.signals.signum is not None
        if self.stopped or (self.every and steps // self.every > (steps - n) // self.every):
            save_agent(self.model, self.agent_file)
            self.state.iteration, self.state.iteration_steps = self.iteration, steps
            self.state.save(self.state_file)
        return not self.stopped
