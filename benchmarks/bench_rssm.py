"""RSSM imagination and training cost against the RSSM before issue 18, side by side in one run.

    OMP_NUM_THREADS=1 python benchmarks/bench_rssm.py            # small preset, 1024 envs, batch 16 x 64
    python benchmarks/bench_rssm.py --quick --no-record          # a smoke run (tiny sizes, no table rows)

The "before" model is `worldmodel/rssm.py` as of `--before` (a git revision), imported from `git show` under
another module name and given the same weights, so both run in this process on the same inputs. Measures:
ms per imagined step at `--envs` for the RSSM before and for each `uncertainty` choice now, beside the small
ensemble's (the issue's target: RSSM <= 3x the ensemble), and world-model gradient steps/s (loss, backward,
Adam) at batch `--batch` x `--window`. Pendulum-sized spaces (3 observation channels, 1 action); the weights
are untrained, which costs the same as trained ones. Records rows in BENCHMARKS.md (`## bench_rssm`).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from gymnasium import spaces

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import machine, record_rows  # noqa: E402  (benchmarks/common.py)

from data_pipeline.schema import StoreSchema  # noqa: E402
from data_pipeline.windows.batch import Batch, Normalization  # noqa: E402
from worldmodel.base import ModelBase  # noqa: E402
from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel, uncertainty_mode  # noqa: E402
from worldmodel.rssm import RSSMConfig, RSSMWorldModel  # noqa: E402

BEFORE = "b1b77f1"
"""The last commit before issue 18's RSSM work."""


def spaces_and_units() -> tuple[StoreSchema, Normalization]:
    schema = StoreSchema.from_spaces(spaces.Box(-8.0, 8.0, (3,), np.float32), spaces.Box(-2.0, 2.0, (1,), np.float32),
                                     dt=0.05)
    norm = Normalization(obs_mean=[0.0] * 3, obs_std=[1.0] * 3, obs_min=[-8.0] * 3, obs_max=[8.0] * 3,
                         action_mean=[0.0], action_std=[1.0], action_min=[-2.0], action_max=[2.0],
                         reward_mean=-5.0, reward_std=3.0, reward_min=-16.0, reward_max=0.0, num_actions=0)
    return schema, norm


def before_module(revision: str) -> ModuleType:
    """`worldmodel/rssm.py` at `revision`, imported as `rssm_before`."""
    source = subprocess.run(["git", "show", f"{revision}:worldmodel/rssm.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="bench_rssm_")) / "rssm_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("rssm_before", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["rssm_before"] = module
    spec.loader.exec_module(module)
    return module


def best_of(fn: Callable[[], None], repeats: int, rounds: int = 3) -> float:
    """Seconds per call: the best of `rounds` means over `repeats` calls (a shared CPU only adds noise)."""
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        times.append((time.perf_counter() - t0) / repeats)
    return min(times)


def step_ms(model: ModelBase, envs: int, steps: int, uncertainty: str | None) -> float:
    """ms per `model.step` at `envs` trajectories, from a state after two observed steps."""
    model.eval()
    state = model.initial_state(envs)
    obs = torch.zeros(envs, 2, 3)
    act = torch.zeros(envs, 2, 1)
    first = torch.tensor([[True, False]]).expand(envs, -1)
    with torch.inference_mode():
        state = model.observe(state, obs, act, first)
        gen = torch.Generator().manual_seed(0)
        holder = {"state": state}

        def one() -> None:
            holder["state"], _ = model.step(holder["state"], act[:, 0], gen)

        if uncertainty is None:
            return 1e3 * best_of(one, steps)
        with uncertainty_mode(model, uncertainty):  # type: ignore[arg-type]
            return 1e3 * best_of(one, steps)


def grad_steps_per_s(model: ModelBase, batch: Batch, steps: int) -> float:
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)

    def one() -> None:
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return 1.0 / best_of(one, steps)


def make_batch(b: int, t: int) -> Batch:
    gen = torch.Generator().manual_seed(0)
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    return Batch(obs=torch.randn(b, t, 3, generator=gen), action=torch.rand(b, t, 1, generator=gen) * 4 - 2,
                 reward=-torch.rand(b, t, generator=gen) * 10, terminated=torch.zeros(b, t, dtype=torch.bool),
                 is_first=is_first, is_last=torch.zeros(b, t, dtype=torch.bool))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--envs", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10, help="imagined steps and gradient steps per round")
    parser.add_argument("--before", default=BEFORE, help="git revision of the RSSM to compare against")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--no-record", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    if args.quick:
        args.preset, args.envs, args.batch, args.window, args.steps = "tiny", 8, 2, 4, 1

    schema, norm = spaces_and_units()
    torch.manual_seed(0)
    now = RSSMWorldModel(RSSMConfig.preset(args.preset), schema, norm)
    old_cls = before_module(args.before).RSSMWorldModel
    old = old_cls(now.config, schema, norm)
    old.load_state_dict(now.state_dict())
    ens = EnsembleWorldModel(EnsembleConfig.preset("small" if args.preset != "tiny" else "tiny"), schema, norm)

    step = {"RSSM before": step_ms(old, args.envs, args.steps, None)}
    for mode in ("elites", "own", "none"):
        step[f"RSSM {mode}"] = step_ms(now, args.envs, args.steps, mode)
    for mode in ("elites", "own", "none"):
        step[f"ensemble {mode}"] = step_ms(ens, args.envs, args.steps, mode)
    batch = make_batch(args.batch, args.window)
    grad_before = grad_steps_per_s(old, batch, max(1, args.steps // 2))
    grad_now = grad_steps_per_s(now, batch, max(1, args.steps // 2))

    for name, ms in step.items():
        print(f"{name:18s} {ms:8.2f} ms/step @{args.envs}")
    print(f"gradient steps/s @{args.batch}x{args.window}: before {grad_before:.2f}, now {grad_now:.2f}")
    if args.no_record:
        return
    today = date.today().isoformat()
    where = machine(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); 8 engineers shared the cores")
    command = "OMP_NUM_THREADS=1 python benchmarks/bench_rssm.py " + " ".join(sys.argv[1:])
    rows = [
        (today, f"imagined step @{args.envs}, {args.preset}, RSSM {mode} vs before", where, command,
         f"{step[f'RSSM {mode}']:.2f} ms", f"{step['RSSM before']:.2f} ms",
         f"{step['RSSM before'] / step[f'RSSM {mode}']:.2f}x faster", "")
        for mode in ("elites", "own", "none")
    ] + [
        (today, f"imagined step @{args.envs}, RSSM {mode} / ensemble {mode}", where, command,
         f"{step[f'RSSM {mode}']:.2f} ms", f"{step[f'ensemble {mode}']:.2f} ms",
         f"{step[f'RSSM {mode}'] / step[f'ensemble {mode}']:.2f}x the ensemble", "<= 3x")
        for mode in ("elites", "own", "none")
    ] + [
        (today, f"gradient steps/s @{args.batch}x{args.window}, {args.preset}, vs before", where, command,
         f"{grad_now:.2f}/s", f"{grad_before:.2f}/s", f"{grad_now / grad_before:.2f}x", ""),
    ]
    record_rows(Path(args.out), "bench_rssm", rows)


if __name__ == "__main__":
    main()
