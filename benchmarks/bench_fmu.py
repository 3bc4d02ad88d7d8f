"""FMU benchmark: `FMU-v0` steps/s beside the same oscillator as a plain Gymnasium env, and a learned env at
1024 envs (an ensemble fitted to a store recorded from the FMU) against the FMU: the twin as fast stand-in.

    python benchmarks/bench_fmu.py                  # records rows in BENCHMARKS.md (latest first)
    python benchmarks/bench_fmu.py --no-record      # print only

- fmu: `gymnasium.make("FMU-v0")` over the damped oscillator FMU (fmu/oscillator.c, compiled here), one
  env in a Python loop, random actions, episodes of 200 steps with resets included;
- plain: the same system (same RK4 sub-steps, same randomization) written as a numpy `gymnasium.Env`;
- learned: `WorldModelVectorEnv` at `--num-envs` over the tiny ensemble fitted for `--fit-steps` batches on
  20 episodes recorded from the FMU (speed does not depend on how well it fits).
Each measurement is repeated `--repeats` times, interleaved, and the best kept (the machine is shared).
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import machine, record_rows  # noqa: E402  (benchmarks/common.py)

import envs  # noqa: E402, F401  (registers FMU-v0)
from data_pipeline.record import record  # noqa: E402
from data_pipeline.store import TrajectoryStore  # noqa: E402
from envs.vector_env import WorldModelVectorEnv  # noqa: E402
from fmu.oscillator import build  # noqa: E402

VERSIONS = f"torch {torch.__version__}, fmpy {__import__('fmpy').__version__}"
CONFIG = {"actions": [{"name": "u", "low": -2.0, "high": 2.0}], "observations": [{"name": "x"}, {"name": "v"}],
          "start": {"x": [-1.0, 1.0], "v": [-1.0, 1.0]}, "dt": 0.05, "max_episode_steps": 200}


class PlainOscillator(gym.Env):
    """The oscillator of fmu/oscillator.c in numpy: m x'' = -k x - c x' + u, RK4 on sub-steps of ≤ 5 ms."""

    def __init__(self, k: float = 4.0, c: float = 0.4, m: float = 1.0, dt: float = 0.05) -> None:
        self.k, self.c, self.m, self.dt = k, c, m, dt
        self.action_space = gym.spaces.Box(-2.0, 2.0, (1,), np.float32)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.state = np.zeros(2)
        self.steps = 0

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.state, self.steps = self.np_random.uniform(-1, 1, 2), 0
        return self.state.astype(np.float32), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        u = float(np.clip(action, -2.0, 2.0)[0])
        n = max(1, int(np.ceil(self.dt / 0.005)))
        h = self.dt / n

        def f(s: np.ndarray) -> np.ndarray:
            return np.array([s[1], (-self.k * s[0] - self.c * s[1] + u) / self.m])

        s = self.state
        for _ in range(n):
            k1 = f(s)
            k2 = f(s + 0.5 * h * k1)
            k3 = f(s + 0.5 * h * k2)
            k4 = f(s + h * k3)
            s = s + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        self.state, self.steps = s, self.steps + 1
        return s.astype(np.float32), 0.0, False, self.steps >= 200, {}


def rate(step: Callable[[], None], batch: int, seconds: float) -> float:
    """Steps/s (× batch) of `step` called for about `seconds` after one warm-up call."""
    step()
    n, start = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - start < seconds:
        step()
        n += 1
    return batch * n / (time.perf_counter() - start)


def single_env_stepper(env: gym.Env) -> Callable[[], None]:
    env.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-2, 2, (4096, 1)).astype(np.float32)
    k = [0]

    def step() -> None:
        _, _, term, trunc, _ = env.step(actions[k[0] % len(actions)])
        k[0] += 1
        if term or trunc:
            env.reset()

    return step


