"""The zoo the shipped defaults must win on (issue 14): eight systems unlike Pendulum, only the store changes.

    python benchmarks/bench_zoo.py --system cartpole            # one system (store, fit, score, one row)
    python benchmarks/bench_zoo.py --all --quick                # every system on small stores
    python benchmarks/bench_zoo.py --systems tank,motor_dict --kinds ensemble,rssm,diffusion

Per system: random-policy data (recorded, or for `tank` a historian CSV export ingested with its spec), then
the model is trained exactly as a user would, `python train.py fit --config CONFIG --data.store STORE` in a
subprocess (CONFIG: `--config-dir`/<kind>.yaml, the shipped defaults; nothing per system). It is scored on
the held-out test episodes of the store's split against persistence, ridge regression on
(obs, action) → Δobs (`worldmodel.evaluation.fit_linear`) and a plain MLP: a deterministic Δobs MLP on the
same train transitions, early-stopped on the validation ones, given at most the ensemble fit's wall time.

The yardstick (one definition for every predictor): open-loop from the last of `--context` real rows under
the recorded actions; NRMSE at horizon h = the mean over channels of RMSE(prediction mean) / the channel's
std in the store; coverage90 = the fraction of true values inside the central 90% of 20 samples. Each
horizon is scored on its own windows (non-overlapping, context + h rows, up to 256; `n=` in the table).
Where fewer than 32 test episodes (or fewer than all of them) are long enough for h = 50 (or 10), the
longest horizon that many are long enough for is scored instead and the table says so (`h50→17`), so a
short-episode system is not scored on a handful of unusually long episodes; where none fits it says why.
`fit eval` is what the fit itself printed about its evaluation: `table`, `explained` (horizons dropped or
skipped, with the reason) or `SILENT`.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import historian  # noqa: E402  (benchmarks/historian.py)
from common import machine, record_rows, table_header, table_row  # noqa: E402  (benchmarks/common.py)

from data_pipeline.errors import InputError, run_cli  # noqa: E402
from data_pipeline.store import TrajectoryStore  # noqa: E402
from data_pipeline.windows.batch import Batch  # noqa: E402
from data_pipeline.windows.datamodule import WindowDataModule, split_eval_windows  # noqa: E402
from data_pipeline.windows.fixed import FixedWindows  # noqa: E402
from worldmodel.evaluation import fit_linear, linear_rollout, rollout_samples, units_of  # noqa: E402
from worldmodel.interface import WorldModel  # noqa: E402
from worldmodel.io import load  # noqa: E402


@dataclass(frozen=True)
class System:
    """One zoo member: a Gymnasium env id recorded with a random policy, or `historian` (the CSV tank)."""

    env: str
    episodes: int  # full size (about 20k transitions)
    quick: int  # --quick size
    max_steps: int | None = None  # --max-episode-steps: long episodes cut so the split has enough of them
    note: str = ""


SYSTEMS = {
    "cartpole": System("CartPole-v1", 900, 120, note="short episodes (~22 steps under a random policy)"),
    "reacher": System("Reacher-v5", 400, 60),
    "swimmer": System("Swimmer-v5", 80, 12, max_steps=250),
    "inverted_double_pendulum": System("InvertedDoublePendulum-v5", 2000, 300, note="very short episodes"),
    "walker2d": System("Walker2d-v5", 800, 120, note="falls end episodes early"),
    "halfcheetah": System("HalfCheetah-v5", 80, 12, max_steps=250),
    "tank": System("historian", 34, 6, note="CSV historian export, 10 Hz, 60 s runs"),
    "motor_dict": System("zoo_envs:TwoMassMotor-v0", 100, 15, note="Dict observation"),
}
TARGETS = (10, 50)
MIN_EPISODES = 32  # a shorter horizon is scored rather than one on a handful of long episodes
SAMPLES = 20


def python_env() -> dict[str, str]:
    """The environment of the subprocesses: this checkout and benchmarks/ (for zoo_envs) importable."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(HERE), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def make_store(name: str, out: Path, quick: bool) -> Path:
    """The system's store under `out` (reused when it is already there: delete it to re-record)."""
    system = SYSTEMS[name]
    store = out / name / (f"{name}_quick.zarr" if quick else f"{name}.zarr")  # the store names the model
    if (store / "zarr.json").exists():
        return store
    episodes = system.quick if quick else system.episodes
    if system.env == "historian":
        export = out / name / ("csv_quick" if quick else "csv_full")
        historian.write_export(export, runs=episodes, seed=0)
        cmd = ["-m", "data_pipeline", "ingest", "csv", str(export / "tank_*.csv"), "--spec",
               str(export / "tank_spec.yaml"), "--out", str(store)]
    else:
        cmd = ["-m", "data_pipeline", "record", "--env", system.env, "--episodes", str(episodes), "--policy",
               "random", "--seed", "0", "--out", str(store), "--no-progress"]
        if system.max_steps:
            cmd += ["--max-episode-steps", str(system.max_steps)]
    subprocess.run([sys.executable, *cmd], check=True, env=python_env(), stdout=subprocess.DEVNULL)
    return store


