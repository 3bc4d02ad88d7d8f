"""The physics-informed hybrid model against the default ensemble, side by side in one run (issue 15).

    python benchmarks/bench_hybrid.py                      # the recorded run
    python benchmarks/bench_hybrid.py --steps 300 --episodes 2,10 --no-record   # quick check

On Pendulum-v1 with random-policy data (episodes of 200 steps, simulated in memory; the train windows and
their statistics as the DataModule makes them), every model trains the same number of steps on the same
batches and is scored by the project's open-loop evaluation (worldmodel/evaluation.py: NRMSE at horizon 50,
context 8, 20 samples) on the same held-out episodes (seeds 10,000+). Measures (issue 15):
1 identification from 10 episodes; 2 data efficiency at 2 / 10 / 50 episodes; 3 incomplete physics (the
actuator gain frozen at half its value); 4 extrapolation (train on torques within ±1 N·m, test on ±2);
5 plausibility (imagined samples outside the declared observation bounds; the hybrid's cos² + sin² error);
7 cost (fit seconds at equal steps; imagined steps/s at 1024 envs). 6 (control) is `train.py policy`.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import date
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import record_rows  # noqa: E402  (benchmarks/common.py)

from data_pipeline.schema import StoreSchema  # noqa: E402
from data_pipeline.windows.batch import Batch, Normalization  # noqa: E402
from examples.priors.pendulum import PendulumPrior  # noqa: E402
from worldmodel.base import ModelBase  # noqa: E402
from worldmodel.evaluation import evaluate  # noqa: E402
from worldmodel.kinds import build_model, resolve_config  # noqa: E402
from worldmodel.physics import PhysicalParameter  # noqa: E402

PENDULUM = "examples.priors.pendulum:PendulumPrior"
TRUE = {"gravity": 10.0, "gain": 3.0}
COLUMNS = ("date", "machine", "command", "measure", "hybrid", "ensemble (default, medium)", "ratio", "target")


class FrozenWrongGain(PendulumPrior):
    """Incomplete physics: the actuator gain frozen at 1.5 (the truth is 3.0); the residual must supply the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.parameters["gain"] = PhysicalParameter(init=1.5, low=0.5, high=10.0, unit="1/(kg m^2)", learnable=False)


def episodes(n: int, seed: int, max_torque: float = 2.0, steps: int = 200) -> tuple[np.ndarray, ...]:
    """(n, steps, …) observations, torques and rewards of uniformly random torques within ±max_torque."""
    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(seed)
    obs_e, act_e, rew_e = [], [], []
    for ep in range(n):
        o, _ = env.reset(seed=seed + ep)
        obs, act, rew = [], [], []
        for _ in range(steps):
            a = rng.uniform(-max_torque, max_torque, 1).astype(np.float32)
            obs.append(o)
            o, r, *_ = env.step(a)
            act.append(a)
            rew.append(r)
        obs_e.append(obs)
        act_e.append(act)
        rew_e.append(rew)
    return np.array(obs_e, np.float32), np.array(act_e, np.float32), np.array(rew_e, np.float32)


def windows(data: tuple[np.ndarray, ...], length: int) -> Batch:
    """Non-overlapping windows of `length` rows, never across episodes."""
    obs, act, rew = data
    cut = obs.shape[1] // length * length

    def cut_up(x: np.ndarray) -> torch.Tensor:  # (episodes, steps, …) -> (B, length, …)
        return torch.as_tensor(x[:, :cut].reshape(-1, length, *x.shape[2:]))

    o = cut_up(obs)
    no = torch.zeros(o.shape[:2], dtype=torch.bool)
    first = no.clone()
    first[:, 0] = True
    return Batch(obs=o, action=cut_up(act), reward=cut_up(rew), terminated=no, is_first=first, is_last=no.clone())


