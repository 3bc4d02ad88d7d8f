"""World-model quality and training throughput, side by side in one run (issues 3 and 4).

    python benchmarks/bench_models.py                       # full: 250 Pendulum episodes (50k steps)
    python benchmarks/bench_models.py --episodes 20 --steps 200 --models ensemble   # quick check

For each model: train on the train split of a random-policy Pendulum-v1 store, then open-loop
evaluation on held-out test episodes (normalized RMSE at horizons 1..50 against persistence and a
ridge linear model, 90% interval coverage, CRPS), the cost of one imagined step at batch 1024, and
training throughput (windows/s) from the store-backed DataModule against the same windows held as
in-memory tensors. Prints a table and records rows in BENCHMARKS.md (latest first).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common import record_rows, table_header, table_row  # noqa: E402  (benchmarks/common.py)

from data_pipeline.windows.datamodule import WindowDataModule  # noqa: E402
from tracking.publish import evaluate_split  # noqa: E402
from worldmodel.evaluation import format_table  # noqa: E402
from worldmodel.lightning import WorldModelModule, build_model  # noqa: E402

WINDOWS = {"ensemble": 16, "rssm": 50, "diffusion": 16}
BATCH = {"ensemble": 32, "rssm": 16, "diffusion": 32}
LR = {"ensemble": 1e-3, "rssm": 3e-4, "diffusion": 3e-4}


class ListLoader:
    """The same batches as the DataModule produced, held in memory (the in-memory baseline)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):  # noqa: ANN204
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def train(
    kind: str, store: str, steps: int, preset: str, seed: int = 0
) -> tuple[WorldModelModule, WindowDataModule, float]:
    dm = WindowDataModule(store=store, window=WINDOWS[kind], batch_size=BATCH[kind], batches_per_epoch=steps,
                          val_batches=4)
    module = WorldModelModule(kind=kind, config={"preset": preset}, lr=LR[kind], seed=seed)
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=4,
                        gradient_clip_val=10.0 if kind != "rssm" else 100.0)
    t0 = time.perf_counter()
    trainer.fit(module, dm)
    return module, dm, time.perf_counter() - t0


def throughput(kind: str, store: str, steps: int, preset: str) -> tuple[float, float]:
    """Windows/s training from the store-backed loader vs the same windows as in-memory tensors."""
    dm = WindowDataModule(store=store, window=WINDOWS[kind], batch_size=BATCH[kind], batches_per_epoch=steps)
    batches = list(dm.train_dataloader())
    rates = []
    for loader in (dm.train_dataloader(), ListLoader(batches)):
        module = WorldModelModule(kind=kind, config={"preset": preset}, lr=LR[kind])
        # Built here from the store's schema, so the module needs no datamodule (configure_model skips).
        module.model = build_model(kind, module.model_config, dm.schema, dm.normalization)
        trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, limit_val_batches=0)
        t0 = time.perf_counter()
        trainer.fit(module, train_dataloaders=loader)
        rates.append(steps * BATCH[kind] / (time.perf_counter() - t0))
    return rates[0], rates[1]


def step_cost(module: WorldModelModule, batch: int = 1024, steps: int = 20) -> float:
    """Seconds per imagined step at `batch`."""
    model = module.model.eval()
    obs_shape = (batch, model.obs_dim)
    state = model.initial_state(batch)
    obs = torch.zeros(obs_shape)[:, None].expand(-1, 2, -1) + model.obs_mean
    act = torch.zeros(batch, 2, dtype=torch.long) if model.discrete else torch.zeros(batch, 2, model.schema.action_dim)
    first = torch.zeros(batch, 2, dtype=torch.bool)
    first[:, 0] = True
    with torch.no_grad():
        state = model.observe(state, obs, act, first)
        a = act[:, 0]
        g = torch.Generator().manual_seed(0)
        model.step(state, a, g)
        t0 = time.perf_counter()
        for _ in range(steps):
            state, _ = model.step(state, a, g)
        return (time.perf_counter() - t0) / steps


# One row per model and run: the quality and cost columns differ from the other benchmarks' tables.
COLUMNS = ("date", "machine", "command", "model", "nRMSE h1", "h10", "h50", "persistence h50", "linear h50",
           "h50 / persistence", "h50 / linear", "cov90 h10", "cov90 h50", "CRPS h10", "ms/step @1024",
           "store / in-memory windows/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", default="/tmp/bench_models_pendulum.zarr")
    parser.add_argument("--episodes", type=int, default=250, help="Pendulum episodes of 200 steps (250 = 50k steps)")
    parser.add_argument("--models", default="ensemble,rssm,diffusion")
    parser.add_argument("--steps", type=int, default=3000, help="training steps per model")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--throughput-steps", type=int, default=200)
    parser.add_argument("--no-record", action="store_true", help="print only, record nothing")
    args = parser.parse_args()
    torch.set_num_threads(1)  # small models: one thread is fastest on 2 shared cores
    if not (Path(args.store) / "zarr.json").exists():
        subprocess.run([sys.executable, "-m", "data_pipeline", "record", "--env", "Pendulum-v1", "--episodes",
                        str(args.episodes), "--seed", "0", "--out", args.store, "--no-progress"], check=True)
    horizons = (1, 5, 10, 25, 50)
    rows = []
    for kind in args.models.split(","):
        try:
            module, dm, seconds = train(kind, args.store, args.steps, args.preset)
        except ImportError as err:
            print(f"{kind}: not available ({err})")
            continue
        metrics = evaluate_split(module.model, dm, "test", context=8, horizons=horizons, samples=20, max_windows=256)
        cost = step_cost(module)
        store_rate, memory_rate = throughput(kind, args.store, args.throughput_steps, args.preset)
        print(f"\n== {kind} ({args.preset}, {args.steps} steps, {seconds:.0f} s) ==")
        print(format_table(metrics, horizons))
        print(f"imagined step at batch 1024: {cost * 1e3:.2f} ms")
        print(f"training windows/s: store {store_rate:.0f}, in-memory {memory_rate:.0f}, "
              f"ratio {store_rate / memory_rate:.2f}")
        rows.append((kind, metrics, cost, store_rate, memory_rate, seconds))

    if not rows:
        return
    where = f"{platform.machine()}, {torch.get_num_threads()} threads, CPU"
    command = (f"`python benchmarks/bench_models.py --episodes {args.episodes} --steps {args.steps} "
               f"--preset {args.preset} --models {args.models}`")
    lines = [[str(date.today()), where, command, kind, f"{m['nrmse/h1']:.3f}", f"{m['nrmse/h10']:.3f}",
              f"{m['nrmse/h50']:.3f}", f"{m['persistence_nrmse/h50']:.3f}", f"{m['linear_nrmse/h50']:.3f}",
              f"{m['nrmse/h50'] / m['persistence_nrmse/h50']:.2f}", f"{m['nrmse/h50'] / m['linear_nrmse/h50']:.2f}",
              f"{m.get('coverage90/h10', float('nan')):.2f}", f"{m.get('coverage90/h50', float('nan')):.2f}",
              f"{m.get('crps/h10', float('nan')):.3f}", f"{cost * 1e3:.2f}", f"{sr:.0f} / {mr:.0f} = {sr / mr:.2f}"]
             for kind, m, cost, sr, mr, _ in rows]
    print(table_header(COLUMNS) + "".join(table_row(line) for line in lines))
    if not args.no_record:
        record_rows(ROOT / "BENCHMARKS.md", "bench_models", lines, COLUMNS)


if __name__ == "__main__":
    main()