def fit_tiny_ensemble(store_path: str, steps: int, root: Path) -> Any:
    """The tiny ensemble preset trained for `steps` batches (Lightning, CPU, quiet)."""
    import lightning as L

    from data_pipeline.windows.datamodule import WindowDataModule
    from worldmodel.lightning import WorldModelModule

    dm = WindowDataModule(store_path, window=8, batch_size=32, batches_per_epoch=steps, val_batches=1)
    module = WorldModelModule(kind="ensemble", config={"preset": "tiny"})
    trainer = L.Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, num_sanity_val_steps=0, default_root_dir=str(root),
                        accelerator="cpu")
    trainer.fit(module, datamodule=dm)
    return module.model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-envs", type=int, default=1024, help="learned-env batch size")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the best is kept")
    p.add_argument("--fit-steps", type=int, default=200, help="training batches of the tiny ensemble")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--no-record", action="store_true", help="print only, record nothing")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md", help="the BENCHMARKS.md it records rows in")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        root = Path(tmp)
        fmu_path = build(root / "oscillator.fmu")
        config = root / "osc.yaml"
        config.write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
        store_path = str(root / "osc.zarr")
        record(f"fmu:{fmu_path}", 20, store_path, progress=False, env_kwargs={"config": str(config)}).close()
        model = fit_tiny_ensemble(store_path, args.fit_steps, root)
        store = TrajectoryStore.open(store_path)
        venv = WorldModelVectorEnv(args.num_envs, model, store, max_episode_steps=200, termination="never")
        venv.reset(seed=0)
        batch_actions = np.random.default_rng(0).uniform(-2, 2, (16, args.num_envs, 1)).astype(np.float32)
        k = [0]

        def learned_step() -> None:
            venv.step(batch_actions[k[0] % 16])
            k[0] += 1

        fmu_env = gym.make("FMU-v0", fmu=str(fmu_path), config=str(config))
        plain_env = gym.wrappers.OrderEnforcing(gym.wrappers.PassiveEnvChecker(PlainOscillator()))
        steppers = {"fmu": (single_env_stepper(fmu_env), 1), "plain": (single_env_stepper(plain_env), 1),
                    "learned": (learned_step, args.num_envs)}
        best = dict.fromkeys(steppers, 0.0)
        for _ in range(args.repeats):  # interleaved, so a burst of load hits all alike
            for name, (step, batch) in steppers.items():
                best[name] = max(best[name], rate(step, batch, args.seconds))
        fmu_env.close()
        venv.close()
        store.close()

    fmu_r, plain_r, learned_r = best["fmu"], best["plain"], best["learned"]
    print(f"\nmachine: {machine(VERSIONS)}; torch threads {torch.get_num_threads()}")
    print(f"FMU-v0 (oscillator FMU through fmpy), 1 env:   {fmu_r:>12,.0f} steps/s")
    print(f"plain numpy Gymnasium env, same system, 1 env: {plain_r:>12,.0f} steps/s   FMU/plain {fmu_r / plain_r:.2f}")
    print(f"learned env (tiny ensemble), {args.num_envs} envs:      {learned_r:>12,.0f} steps/s   "
          f"learned/FMU {learned_r / fmu_r:.2f}")

    if not args.no_record:
        today = dt.date.today().isoformat()
        where = f"{machine(VERSIONS)}, cpu, {torch.get_num_threads()} threads"
        cmd = "`python " + " ".join(["benchmarks/bench_fmu.py", *sys.argv[1:]]) + "`"
        rows = [
            [today, "FMU-v0 steps/s vs the same system as a plain numpy Gymnasium env, 1 env", where, cmd,
             f"{fmu_r:,.0f}", f"{plain_r:,.0f}", f"{fmu_r / plain_r:.2f}", "-"],
            [today, f"learned env steps/s (tiny ensemble fitted to the FMU's store, {args.num_envs} envs) vs FMU-v0",
             where, cmd, f"{learned_r:,.0f}", f"{fmu_r:,.0f}", f"{learned_r / fmu_r:.2f}", "-"],
        ]
        record_rows(args.out, "bench_fmu", rows)
        print(f"\nrecorded {len(rows)} rows in {args.out} (latest first)")


if __name__ == "__main__":
    main()
