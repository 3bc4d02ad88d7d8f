"""Calibration of the predictive bands, before and after, side by side in one run (issue 14, "Calibration").

    python benchmarks/bench_calibration.py                                   # Pendulum-v1, all three kinds
    python benchmarks/bench_calibration.py --episodes 20 --models ensemble --steps 300   # quick check

For each model kind: train on the train split of a random-policy store (bench_models.py's recipe), then
on held-out test episodes the open-loop coverage90 at h10 / h50, NRMSE@50 and out_of_bounds before
calibration; calibrate on the validation split (`worldmodel.calibration.calibrate_split`, what
`train.py fit` does) and measure the same test windows again. Prints a table and records rows in
BENCHMARKS.md (latest first) unless --no-record.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_models import train  # noqa: E402
from common import machine, record_rows, table_header, table_row  # noqa: E402  (benchmarks/common.py)

from tracking.publish import evaluate_split  # noqa: E402
from worldmodel.calibration import calibrate_split  # noqa: E402

COLUMNS = ("date", "machine", "command", "system", "model", "train steps", "cov90 h10 before → after",
           "cov90 h50 before → after", "nRMSE h50 before → after", "out_of_bounds h50", "calibration s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Pendulum-v1")
    parser.add_argument("--store", default=None, help="default: /tmp/bench_calibration_<env>.zarr")
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--models", default="ensemble,rssm,diffusion")
    parser.add_argument("--steps", type=int, default=600, help="training steps per model")
    parser.add_argument("--preset", default="small")
    parser.add_argument("--no-record", action="store_true", help="print only, record nothing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    store = args.store or f"/tmp/bench_calibration_{args.env}.zarr"
    if not (Path(store) / "zarr.json").exists():
        subprocess.run([sys.executable, "-m", "data_pipeline", "record", "--env", args.env, "--episodes",
                        str(args.episodes), "--seed", "0", "--out", store, "--no-progress"], check=True)
    horizons = (1, 10, 50)
    kwargs = dict(context=8, horizons=horizons, samples=20, max_windows=256)
    rows = []
    for kind in args.models.split(","):
        module, dm, _ = train(kind, store, args.steps, args.preset)
        model = module.model.eval()
        before = evaluate_split(model, dm, "test", **kwargs)
        t0 = time.perf_counter()
        fit = calibrate_split(model, dm, "val", **kwargs)
        seconds = time.perf_counter() - t0
        after = evaluate_split(model, dm, "test", **kwargs)
        print(f"== {kind}: {fit.report()} ({seconds:.1f} s)")
        if before is None or after is None:
            print(f"{kind}: evaluation skipped")
            continue

        def pair(key: str, a: dict[str, float] = after, b: dict[str, float] = before) -> str:
            return f"{b.get(key, float('nan')):.3f} → {a.get(key, float('nan')):.3f}"

        where = machine(f"torch {torch.__version__}, 1 thread")
        line = [str(date.today()), where, "python benchmarks/bench_calibration.py " + " ".join(sys.argv[1:]),
                args.env, kind, str(args.steps), pair("coverage90/h10"), pair("coverage90/h50"), pair("nrmse/h50"),
                f"{after['out_of_bounds/h50']:.3f}", f"{seconds:.1f}"]
        print(table_row(line))
        rows.append(line)
    if rows:
        print(table_header(COLUMNS))
        for r in rows:
            print(table_row(r))
        if not args.no_record:
            record_rows(ROOT / "BENCHMARKS.md", "bench_calibration", rows, COLUMNS)


if __name__ == "__main__":
    main()
