"""Real-step efficiency of the model-based loop against SAC on the real Pendulum-v1 (issue 7).

    python benchmarks/bench_policy.py                      # 3 seeds, budgets 1k / 2k / 5k real steps
    python benchmarks/bench_policy.py --seeds 1 --quick    # a smoke run

Side by side, same seeds: (a) our loop — record `random_episodes` random-policy episodes, fit the
ensemble, then `train.py policy`'s loop (collect one policy episode per iteration, refit, retrain),
its real return measured after each iteration against the real steps used so far (random data
included); (b) stable-baselines3 SAC (learning rate 1e-3) trained directly on Pendulum-v1, its real
return measured at each budget. Real return = mean over 20 episodes with deterministic actions.
Writes a learning-curve PNG (docs/bench_policy_curve.png) and records rows in BENCHMARKS.md (latest first).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import record_rows, table_header, table_row  # noqa: E402  (benchmarks/common.py)

from policies import PolicyConfig, real_return  # noqa: E402
from policies.loop import train_policy  # noqa: E402


def fit_model(store: str, out: Path, steps: int, seed: int) -> str:
    """Fit the ensemble on the random-policy store (in-process, no MLflow); return the model file."""
    import lightning as L

    from data_pipeline.windows.datamodule import WindowDataModule
    from worldmodel.lightning import WorldModelModule

    dm = WindowDataModule(store=store, window=16, batch_size=32, batches_per_epoch=steps, val_batches=4,
                          sample_seed=seed)
    module = WorldModelModule(kind="ensemble", config={"preset": "small"}, lr=1e-3, seed=seed)
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=4,
                        gradient_clip_val=10.0)
    trainer.fit(module, dm)
    path = out / "model.pt"
    module.model.eval().save(str(path))
    return str(path)


def run_ours(seed: int, args: argparse.Namespace, work: Path) -> tuple[list[tuple[int, float]], float]:
    store = str(work / f"ours-{seed}.zarr")
    subprocess.run([sys.executable, "-m", "data_pipeline", "record", "--env", "Pendulum-v1", "--episodes",
                    str(args.random_episodes), "--seed", str(seed), "--out", store, "--no-progress"],
                   check=True, stdout=subprocess.DEVNULL)
    t0 = time.time()
    model = fit_model(store, work, args.fit_steps, seed)
    # The shipped config (what the demo runs), with this run's model, store, seed and budget.
    shipped = yaml.safe_load((ROOT / "configs/pendulum/policy.yaml").read_text())
    shipped.update(model=model, store=store, seed=seed, iterations=args.iterations, eval_episodes=20,
                   out_dir=str(work / f"policy-{seed}"), registered_policy_name="", experiment="bench-policy")
    if args.timesteps:
        shipped["timesteps"] = args.timesteps
    cfg = PolicyConfig(**shipped)
    train_policy(cfg)
    curve = json.loads((Path(cfg.out_dir) / "learning_curve.json").read_text())
    return [(int(c["real_steps"]), float(c["real_return"])) for c in curve], time.time() - t0


def run_sac(seed: int, budgets: list[int]) -> tuple[list[tuple[int, float]], float]:
    import gymnasium as gym
    from stable_baselines3 import SAC

    env = gym.make("Pendulum-v1")
    agent = SAC("MlpPolicy", env, learning_rate=1e-3, seed=seed, verbose=0)
    points, done, t0 = [], 0, time.time()
    for budget in budgets:
        agent.learn(budget - done, reset_num_timesteps=False)
        done = budget
        points.append((budget, real_return(agent, "Pendulum-v1", 20, seed=10_000)))
    return points, time.time() - t0


def at_budget(curve: list[tuple[int, float]], budget: int) -> float:
    """Best real return reached using at most `budget` real steps (NaN if none)."""
    values = [r for s, r in curve if s <= budget]
    return max(values) if values else float("nan")


# One row per budget and run; the last column is the run's summary, repeated on each of its rows.
COLUMNS = ("date", "machine", "command", "real steps", "ours: real return (mean ± std over seeds)", "SAC: real return",
           "ours wall s", "SAC wall s", "real steps to reach ≥ -200 (ours; SAC)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--budgets", default="1000,2000,5000")
    parser.add_argument("--random-episodes", type=int, default=5, help="random-policy episodes of 200 steps")
    parser.add_argument("--iterations", type=int, default=6,
                        help="loop iterations; each but the last collects one real episode")
    parser.add_argument("--timesteps", type=int, default=0, help="learned-env steps per iteration (0: the config's)")
    parser.add_argument("--fit-steps", type=int, default=2000)
    parser.add_argument("--refit-steps", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="tiny budgets: checks the script runs")
    parser.add_argument("--no-record", action="store_true", help="print only, record nothing")
    args = parser.parse_args()
    if args.quick:
        args.iterations, args.timesteps, args.fit_steps, args.refit_steps = 2, 1000, 100, 20
        args.budgets = "1000"
    torch.set_num_threads(1)  # small networks: one thread is fastest, and extra threads spin on a busy machine
    budgets = [int(b) for b in args.budgets.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench_policy_"))
    ours, sac = {}, {}
    for seed in range(args.seeds):
        ours[seed] = run_ours(seed, args, work)
        sac[seed] = run_sac(seed, budgets)
        print(f"seed {seed}: ours {ours[seed][0]} ({ours[seed][1]:.0f} s); SAC {sac[seed][0]} ({sac[seed][1]:.0f} s)",
              flush=True)

    rows: list[list[str]] = []
    for b in budgets:
        o = np.array([at_budget(ours[s][0], b) for s in ours])
        c = np.array([dict(sac[s][0])[b] for s in sac])
        rows.append([str(b), f"{np.nanmean(o):.0f} ± {np.nanstd(o):.0f}", f"{c.mean():.0f} ± {c.std():.0f}",
                     f"{np.mean([ours[s][1] for s in ours]):.0f}", f"{np.mean([sac[s][1] for s in sac]):.0f}"])
    # Steps each method needs to reach -200 (first point at or above it).
    def first_reach(curve: list[tuple[int, float]]) -> float:
        hits = [s for s, r in sorted(curve) if r >= -200]
        return hits[0] if hits else float("nan")

    ours_reach = [first_reach(ours[s][0]) for s in ours]
    sac_reach = [first_reach(sac[s][0]) for s in sac]
    summary = f"ours {ours_reach}; SAC {sac_reach} (SAC measured only at budgets {budgets})"

    png = ROOT / "docs" / "bench_policy_curve.png"
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for s in ours:
        x, y = zip(*ours[s][0], strict=True)
        ax.plot(x, y, "o-", color="tab:blue", alpha=0.7, label="twinworld loop" if s == 0 else None)
        x, y = zip(*sac[s][0], strict=True)
        ax.plot(x, y, "s--", color="tab:orange", alpha=0.7, label="SAC on the real env" if s == 0 else None)
    ax.axhline(-200, color="gray", lw=0.8)
    ax.set_xlabel("real steps used")
    ax.set_ylabel("real return (20 episodes)")
    ax.set_title("Pendulum-v1: real return against real steps")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=80)

    where = f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    command = (f"`python benchmarks/bench_policy.py --seeds {args.seeds} --budgets {args.budgets} --random-episodes "
               f"{args.random_episodes} --iterations {args.iterations} --timesteps {args.timesteps}`")
    lines = [[str(date.today()), where, command, *row, summary] for row in rows]
    print(table_header(COLUMNS) + "".join(table_row(line) for line in lines) + f"learning curves: {png}")
    if not args.no_record:
        record_rows(ROOT / "BENCHMARKS.md", "bench_policy", lines, COLUMNS)


if __name__ == "__main__":
    main()