def statistics(data: tuple[np.ndarray, ...]) -> Normalization:
    obs, act, rew = (x.reshape(-1, x.shape[-1]) if x.ndim == 3 else x.reshape(-1) for x in data)
    return Normalization(obs_mean=obs.mean(0).tolist(), obs_std=obs.std(0).tolist(), obs_min=obs.min(0).tolist(),
                         obs_max=obs.max(0).tolist(), action_mean=act.mean(0).tolist(),
                         action_std=act.std(0).tolist(), action_min=[-2.0], action_max=[2.0],
                         reward_mean=float(rew.mean()), reward_std=float(rew.std()), reward_min=float(rew.min()),
                         reward_max=float(rew.max()))


def fit(kind: str, config: dict, data: tuple[np.ndarray, ...], steps: int) -> tuple[ModelBase, float]:
    """Train `steps` AdamW steps (lr 1e-3, batch 32 windows of 16) then one validation pass; (model, seconds)."""
    env = gym.make("Pendulum-v1")
    schema = StoreSchema.from_spaces(env.observation_space, env.action_space, dt=0.05)
    torch.manual_seed(0)
    model = build_model(kind, resolve_config(kind, config), schema, statistics(data))
    train = windows(data, 16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-5)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    model.train()
    for _ in range(steps):
        i = torch.randint(train.batch_size, (32,), generator=gen)
        batch = Batch(obs=train.obs[i], action=train.action[i], reward=train.reward[i],
                      terminated=train.terminated[i], is_first=train.is_first[i], is_last=train.is_last[i])
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
    model.eval()
    with torch.no_grad():
        model.end_validation(model.loss(train)[1])  # the ensemble picks its elites, the hybrid its residual fraction
    return model, time.perf_counter() - t0


def nrmse50(model: ModelBase, test: Batch) -> float:
    return evaluate(model, test, context=8, horizons=(50,), samples=20)["nrmse/h50"]


def plausibility(model: ModelBase, test: Batch) -> tuple[float, float]:
    """Fraction of imagined samples outside the declared bounds (|cos|, |sin| ≤ 1, |θ̇| ≤ 8) over 50 steps from
    the held-out windows, and the largest |cos² + sin² - 1|."""
    from worldmodel.evaluation import rollout_samples

    pred = rollout_samples(model, test, 8, 50, 20)  # (B, S, H, 3)
    high = torch.tensor([1.0, 1.0, 8.0])
    outside = (pred.abs() > high + 1e-6).any(-1).float().mean()
    return float(outside), float((pred[..., 0] ** 2 + pred[..., 1] ** 2 - 1).abs().max())


