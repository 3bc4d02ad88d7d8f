"""Calibrate an anomaly threshold on a store's held-out normal episodes, for `python -m twin.live --calibration`.

    python -m twin.calibrate --model model.pt --store pendulum.zarr --split val \
        --false-alarm-rate 0.01 --window 4 --out calibration.json

(`python -m worldmodel.anomaly` is the same command, kept as an alias.) The threshold is the
(1 - false_alarm_rate) quantile of the scores on the split's episodes (`twin.anomaly.calibrate`).
This module is only the command: nothing imports it, so `python -m` runs it once, as `__main__`.
"""

from __future__ import annotations

import argparse

import worldmodel
from data_pipeline.errors import run_cli
from data_pipeline.store import TrajectoryStore
from data_pipeline.validate import check_schema_compatible
from twin.anomaly import AnomalyConfig, calibrate, store_episodes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m twin.calibrate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model file or MLflow model URI")
    parser.add_argument("--store", required=True, help="store holding normal (validation) episodes")
    parser.add_argument("--split", default="val", help="train | val | test | all (the episode split, by seed)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the episode split (as in training)")
    parser.add_argument("--max-episodes", type=int, default=None, help="calibrate on at most this many episodes")
    parser.add_argument("--false-alarm-rate", type=float, default=0.01, help="allowed fraction of normal steps")
    parser.add_argument("--window", type=int, default=1, help="steps the score is averaged over")
    parser.add_argument("--kind", default="auto", choices=["auto", "nll", "normalized"], help="surprise measure")
    parser.add_argument("--particles", type=int, default=1, help="belief copies pooled per prediction")
    parser.add_argument("--out", required=True, help="calibration JSON to write")
    args = parser.parse_args(argv)
    model = worldmodel.load(args.model)
    with TrajectoryStore.open(args.store) as store:  # a model scores only the channels it was trained on
        check_schema_compatible(store.schema, model.schema, use="model", where=f"--store {args.store}")
    config = AnomalyConfig(window=args.window, false_alarm_rate=args.false_alarm_rate, kind=args.kind,
                           particles=args.particles)
    episodes = store_episodes(args.store, args.split, args.split_seed, args.max_episodes)
    cal = calibrate(model, episodes, config, model_name=args.model, store=args.store)
    cal.save(args.out)
    print(f"threshold: {cal.threshold:.6g}")
    print(f"steps: {cal.steps}")
    print(f"calibration: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main, "python -m twin.calibrate"))
