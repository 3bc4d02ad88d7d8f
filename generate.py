"""Counterfactual scenario generation: ensembles of imagined futures under interventions.

    python generate.py --config configs/scenarios/pendulum.yaml --model MODEL --store p.zarr \\
        --out scenarios.zarr --plot plots/ [--devices 2] [--seed 0]

MODEL is a model file, a train.py run directory or an MLflow URI (`runs:/…`, `models:/…`); STORE is
the trajectory store the starting points come from. Every scenario is one starting point × one
intervention of the spec (docs/scenarios.md): the twin assimilates the recorded history up to the
start, then imagines `samples` futures of `horizon` steps under the intervention's actions.

The output (DESIGN contract 6) is a Zarr store `(scenario, sample, time, channel)` beside a summary
CSV and a calibration CSV (factual scenarios against the recorded future); `--plot DIR` adds fan
charts. With `--devices N` the blocks of scenarios are split over N processes (Lightning Fabric,
DDP), each writing its own region of the store; the result equals a 1-process run. The run is
tracked in MLflow (`MLFLOW_TRACKING_URI`, default sqlite:///mlflow.db). Ends by printing
`scenarios: …`, `summary: …`, `calibration: …`, `plots: …` and `run_id: …`.

Memory holds one block of scenarios (the spec's `block_trajectories`), whatever `samples` and the
number of scenarios; a spec whose block would not fit `--max-memory` is refused before anything is
written. A user error (a bad spec, a missing file, a store that does not fit the model) is one line
on stderr and exit code 1; TWINWORLD_DEBUG=1 shows its traceback.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from data_pipeline.errors import run_cli
from data_pipeline.store import TrajectoryStore
from data_pipeline.store.overwrite import check_not_an_input
from scenarios import (
    block_seed,
    format_calibration,
    format_summary,
    generate,
    held_out,
    load_spec,
    plot_fans,
    resolve_starts,
    summarize,
    track_run,
)
from scenarios.ranks import launch
from tracking.runs import system_name
from worldmodel.threads import apply_threads, parse_threads

__all__ = ["block_seed", "generate", "main", "resolve_starts"]  # the library lives in scenarios/


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="generate.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="scenario spec YAML (configs/scenarios/*.yaml)")
    parser.add_argument("--model", required=True, help="model file, train.py run dir, or MLflow URI")
    parser.add_argument("--store", required=True, help="trajectory store the starting points come from")
    parser.add_argument("--out", required=True, help="output scenario store (.zarr); CSVs go beside it")
    parser.add_argument("--plot", default=None, metavar="DIR", help="write PNG fan charts into DIR")
    parser.add_argument("--devices", type=int, default=1, help="processes to split the scenarios over (DDP)")
    parser.add_argument("--num-nodes", type=int, default=1, help="nodes (on a cluster, e.g. under SLURM)")
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu, cuda, mps or auto (Lightning names)")
    parser.add_argument("--seed", type=int, default=None, help="override the spec's seed")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out scenario store (nothing else is ever replaced)")
    parser.add_argument("--max-memory", type=byte_size, default=None, metavar="SIZE",
                        help="memory one block of scenarios may take, e.g. 2G or 512M (default: half the "
                        "available RAM); a spec whose block needs more is refused before anything is written")
    parser.add_argument("--experiment", default=None,
                        help="MLflow experiment name (default: the store's system, e.g. cartpole)")
    parser.add_argument("--threads", type=parse_threads, default="auto",
                        help="torch CPU threads per process: a number, or auto (the CPUs this process may use: "
                        "affinity, cgroup quota, SLURM_CPUS_PER_TASK, OMP_NUM_THREADS; shared among --devices)")
    parser.add_argument("--no-mlflow", action="store_true", help="skip MLflow tracking (no run_id)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?)\s*([KMGT]?)i?B?\s*", re.IGNORECASE)


def byte_size(text: str) -> int:
    """`--max-memory`: bytes, or a number with K, M, G or T (powers of 1024), e.g. 2G, 512MiB."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r}; expected a size such as 2G, 512M or 1000000 (bytes)")
    number, unit = match.groups()
    return int(float(number) * 1024 ** "_KMGT".index(unit.upper() or "_"))


def main(argv: list[str] | None = None) -> dict[str, str]:
    """Run the command line; returns the printed `key: value` results (on rank 0)."""
    args = parse_args(argv)
    check_not_an_input(args.out, {"--store": args.store})  # before a model is loaded or a file written
    spec = load_spec(args.config)
    if args.seed is not None:
        spec = spec.with_seed(args.seed)
    ranks = launch(args.accelerator, args.devices, args.num_nodes)
    # CPU ranks on one node share its cores instead of oversubscribing them.
    apply_threads(args.threads, processes=args.devices if ranks.device.type == "cpu" else 1)
    if args.model.startswith(("runs:/", "models:/")):
        import mlflow

        from tracking.logger import tracking_uri

        mlflow.set_tracking_uri(tracking_uri())
    import worldmodel

    model = worldmodel.load(args.model, map_location=ranks.device)
    store = TrajectoryStore.open(args.store)
    fingerprint = store.fingerprint()
    attrs: dict[str, object] = {"model": args.model, "spec_file": str(args.config)}
    index = generate(spec, model, store, args.out, attrs=attrs, rank=ranks.rank, world_size=ranks.world_size,
                     barrier=ranks.barrier, overwrite=args.overwrite, progress=not args.no_progress,
                     max_memory=args.max_memory)
    if ranks.rank != 0:
        return {}
    stem = str(args.out).rstrip("/").removesuffix(".zarr")
    files = {"summary": Path(f"{stem}.summary.csv"), "calibration": Path(f"{stem}.calibration.csv")}
    table, calibration = summarize(args.out, spec)
    table.to_csv(files["summary"], index=False)
    calibration.to_csv(files["calibration"], index=False)
    print(format_summary(table, spec))
    calibration_text = format_calibration(calibration, spec, held_out(spec, store, index))
    if calibration_text is not None:
        print(calibration_text)
    plot_dir = Path(args.plot) if args.plot else None
    if plot_dir is not None:
        plot_fans(args.out, plot_dir, spec)
    result = {"scenarios": str(args.out), **{k: str(v) for k, v in files.items()}}
    if plot_dir is not None:
        result["plots"] = str(plot_dir)
    if not args.no_mlflow:
        result["run_id"] = track_run(spec, config=args.config, model=args.model, store=args.store, out=args.out,
                                     devices=args.devices,
                                     experiment=args.experiment or system_name(args.store), fingerprint=fingerprint,
                                     n_scenarios=len(index), files=files, plot_dir=plot_dir, table=table,
                                     calibration=calibration)
    for key, value in result.items():
        print(f"{key}: {value}")
    return result


def _run() -> int:
    main()
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(_run, "generate.py"))