def steps_per_second(model: ModelBase, envs: int = 1024, steps: int = 50) -> float:
    state = model.observe(model.initial_state(envs), torch.zeros(envs, 1, 3) + torch.tensor([1.0, 0.0, 0.0]),
                          torch.zeros(envs, 1, 1), torch.ones(envs, 1, dtype=torch.bool))
    action = torch.zeros(envs, 1)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.step(state, action, gen)
        t0 = time.perf_counter()
        for _ in range(steps):
            state, _ = model.step(state, action, gen)
    return envs * steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="training steps of every model")
    parser.add_argument("--episodes", default="2,10,50", help="training set sizes (episodes of 200 steps)")
    parser.add_argument("--test-episodes", type=int, default=20)
    parser.add_argument("--hybrid-preset", default="small")
    parser.add_argument("--ensemble-preset", default="medium", help="medium is the ensemble's default")
    parser.add_argument("--no-record", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sizes = [int(n) for n in args.episodes.split(",")]
    test = windows(episodes(args.test_episodes, seed=10_000), 58)
    hybrid_cfg = {"preset": args.hybrid_preset, "prior": PENDULUM}
    ensemble_cfg = {"preset": args.ensemble_preset}
    rows: list[tuple[str, str, str, str, str]] = []  # measure, hybrid, ensemble, ratio, target

    def add(measure: str, hybrid: str, ensemble: str, ratio: str, target: str) -> None:
        rows.append((measure, hybrid, ensemble, ratio, target))
        print(f"{measure:<44} hybrid {hybrid:<32} ensemble {ensemble:<14} ratio {ratio:<8} target {target}", flush=True)

    scores: dict[int, tuple[float, float]] = {}
    for n in sizes:
        data = episodes(n, seed=0)
        hybrid, t_h = fit("hybrid", hybrid_cfg, data, args.steps)
        ensemble, t_e = fit("ensemble", ensemble_cfg, data, args.steps)
        h, e = nrmse50(hybrid, test), nrmse50(ensemble, test)
        scores[n] = (h, e)
        target = "≤ 0.5x" if n < 50 else "≤ 1.0x"
        add(f"2. NRMSE@50, {n} episodes", f"{h:.3f}", f"{e:.3f}", f"{h / e:.2f}x", target)
        if n == 10 or n == sizes[0]:
            info = hybrid.describe()  # type: ignore[operator]
            errors = {k: info["parameters"][k]["mean"] / v - 1 for k, v in TRUE.items()}
            add(f"1. identification, {n} episodes", ", ".join(
                f"{k} {info['parameters'][k]['mean']:.4g} ± {info['parameters'][k]['std']:.2g} ({errors[k]:+.2%})"
                for k in TRUE) + f"; residual fraction {info['residual_fraction']:.3f}", "-",
                f"max {max(abs(x) for x in errors.values()):.2%}", "within 2%")
            out_h, inv = plausibility(hybrid, test)
            out_e, _ = plausibility(ensemble, test)
            add(f"5. outside declared bounds, {n} episodes", f"{out_h:.4f} (cos²+sin²-1 ≤ {inv:.1e})", f"{out_e:.4f}",
                "-", "0; invariant ≤ 1e-5")
            add(f"7. fit s, {args.steps} steps, {n} episodes", f"{t_h:.0f}", f"{t_e:.0f}", f"{t_h / t_e:.2f}x",
                "≤ 1.0x")
            add("7. imagined steps/s at 1024 envs", f"{steps_per_second(hybrid):,.0f}",
                f"{steps_per_second(ensemble):,.0f}", f"{steps_per_second(hybrid) / steps_per_second(ensemble):.2f}x",
                "reported")
    n = 10 if 10 in sizes else sizes[0]
    data = episodes(n, seed=0)
    wrong, _ = fit("hybrid", {**hybrid_cfg, "prior": "bench_hybrid:FrozenWrongGain"}, data, args.steps)
    w = nrmse50(wrong, test)
    h, e = scores[n]
    add(f"3. gain frozen at half, {n} episodes", f"{w:.3f} (residual fraction "
        f"{wrong.describe()['residual_fraction']:.2f})", f"{e:.3f}",  # type: ignore[operator]
        f"{w / h:.2f}x full prior, {w / e:.2f}x ens.", "≤ 1.5x full, ≤ 0.5x ens.")
    narrow = episodes(n, seed=0, max_torque=1.0)
    hybrid, _ = fit("hybrid", hybrid_cfg, narrow, args.steps)
    ensemble, _ = fit("ensemble", ensemble_cfg, narrow, args.steps)
    h, e = nrmse50(hybrid, test), nrmse50(ensemble, test)
    add(f"4. train ±1 N·m, test ±2, {n} episodes", f"{h:.3f}", f"{e:.3f}", f"{h / e:.2f}x", "≤ 0.5x")
    if not args.no_record:
        import common

        command = "`python benchmarks/bench_hybrid.py " + " ".join(sys.argv[1:]) + "`"
        where = common.machine(f"torch {torch.__version__}")
        record_rows(ROOT / "BENCHMARKS.md", "bench_hybrid",
                    [(str(date.today()), where, command, *row) for row in rows], COLUMNS)
    print(platform.node(), "done")


if __name__ == "__main__":
    main()
