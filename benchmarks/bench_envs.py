"""Learned-env benchmark: WorldModelVectorEnv steps/s against the raw model and the real simulators.

    python benchmarks/bench_envs.py                 # num_envs 1, 64, 1024; records rows in BENCHMARKS.md (latest first)
    python benchmarks/bench_envs.py --num-envs 16384 --seconds 4 --repeats 1   # the large batch alone
    python benchmarks/bench_envs.py --no-record     # print only

Data shaped like HalfCheetah-v5 (17 obs channels, 6 actions): a small store recorded from the real
simulator. The model is the default ensemble (`EnsembleConfig()`: 7 members, 5 elites, 4 × 200 hidden,
untrained: speed does not depend on the weights). For each precision, num_envs and `uncertainty`
("none": each env's own member only; "elites": every elite on every env, for their disagreement):
- env: `WorldModelVectorEnv.step` with random numpy actions (max_episode_steps 200, so autoresets from
  recorded states are included; termination "never", as HalfCheetah's), steps/s = num_envs × steps / s;
- raw: `model.step` at the same batch, uncertainty and precision, random actions already on the device;
and for each num_envs the real simulators, `HalfCheetah-v5` and `Pendulum-v1`, as Gymnasium vector envs
(`SyncVectorEnv`, and `AsyncVectorEnv` up to `--async-max` envs: one process per env) with random actions.
Targets at num_envs 1024, 32-true, uncertainty none: env ≥ 5× HalfCheetah's sync vector env and env overhead
≤ 1.1× raw `model.step` (env/raw ≥ 0.91). Each measurement is repeated `--repeats` times, interleaved, and the
best kept: on a shared machine the best run is the one least disturbed by other processes.
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
from typing import cast

import gymnasium as gym
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from data_pipeline.record import record  # noqa: E402
from data_pipeline.store import TrajectoryStore  # noqa: E402
from data_pipeline.windows import normalization_for  # noqa: E402
from envs.core import Precision  # noqa: E402
from envs.vector_env import WorldModelVectorEnv  # noqa: E402
from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel, Uncertainty, uncertainty_mode  # noqa: E402

ENV_ID = "HalfCheetah-v5"
SIMS = ("HalfCheetah-v5", "Pendulum-v1")
UNCERTAINTIES = ("none", "elites")

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


class SimStepper:
    """A real simulator as a Gymnasium vector env (Gymnasium's own autoreset), stepped with random actions."""

    def __init__(self, env_id: str, n: int, mode: str) -> None:
        self.venv = gym.make_vec(env_id, num_envs=n, vectorization_mode=mode)
        self.venv.reset(seed=0)
        self.venv.action_space.seed(0)
        self.actions = [self.venv.action_space.sample() for _ in range(16)]
        self.k = 0

    def step(self) -> None:
        self.venv.step(self.actions[self.k % 16])
        self.k += 1


class Stepper:
    """The env and the raw model at one batch size and precision, stepped with pre-drawn random actions."""

    def __init__(self, model: EnsembleWorldModel, store: TrajectoryStore, n: int, precision: str,
                 uncertainty: str) -> None:
        # HalfCheetah never terminates; the untrained head would end random episodes at every step.
        self.venv = WorldModelVectorEnv(n, model, store, max_episode_steps=200, termination="never",
                                        precision=cast(Precision, precision),
                                        uncertainty=cast(Uncertainty, uncertainty))
        self.uncertainty = uncertainty
        self.venv.reset(seed=0)
        self.model, self.n, self.bf16 = model, n, precision == "bf16-mixed"
        self.env_actions = np.random.default_rng(0).uniform(-1, 1, (16, n, 6)).astype(np.float32)
        self.raw_actions = torch.from_numpy(self.env_actions).to(model.device)
        assert self.venv.core.state is not None  # reset above
        self.state = self.venv.core.state
        self.generator = torch.Generator().manual_seed(0)
        self.k = 0

    def env_step(self) -> None:
        self.venv.step(self.env_actions[self.k % 16])
        self.k += 1

    def raw_step(self) -> None:
        with torch.inference_mode(), torch.autocast(self.model.device.type, torch.bfloat16, enabled=self.bf16), \
                uncertainty_mode(self.model, cast(Uncertainty, self.uncertainty)):
            self.state, _ = self.model.step(self.state, self.raw_actions[self.k % 16], self.generator)
        self.k += 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-envs", type=int, nargs="+", default=[1, 64, 1024], help="batch sizes to measure")
    p.add_argument("--precision", nargs="+", default=["32-true", "bf16-mixed"],
                   help="env precisions to measure (the env's default is 32-true)")
    p.add_argument("--uncertainty", nargs="+", default=list(UNCERTAINTIES), help="ensemble uncertainty choices")
    p.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the best is kept")
    p.add_argument("--async-max", type=int, default=8, help="largest num_envs for AsyncVectorEnv (a process per env)")
    p.add_argument("--sim-max", type=int, default=1024,
                   help="largest num_envs for the real simulators (a MuJoCo model per env; steps/s flat beyond)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch CPU threads")
    p.add_argument("--device", default="cpu", help="model device (cpu, cuda)")
    p.add_argument("--note", default="", help="appended to the machine cell (e.g. who else shared it)")
    p.add_argument("--no-record", action="store_true", help="print only, record nothing")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md", help="the BENCHMARKS.md it records rows in")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    results: dict[tuple[str, int, str], tuple[float, float]] = {}  # (precision, n, uncertainty) -> env, raw
    sims: dict[tuple[str, str, int], float] = {}  # (env id, sync|async, n) -> steps/s
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = str(Path(tmp) / "cheetah.zarr")
        record(ENV_ID, 4, path, max_episode_steps=100, progress=False).close()
        store = TrajectoryStore.open(path)
        torch.manual_seed(0)
        model = EnsembleWorldModel(EnsembleConfig(), store.schema, normalization_for(store, range(4)))
        model = model.to(args.device).eval()
        for n in args.num_envs:
            modes = [] if n > args.sim_max else ["sync"] + (["async"] if n <= args.async_max else [])
            sim_steppers = {(env_id, mode): SimStepper(env_id, n, mode) for env_id in SIMS for mode in modes}
            steppers = {(precision, u): Stepper(model, store, n, precision, u)
                        for precision in args.precision for u in args.uncertainty}
            for _ in range(args.repeats):  # interleaved, so a burst of load hits all alike
                for key, s in steppers.items():
                    raw = rate(s.raw_step, n, args.seconds)
                    env = rate(s.env_step, n, args.seconds)
                    old = results.get((key[0], n, key[1]), (0.0, 0.0))
                    results[key[0], n, key[1]] = (max(old[0], env), max(old[1], raw))
                for (env_id, mode), sim in sim_steppers.items():
                    sims[env_id, mode, n] = max(sims.get((env_id, mode, n), 0.0), rate(sim.step, n, args.seconds))
            for sim in sim_steppers.values():
                sim.venv.close()

    where = f"{machine(VERSIONS)}, {args.device}, {torch.get_num_threads()} threads{args.note}"
    print(f"\nWorldModelVectorEnv over the default ensemble, {ENV_ID}-shaped data (17 obs, 6 actions); {where}")
    for (env_id, mode, n), r in sims.items():
        print(f"real {env_id}, gymnasium {mode} vector env, num_envs {n}: {r:,.0f} steps/s")
    print(f"\n{'precision':>10} {'num_envs':>8} {'uncertainty':>11} {'env steps/s':>13} {'raw steps/s':>13} "
          f"{'overhead':>9} {'env/cheetah':>11} {'env/pendulum':>12}")
    for (precision, n, u), (env_r, raw_r) in results.items():
        cheetah, pendulum = sims.get((SIMS[0], "sync", n), float("nan")), sims.get((SIMS[1], "sync", n), float("nan"))
        print(f"{precision:>10} {n:>8} {u:>11} {env_r:>13,.0f} {raw_r:>13,.0f} {raw_r / env_r:>8.2f}x "
              f"{env_r / cheetah:>10.2f}x {env_r / pendulum:>11.2f}x")
    target = ("32-true", 1024, "none")
    if target in results and (ENV_ID, "sync", 1024) in sims:
        env_r, raw_r = results[target]
        cheetah_r = sims[ENV_ID, "sync", 1024]
        print(f"targets at num_envs 1024, 32-true, uncertainty none: overhead {raw_r / env_r:.2f}x ≤ 1.1x: "
              f"{'met' if raw_r / env_r <= 1.1 else 'MISSED'}; env/HalfCheetah {env_r / cheetah_r:.2f}x ≥ 5x: "
              f"{'met' if env_r / cheetah_r >= 5.0 else 'MISSED'}")

    if not args.no_record:
        today = dt.date.today().isoformat()
        cmd = "`python " + " ".join(["benchmarks/bench_envs.py", *sys.argv[1:]]) + "`"
        rows = []
        for (precision, n, u), (env_r, raw_r) in results.items():
            goal = "≥ 0.91" if (precision, n, u) == target else "-"
            rows.append([today, f"env steps/s vs raw model.step, {precision}, num_envs {n}, uncertainty {u}", where,
                         cmd, f"{env_r:,.0f}", f"{raw_r:,.0f}", f"{env_r / raw_r:.2f}", goal])
        for (precision, n, u), (env_r, _) in results.items():
            for env_id in SIMS if (SIMS[0], "sync", n) in sims else ():
                goal = "≥ 5" if (precision, n, u) == target and env_id == ENV_ID else "-"
                rows.append([today, f"env steps/s vs {env_id} (gymnasium sync vector env), {precision}, num_envs {n}, "
                             f"uncertainty {u}", where, cmd, f"{env_r:,.0f}", f"{sims[env_id, 'sync', n]:,.0f}",
                             f"{env_r / sims[env_id, 'sync', n]:.2f}", goal])
        for (env_id, mode, n), r in sims.items():
            if mode == "async":
                rows.append([today, f"{env_id} gymnasium async vector env vs sync, num_envs {n}", where, cmd,
                             f"{r:,.0f}", f"{sims[env_id, 'sync', n]:,.0f}", f"{r / sims[env_id, 'sync', n]:.2f}",
                             "(information)"])
        record_rows(args.out, "bench_envs", rows)
        print(f"\nrecorded {len(rows)} rows in {args.out} (latest first)")


if __name__ == "__main__":
    main()
