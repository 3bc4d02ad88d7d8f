"""The live twin: a world model kept in sync with a running system, scoring how surprising each step is.

    python -m twin.live --model model.pt --spec spec.yaml --source mqtt://127.0.0.1:1883/plant/pendulum \
        --store live.zarr --calibration calibration.json --alert-topic plant/alerts

    python -m twin.live --model model.pt --spec plant.yaml --source opc.tcp://127.0.0.1:4840 --store live.zarr \
        --calibration calibration.json --publish-opcua "ns=2;s=Twin"      # docs/opcua.md

(`python -m envs.live` is the same command, kept as an alias.) It mirrors the source into the store
(`data_pipeline.stream`), feeds every new step to a `Twin`, scores the step's surprise under the twin's
one-step prediction (`twin.anomaly`), writes the scores beside the store (`live.anomaly.zarr`), logs
them to MLflow and prints (or publishes) alerts. This module is the command: it wires the parts of
the `twin` package together. See docs/live-twin.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time as _time
from collections.abc import Callable
from typing import Any

from data_pipeline.errors import InputError, run_cli
from data_pipeline.stream import Block, StreamConfig, StreamIngest, make_source, open_or_create, run
from data_pipeline.stream.config import StreamSpec
from data_pipeline.stream.opcua import OpcUaOptions, OpcUaSource
from data_pipeline.validate import check_schema_compatible
from twin.alerts import alert_sink
from twin.anomaly import AnomalyConfig, AnomalyScorer, Calibration
from twin.mirror import LiveMirror
from twin.mlflow_log import MlflowLog
from twin.opcua_publish import OpcUaPublisher
from twin.scores import ScoreStore
from twin.sync import Twin
from worldmodel.threads import apply_threads, parse_threads

__all__ = ["LiveMirror", "MlflowLog", "ScoreStore", "Twin", "build_parser", "main", "run_live"]


def run_live(args: argparse.Namespace, stop: threading.Event | None = None,
             on_mirror: Callable[[LiveMirror, StreamIngest], None] | None = None) -> dict[str, Any]:
    """`python -m twin.live`: stream + twin + anomaly scores until the source ends, SIGINT / SIGTERM or `stop`.

    `on_mirror` sees the mirror and the ingest once they are built, before any row (the dashboard
    watches their counters and rows from another thread)."""
    stream_spec = StreamSpec.from_yaml(args.spec)
    spec = stream_spec.ingest
    apply_threads(args.threads)
    twin = Twin(args.model, history=args.history, particles=args.particles, device=args.device)
    model = twin.model
    calibration = Calibration.load(args.calibration) if args.calibration else None
    if calibration is not None:  # the threshold holds for the settings it was calibrated with
        config = calibration.anomaly_config()
        if args.window is not None or args.particles != 1:
            print(f"twin.live: --window / --particles ignored: {args.calibration} was calibrated with "
                  f"window {config.window}, particles {config.particles}", file=sys.stderr)
    else:
        config = AnomalyConfig(window=args.window or 1, particles=args.particles)
    threshold = args.threshold if args.threshold is not None else (calibration.threshold if calibration else None)
    if threshold is None:
        print("twin.live: no --calibration or --threshold: scores are written, no alerts", file=sys.stderr)
    if config.particles != twin.particles:
        twin = Twin(model, history=args.history, particles=config.particles)
    opcua = OpcUaOptions.from_env(args.opcua_user, args.opcua_security) if args.source.startswith("opc.tcp://") \
        else None
    source = make_source(args.source, spec=stream_spec, opcua=opcua)
    publisher = None
    if args.publish_opcua:
        if not isinstance(source, OpcUaSource):
            raise InputError(f"--publish-opcua {args.publish_opcua!r}: needs an opc.tcp:// source (the twin writes "
                             "on its connection)")
        publisher = OpcUaPublisher(source, args.publish_opcua, list(model.schema.obs_channels))
    store = open_or_create(args.store, spec, args.spec, source.name)
    scores = None
    mlflow_log = None
    try:
        check_schema_compatible(store.schema, model.schema, use="model", where=f"spec {args.spec} / store {args.store}")
        ingest = StreamIngest(spec, store, source.name, StreamConfig(
            reorder_window=args.reorder_window, commit_seconds=args.commit_interval, commit_rows=args.commit_rows))
        scorer = AnomalyScorer(model, config, threshold)
        scores_path = args.scores or ScoreStore.path_for(args.store)
        scores = ScoreStore(scores_path, list(model.schema.obs_channels), {
            "model": str(args.model), "store": str(args.store), "threshold": threshold if threshold is not None
            else float("inf"), "anomaly_config": json.dumps(config.__dict__), "title": "twinworld anomaly scores"})
        mirror = LiveMirror(twin, scorer, scores, alert_sink(args.alert_topic, source),
                            list(model.schema.obs_channels))
        if not args.no_mlflow:
            mlflow_log = MlflowLog({"model": str(args.model), "store": str(args.store), "source": source.name,
                                    "threshold": threshold, "window": config.window, "particles": config.particles,
                                    "kind": config.kind})
        if on_mirror is not None:
            on_mirror(mirror, ingest)
        last_commit = [ingest.stats.committed_steps]

        def on_blocks(blocks: list[Block]) -> None:
            mirror.on_blocks(blocks)
            if publisher is not None:
                publisher.publish(mirror)
            now = _time.monotonic()
            if ingest.stats.committed_steps != last_commit[0]:  # scores and history follow the data's commits
                last_commit[0] = ingest.stats.committed_steps
                scores.flush()
                if args.history_out and twin.steps:
                    twin.save_history(args.history_out)
            if mlflow_log is not None:
                mlflow_log.log(mirror, ingest.stats, now)

        def status() -> str:
            st = ingest.stats
            return (f"steps: {mirror.stats.steps}  lag: {st.lag_s():.2f} s  score: {mirror.stats.latest_score:.3g}"
                    f" (threshold {threshold if threshold is not None else 'none'})  alerts: {mirror.stats.alerts}"
                    f"  committed: {st.committed_steps}  late: {st.late}  duplicates: {st.duplicates}")

        stats = run(source, ingest, on_blocks=on_blocks, status=status, status_every=args.status_every, stop=stop)
        scores.flush()
        if args.history_out and twin.steps:
            twin.save_history(args.history_out)
        if mlflow_log is not None:
            mlflow_log.log(mirror, stats, _time.monotonic(), force=True)
        return {"store": args.store, "scores": scores_path, "steps": mirror.stats.steps,
                "committed_steps": stats.committed_steps, "alerts": mirror.stats.alerts,
                "late": stats.late, "skewed": stats.skewed, "duplicates": stats.duplicates, "rejected": stats.rejected,
                **({"published": publisher.written} if publisher is not None else {}),
                **({"history": args.history_out} if args.history_out and twin.steps else {}),
                **({"mlflow_run": mlflow_log.run_id} if mlflow_log is not None else {})}
    finally:
        if scores is not None:
            scores.close()
        if mlflow_log is not None:
            mlflow_log.close()
        store.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m twin.live", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model file or MLflow model URI (runs:/…, models:/…)")
    p.add_argument("--spec", required=True, help="YAML spec mapping JSON keys to channels (docs/ingest.md)")
    p.add_argument("--source", required=True, help="mqtt://HOST:PORT/TOPIC, opc.tcp://HOST:PORT (the spec's `node:` "
                   "keys; docs/opcua.md), '-' (JSON lines on stdin) or file:PATH")
    p.add_argument("--opcua-user", default=None, help="opc.tcp:// sources: user name (else TWINWORLD_OPCUA_USER; the "
                   "password only from TWINWORLD_OPCUA_PASSWORD)")
    p.add_argument("--opcua-security", default=None, help="opc.tcp:// sources: POLICY,MODE,CLIENT_CERT,CLIENT_KEY"
                   "[,SERVER_CERT] (else TWINWORLD_OPCUA_SECURITY)")
    p.add_argument("--publish-opcua", default=None, metavar="ns=N;s=PREFIX",
                   help="write the twin's latest score, alert and prediction to PREFIX.score, PREFIX.alert and "
                   "PREFIX.<channel> on the opc.tcp:// source's server (never to the plant's nodes)")
    p.add_argument("--store", required=True, help="trajectory store to mirror into (created or appended to)")
    p.add_argument("--calibration", default=None,
                   help="calibration JSON from `python -m twin.calibrate` (threshold and score settings)")
    p.add_argument("--threshold", type=float, default=None, help="alert threshold (overrides the calibration's)")
    p.add_argument("--window", type=int, default=None,
                   help="steps the score averages over (default 1; a calibration brings its own)")
    p.add_argument("--particles", type=int, default=1,
                   help="belief copies pooled per prediction (a calibration brings its own)")
    p.add_argument("--alert-topic", default=None,
                   help="publish alerts as JSON on this topic of the source's broker (or a full mqtt:// URL)")
    p.add_argument("--scores", default=None, help="score store path (default: STORE's name with .anomaly.zarr)")
    p.add_argument("--history-out", default=None,
                   help="keep the twin's recent history in this .npz (a generate.py history file), updated at "
                   "every commit and at exit")
    p.add_argument("--history", type=int, default=256, help="rows of history the twin keeps")
    p.add_argument("--reorder-window", type=float, default=1.0, help="seconds a sample waits for earlier ones")
    p.add_argument("--commit-interval", type=float, default=10.0, help="seconds between segment commits")
    p.add_argument("--commit-rows", type=int, default=0, help="also commit a segment once it has this many rows")
    p.add_argument("--status-every", type=float, default=1.0, help="seconds between status lines; 0: none")
    p.add_argument("--device", default=None, help="torch device of the model (default: cpu)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--threads", type=parse_threads, default="auto",
                   help="torch CPU threads: a number, or auto (the CPUs this process may use: affinity, cgroup "
                   "quota, SLURM_CPUS_PER_TASK, OMP_NUM_THREADS)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run_live(args)
    for key, value in result.items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m twin.live"))