def fit(config: Path, store: Path, workdir: Path, extra: list[str], reuse: bool = False) -> tuple[Path, float, str]:
    """`train.py fit` as a user runs it: (the model file, wall seconds, what it said about its evaluation).
    With `reuse`, a fit this script already ran in `workdir` (its fit.log and fit_seconds) is scored again."""
    workdir.mkdir(parents=True, exist_ok=True)
    log, timing = workdir / "fit.log", workdir / "fit_seconds"
    if reuse and log.exists() and timing.exists():
        stdout, seconds = log.read_text(), float(timing.read_text())
    else:
        env = python_env() | {"MLFLOW_TRACKING_URI": f"sqlite:///{workdir / 'mlflow.db'}",
                              "TWINWORLD_DEBUG": os.environ.get("TWINWORLD_DEBUG", "")}
        cmd = [sys.executable, str(ROOT / "train.py"), "fit", "--config", str(config), "--data.store", str(store),
               "--trainer.enable_progress_bar", "false", *extra]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        log.write_text(done.stdout + done.stderr)  # stdout first: the lines parsed below
        if done.returncode != 0:
            raise InputError(f"fit of {store} failed (exit {done.returncode}); its output: {log}")
        timing.write_text(f"{seconds:.1f}\n")
        stdout = done.stdout
    found = re.search(r"^checkpoint: (.+)$", stdout, re.M)
    if not found:
        raise InputError(f"fit of {store} printed no 'checkpoint:' line; its output: {log}")
    return workdir / found.group(1), seconds, evaluation_said(stdout)


def evaluation_said(stdout: str) -> str:
    """What a fit's output says about its evaluation: `explained` (a horizon dropped or the evaluation skipped,
    with the reason), `table` (the metrics table, every horizon), or `SILENT` (neither: the zoo's failure)."""
    if re.search(r"^evaluation: ", stdout, re.M):
        return "explained"
    return "table" if re.search(r"^horizon\s+nrmse", stdout, re.M) else "SILENT"


def transitions(dm: WindowDataModule, split: str) -> Batch:
    """Every transition (rows t, t+1 of one episode) of a split, as windows of 2 rows."""
    with TrajectoryStore.open(dm.store_path) as store:
        table = store.episodes()
        pos = np.asarray(dm.split[split], np.int64)
        starts, lengths = table["start"].to_numpy(np.int64)[pos], table["length"].to_numpy(np.int64)[pos]
        rows = np.concatenate([s + np.arange(n - 1) for s, n in zip(starts, lengths, strict=True)])
        return next(iter(FixedWindows(store, rows, window=2, batch_size=len(rows))))


class DeltaMLP(nn.Module):
    """The plain baseline: normalized (obs, encoded action) → normalized Δobs, one deterministic MLP."""

    def __init__(self, features: int, obs_dim: int, hidden: int = 200) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, obs_dim))

    def forward(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return z + self.net(torch.cat([z, a], -1))


def mlp_pairs(model: WorldModel, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    units = units_of(model)
    z = units.normalize_obs(batch.obs.to(model.device)).cpu()
    return z[:, 0], units.encode_action(batch.action[:, 0].to(model.device)).cpu(), z[:, 1]


def fit_mlp(model: WorldModel, train: Batch, val: Batch, budget_s: float, seed: int = 0,
            patience: int = 10) -> tuple[DeltaMLP, float]:
    """Adam on the train transitions, validated every 200 steps; stops after `patience` checks without
    improvement or at `budget_s` seconds, keeping the best weights. Returns (the MLP, seconds trained)."""
    torch.manual_seed(seed)
    z, a, nxt = mlp_pairs(model, train)
    vz, va, vnxt = mlp_pairs(model, val)
    mlp = DeltaMLP(z.shape[1] + a.shape[1], z.shape[1])
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-3, weight_decay=1e-5)
    best, best_state, waited, step = float("inf"), None, 0, 0
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed)
    while time.perf_counter() - t0 < budget_s and waited < patience:
        idx = torch.randint(len(z), (256,), generator=g)
        loss = (mlp(z[idx], a[idx]) - nxt[idx]).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 200 == 0:
            with torch.no_grad():
                v = float((mlp(vz, va) - vnxt).pow(2).mean())
            best, best_state, waited = ((v, {k: t.clone() for k, t in mlp.state_dict().items()}, 0) if v < best
                                        else (best, best_state, waited + 1))
    if best_state is not None:
        mlp.load_state_dict(best_state)
    return mlp.eval(), time.perf_counter() - t0


