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
from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel, Uncertainty, uncertainty_mode  # noqa: E402
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


def interleaved(fns: dict[str, Callable[[], None]], repeats: int, rounds: int) -> dict[str, float]:
    """Seconds per call of each function: the best over `rounds` of the mean over `repeats` calls. The rounds
    take the functions in turn, so a load that comes and goes on a shared CPU falls on all of them alike."""
    for fn in fns.values():
        fn()  # warm-up
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(repeats):
                fn()
            best[name] = min(best[name], (time.perf_counter() - t0) / repeats)
    return best


def stepper(model: ModelBase, envs: int, uncertainty: Uncertainty) -> Callable[[], None]:
    """One imagined step of `envs` trajectories per call, continuing from a state after two observed steps
    (`uncertainty` is ignored by a model without the choice, as the RSSM before)."""
    model.eval()
    obs = torch.zeros(envs, 2, 3)
    act = torch.zeros(envs, 2, 1)
    first = torch.tensor([[True, False]]).expand(envs, -1)
    with torch.inference_mode():
        holder = {"state": model.observe(model.initial_state(envs), obs, act, first)}
    gen = torch.Generator().manual_seed(0)

    def one() -> None:
        with torch.inference_mode(), uncertainty_mode(model, uncertainty):
            holder["state"], _ = model.step(holder["state"], act[:, 0], gen)

    return one


def trainer(model: ModelBase, batch: Batch) -> Callable[[], None]:
    """One gradient step (loss, backward, Adam) per call."""
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-4)

    def one() -> None:
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return one


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
    parser.add_argument("--steps", type=int, default=8,
                        help="imagined steps per round (a quarter as many gradient steps)")
    parser.add_argument("--rounds", type=int, default=4, help="rounds taking the variants in turn; the best counts")
    parser.add_argument("--before", default=BEFORE, help="git revision of the RSSM to compare against")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--no-record", action="store_true", help="print only; leave BENCHMARKS.md alone")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    args = parser.parse_args()
    if args.quick:
        args.preset, args.envs, args.batch, args.window, args.steps, args.rounds = "tiny", 8, 2, 4, 1, 1

    schema, norm = spaces_and_units()
    torch.manual_seed(0)
    now = RSSMWorldModel(RSSMConfig.preset(args.preset), schema, norm)
    old_cls = before_module(args.before).RSSMWorldModel
    old = old_cls(now.config, schema, norm)
    old.load_state_dict(now.state_dict())
    ens = EnsembleWorldModel(EnsembleConfig.preset("small" if args.preset != "tiny" else "tiny"), schema, norm)

    modes: tuple[Uncertainty, ...] = ("elites", "own", "none")
    steppers = {"RSSM before": stepper(old, args.envs, "elites")}
    steppers |= {f"RSSM {mode}": stepper(now, args.envs, mode) for mode in modes}
    steppers |= {f"ensemble {mode}": stepper(ens, args.envs, mode) for mode in modes}
    step = {name: 1e3 * s for name, s in interleaved(steppers, args.steps, args.rounds).items()}
    batch = make_batch(args.batch, args.window)
    grad = interleaved({"before": trainer(old, batch), "now": trainer(now, batch)}, max(1, args.steps // 4),
                       args.rounds)
    grad_before, grad_now = 1.0 / grad["before"], 1.0 / grad["now"]

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
        for mode in modes
    ] + [
        (today, f"imagined step @{args.envs}, RSSM {mode} / ensemble {mode}", where, command,
         f"{step[f'RSSM {mode}']:.2f} ms", f"{step[f'ensemble {mode}']:.2f} ms",
         f"{step[f'RSSM {mode}'] / step[f'ensemble {mode}']:.2f}x the ensemble", "<= 3x")
        for mode in modes
    ] + [
        (today, f"gradient steps/s @{args.batch}x{args.window}, {args.preset}, vs before", where, command,
         f"{grad_now:.2f}/s", f"{grad_before:.2f}/s", f"{grad_now / grad_before:.2f}x", ""),
    ]
    record_rows(Path(args.out), "bench_rssm", rows)


if __name__ == "__main__":
    main()
