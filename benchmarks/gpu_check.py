"""GPU check: train every world model in fp32 and bf16-mixed, step the vector env, run the scenario generator.

    python benchmarks/gpu_check.py                       # on a CUDA machine: under 5 minutes
    python benchmarks/gpu_check.py --record BENCHMARKS.md   # also records rows there (latest first)
    python benchmarks/gpu_check.py --cpu-smoke           # reduced sizes on CPU (under 2 minutes): the script works

Records a Pendulum-v1 store, then measures on one device:

- training: each model (ensemble, rssm, diffusion if importable) with its configs/pendulum/<model>.yaml
  (preset, window, batch size), for a fixed number of optimizer steps after a few warm-up steps, in
  `32-true` and `bf16-mixed` precision, through the same Lightning module and window DataModule that
  `train.py fit` uses (no tracking, no checkpoints): windows/s;
- the vector env `WorldModel-v0` (envs.vector_env) on the trained ensemble at num_envs 1, 1024 and 16384, in
  `32-true` and `bf16-mixed`, with `uncertainty` "none" (each env's own member only, the env default's cost)
  and "elites" (every elite on every env, as the MOPO penalty needs): env-steps/s (num_envs x steps /
  seconds, random actions, autoreset included);
- the scenario generator (`generate.generate`, end to end with the Zarr output) on the trained ensemble:
  scenario-steps/s (scenarios x samples x horizon / seconds);

and prints one table with throughput and peak GPU memory (torch.cuda.max_memory_allocated per row).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import platform
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing it

from common import record_rows  # noqa: E402  (benchmarks/common.py)

# One row per measurement of a run, with the table's columns plus when, where and how.
COLUMNS = ("date", "machine", "command", "component", "config", "precision", "work", "seconds", "throughput", "unit",
           "peak GPU MiB")


@dataclass
class Sizes:
    """How much work each measurement does (full GPU run or CPU smoke run)."""

    episodes: int
    train_steps: int
    warmup_steps: int
    preset: str | None  # None: the config's preset
    batch_scale: float
    num_envs: tuple[int, ...]
    env_steps: int
    scenarios: int  # multiple of 10 (starts x 10 interventions)
    samples: int
    horizon: int


GPU = Sizes(episodes=40, train_steps=200, warmup_steps=10, preset=None, batch_scale=1.0,
            num_envs=(1, 1024, 16384), env_steps=100, scenarios=200, samples=32, horizon=50)
CPU_SMOKE = Sizes(episodes=6, train_steps=6, warmup_steps=2, preset="tiny", batch_scale=0.25,
                  num_envs=(1, 64, 256), env_steps=10, scenarios=20, samples=4, horizon=10)


@dataclass
class Row:
    component: str
    config: str
    precision: str
    work: str
    seconds: float
    throughput: float
    unit: str
    peak_mib: float | None


def models() -> list[str]:
    """The model kinds whose code is importable here (diffusion needs diffusers)."""
    kinds = ["ensemble", "rssm"]
    if importlib.util.find_spec("diffusers") is not None and (ROOT / "worldmodel" / "diffusion.py").exists():
        kinds.append("diffusion")
    return kinds


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------- training
class _StepClock:
    """A Lightning callback timing the optimizer steps after `warmup` (synchronizing the device)."""

    def __init__(self, warmup: int, device: torch.device) -> None:
        import lightning as L

        clock = self

        class Callback(L.Callback):
            def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
                if trainer.global_step == warmup:
                    sync(device)
                    reset_peak(device)
                    clock.start = time.perf_counter()

            def on_train_end(self, trainer: Any, *args: Any) -> None:
                sync(device)
                clock.end = time.perf_counter()

        self.callback = Callback()
        self.start = self.end = 0.0


def train_one(kind: str, precision: str, store: str, sizes: Sizes, device: torch.device) -> tuple[Row, Any]:
    import lightning as L

    from data_pipeline.windows.datamodule import WindowDataModule
    from worldmodel.lightning import WorldModelModule

    cfg = yaml.safe_load((ROOT / "configs" / "pendulum" / f"{kind}.yaml").read_text())
    model_cfg = dict(cfg["model"].get("config") or {})
    if sizes.preset is not None:
        model_cfg["preset"] = sizes.preset
    batch = max(2, round(cfg["data"]["batch_size"] * sizes.batch_scale))
    window = int(cfg["data"]["window"])
    steps = sizes.warmup_steps + sizes.train_steps
    dm = WindowDataModule(store, window=window, batch_size=batch, batches_per_epoch=steps, val_batches=1)
    module = WorldModelModule(kind=cast(Any, kind), config=model_cfg, lr=float(cfg["model"]["lr"]))
    clock = _StepClock(sizes.warmup_steps, device)
    trainer = L.Trainer(accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                        precision=cast(Any, precision),
                        max_steps=steps, max_epochs=1, limit_val_batches=0, num_sanity_val_steps=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        gradient_clip_val=float(cfg["trainer"].get("gradient_clip_val") or 0) or None,
                        callbacks=[clock.callback], default_root_dir=tempfile.gettempdir())
    reset_peak(device)
    trainer.fit(module, datamodule=dm)
    seconds = clock.end - clock.start
    windows = sizes.train_steps * batch
    name = f"{kind} {model_cfg.get('preset', 'default')} (B={batch}, T={window})"
    row = Row("train", name, precision, f"{sizes.train_steps} steps", seconds, windows / seconds, "windows/s",
              peak_mib(device))
    assert module.model is not None  # built by fit
    return row, module.model.eval().to(device)


# ---------------------------------------------------------------------------------------------- vector env
def vector_env(model: Any, store: str, num_envs: int, steps: int, device: torch.device, precision: str = "32-true",
               uncertainty: str = "none") -> Row:
    from envs.core import Precision
    from envs.vector_env import WorldModelVectorEnv
    from worldmodel.ensemble import Uncertainty

    env = WorldModelVectorEnv(num_envs=num_envs, model=model, store=store, device=str(device),
                              max_episode_steps=200, precision=cast(Precision, precision),
                              uncertainty=cast(Uncertainty, uncertainty))
    env.action_space.seed(0)
    env.reset(seed=0)
    actions = [env.action_space.sample() for _ in range(steps + 2)]
    env.step(actions[0])  # warm-up: first model call, allocations
    env.step(actions[1])
    reset_peak(device)
    t0 = time.perf_counter()
    for k in range(steps):
        env.step(actions[k + 2])
    sync(device)
    seconds = time.perf_counter() - t0
    env.close()
    return Row("vector env", f"WorldModel-v0 ensemble, num_envs={num_envs}, uncertainty {uncertainty}", precision,
               f"{steps} steps", seconds, num_envs * steps / seconds, "env-steps/s", peak_mib(device))


# ------------------------------------------------------------------------------------------- generator
def scenarios(model: Any, store_path: str, sizes: Sizes, workdir: Path, device: torch.device) -> Row:
    import generate
    from data_pipeline.store import TrajectoryStore
    from scenarios.spec import parse_spec_text

    torques = np.linspace(-2, 2, 8)
    lines = [f"horizon: {sizes.horizon}", f"samples: {sizes.samples}", "seed: 0", "context: 8",
             f"starts: [{{sample: {sizes.scenarios // 10}, split: all}}]", "interventions:",
             "  factual: {}", "  half_gain: {scale: {torque: 0.5}}"]
    lines += [f"  torque_{i}: {{constant: {{torque: {u:.3f}}}}}" for i, u in enumerate(torques)]
    spec = parse_spec_text("\n".join(lines) + "\n", "gpu_check.yaml")
    store = TrajectoryStore.open(store_path)
    small = parse_spec_text("\n".join(lines).replace(f"sample: {sizes.scenarios // 10}", "sample: 1") + "\n", "w.yaml")
    generate.generate(small, model, store, workdir / "warmup.zarr", attrs={}, overwrite=True, progress=False)
    reset_peak(device)
    t0 = time.perf_counter()
    generate.generate(spec, model, store, workdir / "scenarios.zarr", attrs={}, overwrite=True, progress=False)
    sync(device)
    seconds = time.perf_counter() - t0
    steps = sizes.scenarios * sizes.samples * sizes.horizon
    return Row("scenario generator", f"ensemble, {sizes.scenarios} scenarios x {sizes.samples} samples",
               "32-true", f"horizon {sizes.horizon}", seconds, steps / seconds, "scenario-steps/s", peak_mib(device))


# ------------------------------------------------------------------------------------------------- main
def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"CPU {cpu}"


def table(rows: list[Row]) -> str:
    head = f"| {'component':<18} | {'config':<56} | {'precision':<10} | {'work':<12} | {'seconds':>8} | " \
           f"{'throughput':>12} | {'unit':<16} | {'peak GPU MiB':>12} |"
    lines = [head, "|" + "|".join("-" * (len(c) + 0) for c in head.split("|")[1:-1]) + "|"]
    for r in rows:
        peak = f"{r.peak_mib:,.0f}" if r.peak_mib is not None else "-"
        lines.append(f"| {r.component:<18} | {r.config:<56} | {r.precision:<10} | {r.work:<12} | {r.seconds:>8.2f} | "
                     f"{r.throughput:>12,.0f} | {r.unit:<16} | {peak:>12} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Row]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu-smoke", action="store_true", help="reduced sizes on CPU: checks the script runs")
    p.add_argument("--record", type=Path, default=None, metavar="MD",
                   help="records rows in this BENCHMARKS.md (latest first)")
    p.add_argument("--only", default=None, help="comma-separated subset: train,env,generate")
    args = p.parse_args(argv)
    if args.cpu_smoke:
        device, sizes = torch.device("cpu"), CPU_SMOKE
    elif torch.cuda.is_available():
        device, sizes = torch.device("cuda"), GPU
    else:
        p.error("no CUDA device: run on a GPU machine, or pass --cpu-smoke")
    parts = set((args.only or "train,env,generate").split(","))
    warnings.filterwarnings("ignore")
    import logging

    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.ERROR)  # no per-Trainer banners between the rows
    torch.manual_seed(0)
    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    rows: list[Row] = []
    try:
        from data_pipeline.record import record

        store = str(workdir / "p.zarr")
        record("Pendulum-v1", sizes.episodes, store, seed=0, progress=False).close()
        ensemble = None
        kinds = models() if "train" in parts else ["ensemble"]
        for kind in kinds:
            for precision in ("32-true", "bf16-mixed") if "train" in parts else ("32-true",):
                row, model = train_one(kind, precision, store, sizes, device)
                if "train" in parts:
                    rows.append(row)
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
                if kind == "ensemble" and precision == "32-true":
                    ensemble = model
        if "env" in parts:
            for precision in ("32-true", "bf16-mixed"):
                for uncertainty in ("none", "elites"):
                    for n in sizes.num_envs:
                        rows.append(vector_env(ensemble, store, n, sizes.env_steps, device, precision, uncertainty))
                        print(table(rows[-1:]).splitlines()[-1], flush=True)
        if "generate" in parts:
            rows.append(scenarios(ensemble, store, sizes, workdir, device))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    total = time.perf_counter() - started
    title = (f"gpu_check on {device_name(device)} ({'cpu smoke' if args.cpu_smoke else 'full'}), torch "
             f"{torch.__version__}, Python {platform.python_version()}, {dt.date.today().isoformat()}, "
             f"{total:.0f} s in all")
    print(f"\n{title}\n{table(rows)}")
    if args.record is not None:
        command = f"`python benchmarks/gpu_check.py{' --cpu-smoke' if args.cpu_smoke else ''}` ({total:.0f} s in all)"
        where = f"{device_name(device)}, torch {torch.__version__}, Python {platform.python_version()}"
        record_rows(args.record, "gpu_check", [
            [dt.date.today().isoformat(), where, command, r.component, r.config, r.precision, r.work,
             f"{r.seconds:.2f}", f"{r.throughput:,.0f}", r.unit, "-" if r.peak_mib is None else f"{r.peak_mib:,.0f}"]
            for r in rows], COLUMNS)
        print(f"results: {args.record}")
    return rows


if __name__ == "__main__":
    main()