def mlp_rollout(model: WorldModel, mlp: DeltaMLP, windows: Batch, context: int, horizon: int) -> torch.Tensor:
    """Open-loop rollout of the MLP from the last context row: (B, H, D) physical units."""
    units = units_of(model)
    with torch.no_grad():
        z = units.normalize_obs(windows.obs[:, context - 1].to(model.device)).cpu()
        preds = []
        for t in range(horizon):
            a = units.encode_action(windows.action[:, context - 1 + t].to(model.device)).cpu()
            z = mlp(z, a)
            preds.append(units.denormalize_obs(z.to(model.device)).cpu())
        return torch.stack(preds, 1)


def nrmse(pred: torch.Tensor, truth: torch.Tensor, std: torch.Tensor) -> float:
    """Mean over channels of RMSE / the channel's std; pred and truth (B, D)."""
    return float(((pred - truth).pow(2).mean(0).sqrt() / std).mean())


def horizon(lengths: np.ndarray, context: int, target: int) -> int:
    """The horizon scored for `target`: the longest h ≤ target that at least MIN_EPISODES test episodes (or
    all that hold context + 1 rows, when fewer) are long enough for; 0 when no episode holds context + 1."""
    enough = min(MIN_EPISODES, int((lengths >= context + 1).sum()))
    return max((h for h in range(1, target + 1) if enough and (lengths >= context + h).sum() >= enough), default=0)


def score(model: WorldModel, mlp: DeltaMLP, ridge: torch.Tensor, dm: WindowDataModule, context: int
          ) -> dict[str, float | str]:
    """The yardstick of the module docstring at h10 and h50 (or the longest horizon the test episodes allow)."""
    with TrajectoryStore.open(dm.store_path) as store:
        lengths = store.episodes()["length"].to_numpy(np.int64)[np.asarray(dm.split["test"], np.int64)]
    out: dict[str, float | str] = {"horizons": ""}
    std = units_of(model).obs_std.cpu()
    labels = []
    for target in TARGETS:
        h = horizon(lengths, context, target)
        if h < 1:
            labels.append(f"h{target}: none (longest test episode {lengths.max(initial=0)} rows, context {context})")
            continue
        windows = split_eval_windows(dm, "test", context + h, 256)
        assert windows is not None  # `horizon` found episodes that hold context + h rows
        labels.append(f"h{target}" if h == target else f"h{target}→{h}")
        labels[-1] += f" (n={windows.batch_size})"  # how many test windows the horizon is scored on
        truth, last = windows.obs[:, context + h - 1].float(), windows.obs[:, context - 1].float()
        samples = rollout_samples(model, windows, context, h, SAMPLES)[:, :, h - 1]  # (B, S, D)
        lo, hi = samples.quantile(0.05, dim=1), samples.quantile(0.95, dim=1)
        out |= {f"model/h{target}": nrmse(samples.mean(1), truth, std),
                f"cov90/h{target}": float(((truth >= lo) & (truth <= hi)).float().mean()),
                f"mlp/h{target}": nrmse(mlp_rollout(model, mlp, windows, context, h)[:, -1], truth, std),
                f"ridge/h{target}": nrmse(linear_rollout(model, ridge, windows, context, h)[:, -1], truth, std),
                f"persistence/h{target}": nrmse(last, truth, std), f"windows/h{target}": float(windows.batch_size)}
    out["horizons"] = ", ".join(labels)
    return out


COLUMNS = ("date", "machine", "command", "system", "train / test transitions", "kind", "horizons", "nRMSE h10",
           "h50", "MLP h50", "ridge h50", "persistence h50", "h50 / MLP", "h50 / ridge", "cov90 h10", "cov90 h50",
           "fit s", "MLP s", "fit / MLP", "fit eval", "targets met")


def fmt(x: float | str | None, spec: str = ".3f") -> str:
    return "—" if x is None or isinstance(x, str) else format(x, spec)


