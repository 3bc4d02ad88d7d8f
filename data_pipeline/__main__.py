"""Command line of the data pipeline.

    python -m data_pipeline record --env Pendulum-v1 --episodes 50 --policy random --seed 0 --out p.zarr
    python -m data_pipeline record --env fmu:osc.fmu --fmu-config osc.yaml --episodes 20 --out osc.zarr
    python -m data_pipeline ingest csv logs.csv --spec spec.yaml --out plant.zarr
    python -m data_pipeline stream --source mqtt://127.0.0.1:1883/plant --spec spec.yaml --out live.zarr
    python -m data_pipeline info p.zarr
    python -m data_pipeline validate p.zarr
    python -m data_pipeline export minari p.zarr --dataset-id twinworld/pendulum-random-v0

Each command ends by printing what it produced as `key: value` lines.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Literal

import numpy as np

from data_pipeline.errors import UserError, run_cli

if TYPE_CHECKING:
    from data_pipeline.record import Policy


def _behaviour_policy(spec: str, env_id: str, seed: int, trust_pickle: bool = False,
                      env_kwargs: dict | None = None) -> Policy | Literal["random"]:
    """`--policy`: "random" stays `record`'s built-in (each episode's own seeded action space); a policy
    file or "module:function" becomes a batched callable (policies.behaviour), checked before any store
    is made. A bare stable-baselines3 zip is unpickled only with `--trust-pickle`."""
    if spec == "random":
        return "random"
    from data_pipeline.record import make_env
    from policies.behaviour import make_policy

    env = make_env(env_id, **(env_kwargs or {}))  # for its action space only
    try:
        return make_policy(spec, env.action_space, seed=seed, trust_pickle=trust_pickle)
    finally:
        env.close()


def _cmd_record(args: argparse.Namespace) -> int:
    from data_pipeline.record import RecordInterrupted, read_names, record
    from data_pipeline.record.env_schema import FMU_PREFIX

    if args.env.startswith(FMU_PREFIX) != (args.fmu_config is not None):
        raise UserError(f"--env {args.env}: --fmu-config is needed with --env fmu:PATH.fmu and only there")
    env_kwargs = {"config": args.fmu_config} if args.fmu_config is not None else None
    try:
        store = record(
            args.env,
            args.episodes,
            args.out,
            policy=_behaviour_policy(args.policy, args.env, args.seed, args.trust_pickle, env_kwargs),
            seed=args.seed,
            num_envs=args.num_envs,
            image_size=args.image_size,
            max_episode_steps=args.max_episode_steps,
            overwrite=args.overwrite,
            append=args.append,
            progress=not args.no_progress,
            commit_interval=args.commit_interval,
            obs_names=read_names(args.obs_names, "obs"),
            action_names=read_names(args.action_names, "action"),
            env_kwargs=env_kwargs,
        )
    except RecordInterrupted as stop:  # every finished episode is committed; exit 128 + signal, as a shell does
        print(f"store: {args.out}")
        print(f"episodes: {stop.episodes}")
        print(f"steps: {stop.steps}")
        print(f"interrupted: {stop}", file=sys.stderr)
        return 128 + stop.signum
    print(f"store: {args.out}")
    print(f"episodes: {store.num_episodes}")
    print(f"steps: {store.num_steps}")
    store.close()
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from data_pipeline.info import describe
    from data_pipeline.store import StoreCorruptionError

    try:  # nothing is printed from a damaged store: no statistics computed over fill values
        text = describe(args.store, stats=not args.no_stats)
    except StoreCorruptionError as err:
        print(f"python -m data_pipeline info: error: {err}. `python -m data_pipeline validate {args.store}` "
              "lists every damaged part", file=sys.stderr)
        return 1
    print(text)
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from data_pipeline.info import validate_store

    report = validate_store(args.store, repair=args.repair)
    for key, value in report.items():
        print(f"{key}: {value}")
    return 0 if report["status"] == "ok" else 1


def _cmd_ingest(args: argparse.Namespace) -> int:
    if args.format == "minari":
        from data_pipeline.minari_io import import_minari

        store = import_minari(args.input, args.out, overwrite=args.overwrite)
    else:
        from data_pipeline.ingest import ingest_file

        store = ingest_file(args.format, args.input, args.spec, args.out, overwrite=args.overwrite,
                            append=args.append)
    print(f"store: {args.out}")
    print(f"episodes: {store.num_episodes}")
    print(f"steps: {store.num_steps}")
    store.close()
    return 0


def _cmd_stream(args: argparse.Namespace) -> int:
    from data_pipeline.stream import StreamConfig, stream
    from data_pipeline.stream.opcua import OpcUaOptions

    config = StreamConfig(reorder_window=args.reorder_window, commit_seconds=args.commit_interval,
                          commit_rows=args.commit_rows, seq_field=args.seq_field, max_skew=args.max_skew,
                          max_message_bytes=args.max_message_bytes)
    opcua = OpcUaOptions.from_env(args.opcua_user, args.opcua_security) if args.source.startswith("opc.tcp://") \
        else None
    stats = stream(args.source, args.spec, args.out, config, status_every=args.status_every, opcua=opcua)
    print(f"store: {args.out}")
    print(f"episodes: {stats.committed_episodes}")
    print(f"committed_steps: {stats.committed_steps}")
    print(f"late: {stats.late}")
    print(f"skewed: {stats.skewed}")
    print(f"jumps: {stats.jumps}")
    print(f"duplicates: {stats.duplicates}")
    print(f"rejected: {stats.rejected}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from data_pipeline.minari_io import export_minari

    dataset_id = export_minari(args.store, args.dataset_id, data_path=args.data_path)
    print(f"minari_dataset: {dataset_id}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m data_pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("record", help="roll out a Gymnasium env with a policy into a store")
    p.add_argument("--env", required=True,
                   help="Gymnasium env id: classic control, MuJoCo, any registered env, or your own as module:EnvId "
                        "(e.g. mypkg.envs:Tank-v0; the module is imported first and registers EnvId). A Dict / "
                        "Tuple observation is flattened into channels named by its keys (position.0, sensors.2.temp); "
                        "fmu:PATH.fmu runs an FMI 2.0 co-simulation FMU (with --fmu-config, docs/fmu.md)")
    p.add_argument("--fmu-config", default=None,
                   help="with --env fmu:PATH.fmu: YAML naming the FMU inputs that are actions, the outputs that are "
                   "observations, parameters, start values and ranges, dt (docs/fmu.md)")
    p.add_argument("--episodes", type=int, required=True, help="number of episodes to record")
    p.add_argument("--policy", default="random",
                   help="'random', a policy file (policy.zip with its .json and .safetensors, see docs/policy.md), "
                   "or 'module:function' (batched obs -> actions)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow a --policy that is a stable-baselines3 zip only: loading it runs any code it "
                   "contains; only for files you made or trust")
    p.add_argument("--seed", type=int, default=0, help="episode k is reset with seed + k")
    p.add_argument("--out", required=True, help="store path or fsspec URL")
    p.add_argument("--num-envs", type=int, default=1, help="env copies stepped side by side")
    p.add_argument("--image-size", type=int, default=None,
                   help="record the env's rendering resized to SIZE x SIZE RGB as the observation")
    p.add_argument("--max-episode-steps", type=int, default=None, help="override the env's time limit")
    p.add_argument("--obs-names", default=None,
                   help="observation channel names: a comma list (theta,omega) or a YAML file with a list; default: "
                        "known simulators' names, a Dict / Tuple's key paths, else obs_0, obs_1, ...")
    p.add_argument("--action-names", default=None,
                   help="action channel names: a comma list or a YAML file with a list (default: action_0, ...)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing twinworld trajectory store at --out (anything else there is refused)")
    p.add_argument("--append", action="store_true", help="append to an existing store (schema must match)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--commit-interval", type=float, default=10.0,
                   help="commit finished episodes at least every this many seconds (default 10), so a kill "
                   "loses at most that much; SIGINT / SIGTERM commit them and exit 130 / 143")
    p.set_defaults(func=_cmd_record)

    p = sub.add_parser("ingest", help="import sensor logs (csv, parquet) or a Minari dataset into a store")
    p.add_argument("format", choices=["csv", "parquet", "minari"], help="input format")
    p.add_argument("input", help="input file(s) (a glob is allowed) or, for minari, a dataset id")
    p.add_argument("--spec", default=None, help="YAML spec mapping columns to channels (csv, parquet)")
    p.add_argument("--out", required=True, help="store path or fsspec URL")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing twinworld trajectory store at --out (anything else there is refused)")
    p.add_argument("--append", action="store_true", help="append to an existing store (schema must match)")
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("stream", help="mirror a live source (MQTT, stdin, a growing file) into a store",
                       description="Append JSON samples to a store as they arrive, resampled onto the spec's "
                       "dt and committed as segment episodes (docs/live-twin.md). SIGINT / SIGTERM commit "
                       "what is complete and exit 0.")
    p.add_argument("--source", required=True,
                   help="mqtt://HOST:PORT/TOPIC[?qos=1], opc.tcp://HOST:PORT (the nodes named by the spec's "
                   "`node:` keys; docs/opcua.md), '-' (JSON lines on stdin) or file:PATH (followed like tail -f)")
    p.add_argument("--spec", required=True, help="YAML spec mapping JSON keys to channels (docs/ingest.md)")
    p.add_argument("--out", required=True, help="store path or fsspec URL (created, or appended to if it exists)")
    p.add_argument("--reorder-window", type=float, default=1.0,
                   help="seconds a sample waits for out-of-order earlier ones (default 1.0)")
    p.add_argument("--commit-interval", type=float, default=10.0,
                   help="wall-clock seconds between segment commits; 0: only at gaps and at shutdown (default 10)")
    p.add_argument("--commit-rows", type=int, default=0, help="also commit a segment once it has this many rows")
    p.add_argument("--seq-field", default="seq", help="JSON key of the message sequence number (duplicates)")
    p.add_argument("--max-skew", type=float, default=None,
                   help="seconds a sample's time may be from the stream's newest before it is held as a possible "
                   "clock glitch (refused, or a clock jump if the next samples agree); default: 10 x the spec's "
                   "longest max_gap, at least 2 x --reorder-window")
    p.add_argument("--max-message-bytes", type=int, default=1 << 20,
                   help="largest message in bytes; a longer one is refused (default 1 MiB)")
    p.add_argument("--status-every", type=float, default=1.0, help="seconds between status lines; 0: none")
    p.add_argument("--opcua-user", default=None,
                   help="opc.tcp:// sources: user name (else TWINWORLD_OPCUA_USER; the password only from "
                   "TWINWORLD_OPCUA_PASSWORD, never an option); default anonymous")
    p.add_argument("--opcua-security", default=None,
                   help="opc.tcp:// sources: POLICY,MODE,CLIENT_CERT,CLIENT_KEY[,SERVER_CERT], e.g. "
                   "Basic256Sha256,SignAndEncrypt,client.der,client.pem (else TWINWORLD_OPCUA_SECURITY); "
                   "default none")
    p.set_defaults(func=_cmd_stream)

    p = sub.add_parser("info", help="print episodes, steps, channels with units, time span and statistics")
    p.add_argument("store", help="store path or fsspec URL")
    p.add_argument("--no-stats", action="store_true", help="skip the per-channel statistics (a full read)")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("validate", help="check a store's structure and every chunk's checksum")
    p.add_argument("store", help="store path")
    p.add_argument("--repair", action="store_true", help="drop an uncommitted tail left by a crashed writer")
    p.set_defaults(func=_cmd_validate)

    p = sub.add_parser("export", help="export a store as a Minari dataset")
    p.add_argument("format", choices=["minari"], help="output format")
    p.add_argument("store", help="store path")
    p.add_argument("--dataset-id", required=True, help="Minari dataset id, e.g. twinworld/pendulum-random-v0")
    p.add_argument("--data-path", default=None, help="Minari datasets root (default: MINARI_DATASETS_PATH)")
    p.set_defaults(func=_cmd_export)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; user errors propagate (`run_cli` prints them as one line)."""
    args = build_parser().parse_args(argv)
    np.set_printoptions(precision=4, suppress=True)
    if args.command != "record":
        return int(args.func(args) or 0)
    from gymnasium.error import UnregisteredEnv

    try:
        return int(args.func(args) or 0)
    except UnregisteredEnv as err:  # a misspelt --env is the user's input, not a bug
        raise UserError(f"--env {args.env}: {err}") from err


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m data_pipeline"))
