"""Scenario generation benchmark: generate.py's throughput against the raw batched forward pass.

    python benchmarks/bench_generate.py                   # full: 1,000 scenarios x 32 samples x 100 steps
    python benchmarks/bench_generate.py --scenarios 100   # reduced, quick
    python benchmarks/bench_generate.py --no-record       # print only; by default it records rows

The model is the default ensemble (`EnsembleConfig()`: 7 members, 4 x 200 hidden; untrained is fine for
speed) over a recorded Pendulum-v1 store. `generate` is the whole scenario path (resolving starts,
reading histories, assimilating, building the intervention actions, imagining, writing the Zarr store
block by block); `raw` is `model.step` in a loop over the same blocks at the same batch size
(scenarios of a block x samples), from an empty state with random actions and nothing written.
Throughput is scenario-steps/s = scenarios x samples x steps / seconds; target overhead ≤ 1.5x.
Each run records rows in BENCHMARKS.md (latest first).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing it

from data_pipeline.record import record  # noqa: E402
from data_pipeline.store import TrajectoryStore  # noqa: E402
from data_pipeline.windows import normalization_for, split_episodes  # noqa: E402
from scenarios.spec import parse_spec_text  # noqa: E402
from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel  # noqa: E402

INTERVENTIONS = 10  # factual, 8 constant torques, half gain

from common import machine, record_rows  # noqa: E402  (benchmarks/common.py)

VERSIONS = f"torch {torch.__version__}"


def spec_text(starts: int, samples: int, horizon: int, block: int) -> str:
    torques = np.linspace(-2, 2, INTERVENTIONS - 2)
    lines = [f"horizon: {horizon}", f"samples: {samples}", "seed: 0", "context: 8",
             f"block_trajectories: {block}", f"starts: [{{sample: {starts}, split: all}}]", "interventions:",
             "  factual: {}", "  half_gain: {scale: {torque: 0.5}}"]
    lines += [f"  torque_{i}: {{constant: {{torque: {u:.3f}}}}}" for i, u in enumerate(torques)]
    return "\n".join(lines) + "\n"


def bench_raw(model: EnsembleWorldModel, blocks: list[int], horizon: int) -> float:
    """Seconds for `model.step` over every block (batch = trajectories of the block) for `horizon` steps."""
    generator = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        for batch in blocks:
            state = model.initial_state(batch)
            actions = torch.rand(horizon, batch, model.action_dim, generator=generator) * 4 - 2
            for k in range(horizon):
                state, _ = model.step(state, actions[k], generator)
    return time.perf_counter() - t0


def bench_generate(model: EnsembleWorldModel, store: TrajectoryStore, text: str,
                   out: Path) -> tuple[float, float]:
    """Seconds for generate end to end, and the seconds of it spent inside `model.step`.

    The second number makes the overhead measurable within one run, so it does not depend on how
    busy a shared machine was while the raw loop ran.
    """
    import generate

    spec = parse_spec_text(text, "bench.yaml")
    inside = [0.0]
    step = model.step

    def timed_step(*args: object, **kwargs: object) -> object:
        t = time.perf_counter()
        result = step(*args, **kwargs)
        inside[0] += time.perf_counter() - t
        return result

    model.step = timed_step  # an instance attribute: imagine's self.step finds it first
    try:
        t0 = time.perf_counter()
        generate.generate(spec, model, store, out, attrs={"model": "bench"}, overwrite=True, progress=False)
        return time.perf_counter() - t0, inside[0]
    finally:
        del model.step




def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenarios", type=int, default=1000, help=f"scenarios (a multiple of {INTERVENTIONS})")
    p.add_argument("--samples", type=int, default=32, help="futures per scenario")
    p.add_argument("--horizon", type=int, default=100, help="imagined steps per future")
    p.add_argument("--block", type=int, default=4096, help="trajectories per model call (block_trajectories)")
    p.add_argument("--episodes", type=int, default=20, help="recorded Pendulum-v1 episodes (200 steps each)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md", help="the BENCHMARKS.md it records rows in")
    p.add_argument("--no-record", action="store_true", help="print only, record nothing")
    args = p.parse_args()
    if args.scenarios % INTERVENTIONS:
        p.error(f"--scenarios must be a multiple of {INTERVENTIONS} (starts x {INTERVENTIONS} interventions)")
    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="bench_generate_"))
    try:
        store = record("Pendulum-v1", args.episodes, str(workdir / "p.zarr"), progress=False)
        store.close()
        store = TrajectoryStore.open(workdir / "p.zarr")
        norm = normalization_for(store, split_episodes(store, 0)["train"])
        torch.manual_seed(0)
        model = EnsembleWorldModel(EnsembleConfig(), store.schema, norm).eval()
        per_block = max(1, args.block // args.samples)
        starts = range(0, args.scenarios, per_block)
        blocks = [min(per_block, args.scenarios - a) * args.samples for a in starts]
        text = spec_text(args.scenarios // INTERVENTIONS, args.samples, args.horizon, args.block)
        bench_raw(model, [blocks[0]], 2)  # warm up
        raw_s = bench_raw(model, blocks, args.horizon)
        gen_s, in_step_s = bench_generate(model, store, text, workdir / "scenarios.zarr")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    steps = args.scenarios * args.samples * args.horizon
    gen_rate, raw_rate = steps / gen_s, steps / raw_s
    overhead = gen_s / raw_s
    print(f"{args.scenarios} scenarios x {args.samples} samples x {args.horizon} steps = {steps:,} "
          f"scenario-steps; blocks of {per_block} scenarios ({blocks[0]} trajectories); "
          f"torch threads {torch.get_num_threads()}; machine: {machine(VERSIONS)}")
    print(f"{'path':<34} {'seconds':>9} {'scenario-steps/s':>18}")
    print(f"{'generate (end to end, Zarr out)':<34} {gen_s:>9.1f} {gen_rate:>18,.0f}")
    print(f"{'raw model.step loop':<34} {raw_s:>9.1f} {raw_rate:>18,.0f}")
    verdict = "met" if max(overhead, gen_s / in_step_s) <= 1.5 else "MISSED"
    print(f"{'  of which inside model.step':<34} {in_step_s:>9.1f}")
    print(f"overhead {overhead:.2f}x against the raw loop; {gen_s / in_step_s:.2f}x against its own "
          f"model.step time (target ≤ 1.5x: {verdict})")
    if not args.no_record:
        command = "python benchmarks/bench_generate.py" + "".join(f" {a}" for a in sys.argv[1:])
        record_rows(args.out, "bench_generate", [[dt.date.today().isoformat(), "scenario-steps/s", machine(VERSIONS),
                                f"`{command}` ({args.scenarios} x {args.samples} x {args.horizon})",
                                f"generate {gen_rate:,.0f}", f"raw model.step {raw_rate:,.0f}",
                                f"{raw_s / gen_s:.2f}x (overhead {overhead:.2f}x; {gen_s / in_step_s:.2f}x "
                                f"of its own model.step time)", "overhead ≤ 1.5x"]])
        print(f"results: {args.out}")


if __name__ == "__main__":
    main()
