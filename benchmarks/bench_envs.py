"""Learned-env benchmark: WorldModelVectorEnv steps/s against the raw model and the real simulator.

    python benchmarks/bench_envs.py                 # num_envs 1, 64, 1024; records rows in BENCHMARKS.md (latest first)
    python benchmarks/bench_envs.py --seconds 1     # quicker, noisier
    python benchmarks/bench_envs.py --no-record     # print only

Data shaped like HalfCheetah-v5 (17 obs channels, 6 actions): a small store recorded from the real
simulator. The model is the default ensemble (`EnsembleConfig()`: 7 members, 4 × 200 hidden, untrained:
speed does not depend on the weights). For each num_envs:
- env: `WorldModelVectorEnv.step` with random numpy actions (max_episode_steps 200, so autoresets from
  recorded states are included; termination "never", as HalfCheetah's), steps/s = num_envs × steps / s;
- raw: `model.step` at the same batch with the same generator, random actions already on the device;
- sim: the real `HalfCheetah-v5` stepped in a Python loop, one env, random actions.
Targets at num_envs 1024: env overhead ≤ 2× the raw forward (env/raw ≥ 0.5) and ≥ 5× the simulator.
Each measurement is repeated `--repeats` times, interleaved, and the best kept: on a shared machine
the best run is the one least disturbed by other processes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data_pipeline.record import record  # noqa: E402
from data_pipeline.store import TrajectoryStore  # noqa: E402
from data_pipeline.windows import normalization_for  # noqa: E402
from envs.vector_env import WorldModelVectorEnv  # noqa: E402
from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel  # noqa: E402

ENV_ID = "HalfCheetah-v5"

from common import machine, record_rows  # noqa: E402  (benchmarks/common.py)

VERSIONS = f"torch {torch.__version__}"


def rate(step: Callable[[], None], batch: int, seconds: float, min_steps: int = 3) -> float:
    """Steps/s (× batch) of `step` called for about `seconds` after one warm-up call."""
    step()
    n, start = 0, time.perf_counter()
    while n < min_steps or time.perf_counter() - start < seconds:
        step()
        n += 1
    return batch * n / (time.perf_counter() - start)


def sim_rate(seconds: float) -> float:
    env = gym.make(ENV_ID)
    env.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (4096, 6)).astype(np.float32)
    k = [0]

    def step() -> None:
        _, _, term, trunc, _ = env.step(actions[k[0] % len(actions)])
        k[0] += 1
        if term or trunc:
            env.reset()

    return rate(step, 1, seconds)


class Stepper:
    """The env and the raw model at one batch size and precision, stepped with pre-drawn random actions."""

    def __init__(self, model: EnsembleWorldModel, store: TrajectoryStore, n: int, precision: str) -> None:
        # HalfCheetah never terminates; the untrained head would end random episodes at every step.
        self.venv = WorldModelVectorEnv(n, model, store, max_episode_steps=200, precision=precision,
                                        termination="never")
        self.venv.reset(seed=0)
        self.model, self.n, self.bf16 = model, n, precision == "bf16-mixed"
        self.env_actions = np.random.default_rng(0).uniform(-1, 1, (16, n, 6)).astype(np.float32)
        self.raw_actions = torch.from_numpy(self.env_actions).to(model.device)
        self.state = self.venv.core.state
        self.generator = torch.Generator().manual_seed(0)
        self.k = 0

    def env_step(self) -> None:
        self.venv.step(self.env_actions[self.k % 16])
        self.k += 1

    def raw_step(self) -> None:
        with torch.inference_mode(), torch.autocast(self.model.device.type, torch.bfloat16, enabled=self.bf16):
            self.state, _ = self.model.step(self.state, self.raw_actions[self.k % 16], self.generator)
        self.k += 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-envs", type=int, nargs="+", default=[1, 64, 1024], help="batch sizes to measure")
    p.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"],
                   help="env precisions to measure (the env's default is 32-true)")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the best is kept")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="model device (cpu, cuda)")
    p.add_argument("--no-record", action="store_true", help="print only, record nothing")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md", help="the BENCHMARKS.md it records rows in")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    results: dict[tuple[str, int], tuple[float, float]] = {}
    sim = 0.0
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = str(Path(tmp) / "cheetah.zarr")
        record(ENV_ID, 4, path, max_episode_steps=100, progress=False).close()
        store = TrajectoryStore.open(path)
        torch.manual_seed(0)
        model = EnsembleWorldModel(EnsembleConfig(), store.schema, normalization_for(store, range(4)))
        model = model.to(args.device).eval()
        for precision in args.precision:
            for n in args.num_envs:
                s = Stepper(model, store, n, precision)
                env_best = raw_best = 0.0
                for _ in range(args.repeats):  # interleaved, so a burst of load hits both alike
                    raw_best = max(raw_best, rate(s.raw_step, n, args.seconds))
                    env_best = max(env_best, rate(s.env_step, n, args.seconds))
                    if n == max(args.num_envs) and precision == args.precision[0]:
                        sim = max(sim, sim_rate(args.seconds))
                results[precision, n] = (env_best, raw_best)

    print(f"\nWorldModelVectorEnv over the default ensemble, {ENV_ID}-shaped data (17 obs, 6 actions); "
          f"device {args.device}, torch threads {torch.get_num_threads()}; machine: {machine(VERSIONS)}")
    print(f"real {ENV_ID} simulator, one env in a Python loop: {sim:,.0f} steps/s\n")
    print(f"{'precision':>10} {'num_envs':>8} {'env steps/s':>13} {'raw steps/s':>13} {'overhead':>9} {'env/sim':>8}")
    for (precision, n), (env_r, raw_r) in results.items():
        print(f"{precision:>10} {n:>8} {env_r:>13,.0f} {raw_r:>13,.0f} {raw_r / env_r:>8.2f}x {env_r / sim:>7.2f}x")
    big = max(args.num_envs)
    for precision in args.precision:
        env_r, raw_r = results[precision, big]
        print(f"targets at num_envs {big}, {precision}: overhead {raw_r / env_r:.2f}x ≤ 2x: "
              f"{'met' if raw_r / env_r <= 2.0 else 'MISSED'}; env/sim {env_r / sim:.2f}x ≥ 5x: "
              f"{'met' if env_r / sim >= 5.0 else 'MISSED'}")

    if not args.no_record:
        today = dt.date.today().isoformat()
        where = f"{machine(VERSIONS)}, {args.device}, {torch.get_num_threads()} threads"
        cmd = "`python " + " ".join(["benchmarks/bench_envs.py", *sys.argv[1:]]) + "`"
        rows = []
        for (precision, n), (env_r, raw_r) in results.items():
            target = "≥ 0.5 at 1024" if n == big else "-"
            rows.append([today, f"env steps/s vs raw model.step, {precision}, num_envs {n}", where,
                         cmd, f"{env_r:,.0f}", f"{raw_r:,.0f}", f"{env_r / raw_r:.2f}", target])
        for precision in args.precision:
            env_r = results[precision, big][0]
            rows.append([today, f"env steps/s vs {ENV_ID} simulator, {precision}, num_envs {big}", where,
                         cmd, f"{env_r:,.0f}", f"{sim:,.0f}", f"{env_r / sim:.2f}", "≥ 5"])
        record_rows(args.out, "bench_envs", rows)
        print(f"\nrecorded {len(rows)} rows in {args.out} (latest first)")


if __name__ == "__main__":
    main()