def row(name: str, kind: str, data: str, m: dict[str, float | str], fit_s: float, mlp_s: float, said: str) -> list:
    """One table row and the targets it meets (ensemble: all four; other kinds: coverage and silence)."""
    def get(key: str) -> float | None:
        value = m.get(key)
        return None if value is None or isinstance(value, str) else float(value)

    h50, mlp50, ridge50 = get("model/h50"), get("mlp/h50"), get("ridge/h50")
    checks = {"cov90": all(c is not None and 0.85 <= c <= 0.95 for c in (get("cov90/h10"), get("cov90/h50"))),
              "not silent": said != "SILENT"}
    if kind == "ensemble":
        checks |= {"≤MLP": h50 is not None and mlp50 is not None and h50 <= mlp50,
                   "≤0.5 ridge": h50 is not None and ridge50 is not None and h50 <= 0.5 * ridge50,
                   "wall≤2×MLP": fit_s <= 2 * mlp_s}
    met = ", ".join(f"{k} {'yes' if ok else 'NO'}" for k, ok in checks.items())
    return [name, data, kind, m["horizons"], fmt(get("model/h10")), fmt(h50), fmt(mlp50), fmt(ridge50),
            fmt(get("persistence/h50")), fmt(h50 / mlp50 if h50 and mlp50 else None, ".2f"),
            fmt(h50 / ridge50 if h50 and ridge50 else None, ".2f"), fmt(get("cov90/h10"), ".2f"),
            fmt(get("cov90/h50"), ".2f"), f"{fit_s:.0f}", f"{mlp_s:.0f}", f"{fit_s / mlp_s:.2f}", said, met]


def run_system(name: str, args: argparse.Namespace) -> list[list]:
    out = Path(args.out)
    store = make_store(name, out, args.quick)
    dm = WindowDataModule(store=str(store), split_seed=0)  # the split train.py's configs use (split_seed 0)
    rows, mlp, mlp_s, ridge = [], None, 0.0, None
    train_b, val_b = transitions(dm, "train"), transitions(dm, "val")
    data = f"{train_b.batch_size} / {transitions(dm, 'test').batch_size}"
    for kind in args.kinds.split(","):
        model_file, fit_s, said = fit(Path(args.config_dir) / f"{kind}.yaml", store, out / name / kind,
                                      args.fit_args.split(), reuse=args.reuse_fits)
        model = load(str(model_file))
        if mlp is None:  # one MLP per system, given the ensemble's (the first kind's) fit wall time
            mlp, mlp_s = fit_mlp(model, train_b, val_b, budget_s=fit_s)
            ridge = fit_linear(train_b, model)
        assert ridge is not None
        m = score(model, mlp, ridge, dm, args.context)
        rows.append(row(name, kind, data, m, fit_s, mlp_s, said))
        print(f"{name} {kind}: fit {fit_s:.0f} s ({said}), {m}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", help=f"one of: {', '.join(SYSTEMS)}")
    parser.add_argument("--systems", help="a comma list of systems")
    parser.add_argument("--all", action="store_true", help="every system, one at a time")
    parser.add_argument("--quick", action="store_true", help="small stores (about 3k transitions per system)")
    parser.add_argument("--kinds", default="ensemble", help="model kinds, comma list; the first sets the MLP's budget")
    parser.add_argument("--config-dir", default=str(ROOT / "configs" / "pendulum"),
                        help="the shipped default configs, one <kind>.yaml each (no system-agnostic folder yet)")
    parser.add_argument("--fit-args", default="", help="extra train.py fit flags, e.g. '--trainer.max_steps 50'")
    parser.add_argument("--context", type=int, default=4, help="real rows assimilated before each rollout")
    parser.add_argument("--out", default="/tmp/bench_zoo", help="stores and runs go here")
    parser.add_argument("--reuse-fits", action="store_true",
                        help="score again the fits a previous run left in --out (after a change to the scoring)")
    parser.add_argument("--no-record", action="store_true", help="print only, record nothing in BENCHMARKS.md")
    args = parser.parse_args(argv)
    names = list(SYSTEMS) if args.all else (args.systems.split(",") if args.systems else [args.system] if args.system
                                            else [])
    if not names or any(n not in SYSTEMS for n in names):
        raise InputError(f"systems {names or 'none given'}: expected --all, --system or --systems from "
                         f"{', '.join(SYSTEMS)}")
    torch.set_num_threads(1)  # the baselines are small; the fits choose their own threads
    which = "--all" if args.all else f"--systems {','.join(names)}"
    flags = [which, "--quick" * args.quick, f"--kinds {args.kinds}" * (args.kinds != "ensemble"),
             f"--context {args.context}" * (args.context != 4), "--reuse-fits" * args.reuse_fits,
             f"--fit-args {shlex.quote(args.fit_args)}" * bool(args.fit_args)]
    command = "`python benchmarks/bench_zoo.py " + " ".join(f for f in flags if f) + "`"
    where = machine(f"torch {torch.__version__}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    lines = []
    for name in names:
        for cells in run_system(name, args):
            lines.append([str(date.today()), where, command, *cells])
            if not args.no_record:  # recorded system by system, so an interrupted --all keeps what it measured
                record_rows(ROOT / "BENCHMARKS.md", "bench_zoo", [lines[-1]], COLUMNS)
    print(table_header(COLUMNS) + "".join(table_row(line) for line in lines))


if __name__ == "__main__":
    sys.exit(run_cli(main, "bench_zoo.py"))
