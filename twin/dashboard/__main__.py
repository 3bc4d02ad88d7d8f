"""A live dashboard for operators: the twin's live mirror, the scenario explorer, the data and the model card.

    python -m twin.dashboard --store pendulum.zarr --scenarios scenarios.zarr --model model.pt
    python -m twin.dashboard --store live.zarr --live mqtt://127.0.0.1:1883/plant/pendulum --model model.pt \
        --spec spec.yaml --calibration calibration.json

serves a web page (Panel) on http://127.0.0.1:5006. It listens on the loopback address only, unless
`--host` names another one (then anyone who can reach that address sees the plant's data: a warning line
says so). With `--live` the dashboard runs the live mirror of `python -m twin.live` itself: it mirrors
the source into STORE (created or appended to) and scores each step. See docs/dashboard.md.
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
from typing import TYPE_CHECKING, Any

from data_pipeline.errors import InputError, run_cli
from data_pipeline.store.overwrite import kind_in
from data_pipeline.store.paths import local_path

if TYPE_CHECKING:
    from twin.dashboard.app import Sources

LOOPBACK = "127.0.0.1"


def check_store(path: str, kind: str, option: str, may_be_missing: bool = False) -> bool:
    """Whether `path` holds a twinworld store of `kind` (False: nothing there and `may_be_missing`); any other
    content is an InputError naming the option, the path and what was found."""
    local = local_path(path)
    if local is None:  # object storage: the reader says what is wrong, if anything
        return True
    meta = local / "zarr.json"
    if not local.exists():
        if may_be_missing:
            return False
        raise InputError(f"{option} {path}: no such store; expected a twinworld {kind} store")
    found = kind_in(meta.read_bytes()) if meta.is_file() else None
    if found != kind:
        what = f"a twinworld {found} store" if found else ("a directory that is not a twinworld store"
                                                          if local.is_dir() else "a file")
        raise InputError(f"{option} {path}: holds {what}; expected a twinworld {kind} store")
    return True


def check_host(host: str) -> str:
    """The address to bind; a non-loopback one is allowed (it was asked for) with a warning line."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        print(f"twin.dashboard: warning: listening on {host}, not loopback: anyone who can reach this address "
              "sees the dashboard (there is no login)", file=sys.stderr, flush=True)
    return host


def live_args(args: argparse.Namespace) -> argparse.Namespace:
    """The Namespace of `python -m twin.live` for the dashboard's options (its defaults for the rest)."""
    from twin.live import build_parser

    argv = ["--model", args.model, "--spec", args.spec, "--source", args.live, "--store", args.store,
            "--status-every", "0", "--no-mlflow"]
    if args.calibration:
        argv += ["--calibration", args.calibration]
    if args.threshold is not None:
        argv += ["--threshold", str(args.threshold)]
    if args.commit_interval is not None:
        argv += ["--commit-interval", str(args.commit_interval)]
    return build_parser().parse_args(argv)


def build_sources(args: argparse.Namespace) -> Sources:
    """Check the inputs (one clear error each) and read what the page shows; start the live mirror."""
    # The views (Panel, torch) are imported after the cheap checks: a mistyped path fails at once.
    if args.live and not (args.model and args.spec):
        raise InputError("--live needs --model MODEL and --spec SPEC.yaml (the ingest spec of the stream, "
                         "as for python -m twin.live)")
    check_store(args.store, "trajectory", "--store", may_be_missing=bool(args.live))
    if args.scenarios:
        check_store(args.scenarios, "scenario", "--scenarios")
    from twin.dashboard.app import Sources
    from twin.dashboard.data import ModelCard, StoreData
    from twin.dashboard.feed import LiveFeed
    from twin.dashboard.scenarios import ScenarioData

    scenarios = None
    if args.scenarios:
        scenarios = ScenarioData.load(args.scenarios)
    feed = None
    if args.live:
        feed = LiveFeed(live_args(args))
        feed.start()  # builds the store where there is none yet
    try:
        card = None
        if args.model:
            card = ModelCard.load(args.model, feed.mirror.twin.model if feed is not None and feed.mirror else None)
        return Sources(StoreData.load(args.store), scenarios, feed, card)
    except BaseException:
        if feed is not None:
            feed.close()
        raise


def serve(sources: Sources, host: str, port: int, allow_origins: list[str] | None = None) -> None:
    """Serve the page until SIGINT / SIGTERM; then stop the live mirror (it commits) and return.

    The page's websocket accepts only the origins named here (the bind address, loopback and each
    `--allow-origin`), never any origin: another web page the operator opens cannot read the plant's data."""
    import panel as pn

    from twin.dashboard.app import TITLE, page

    origins = [f"{host}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"] + list(allow_origins or [])
    try:
        server: Any = pn.serve({"/": lambda: page(sources)}, port=port, address=host, show=False, start=False,
                               title=TITLE, websocket_origin=origins,
                               verbose=False)
    except OSError as err:  # a port in use (another dashboard?), an address not of this machine
        if sources.feed is not None:
            sources.feed.close()  # what the live mirror received so far is committed
        raise InputError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err}); expected a free "
                         "port on an address of this machine (another dashboard may be running: pick another --port)"
                         ) from None
    server.start()
    loop = server.io_loop
    signals = (signal.SIGINT, signal.SIGTERM)
    for sig in signals:  # asyncio's own signal handling: the loop stops between callbacks, never inside one
        loop.asyncio_loop.add_signal_handler(sig, loop.stop)
    print(f"twin.dashboard: serving http://{host}:{server.port}/ (SIGINT / SIGTERM stop)", file=sys.stderr, flush=True)
    try:
        loop.start()
    finally:
        for sig in signals:
            loop.asyncio_loop.remove_signal_handler(sig)
        server.stop()
        if sources.feed is not None:
            sources.feed.close()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m twin.dashboard", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="trajectory store to show (with --live: mirrored into)")
    p.add_argument("--scenarios", default=None, help="scenario store of generate.py to explore")
    p.add_argument("--live", default=None, metavar="SOURCE",
                   help="mirror this stream live: mqtt://HOST:PORT/TOPIC, '-' (JSON lines on stdin) or file:PATH")
    p.add_argument("--model", default=None, help="model file or MLflow model URI: the live twin and the model card")
    p.add_argument("--spec", default=None, help="with --live: the ingest spec of the stream (docs/ingest.md)")
    p.add_argument("--calibration", default=None, help="with --live: calibration JSON (threshold and settings)")
    p.add_argument("--threshold", type=float, default=None, help="with --live: alert threshold")
    p.add_argument("--commit-interval", type=float, default=None,
                   help="with --live: seconds between segment commits (twin.live's default: 10)")
    p.add_argument("--host", default=LOOPBACK,
                   help="address to listen on (default 127.0.0.1, this machine only; another one is shown a warning)")
    p.add_argument("--port", type=int, default=5006, help="port to listen on")
    p.add_argument("--allow-origin", action="append", default=[], metavar="HOST:PORT",
                   help="with --host: an address browsers reach the page by (e.g. scada-pc.plant.local:5006); "
                        "repeatable. Pages served from any other origin are refused")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port {args.port}: expected a port number 1..65535 (0: any free port)")
    host = check_host(args.host)
    sources = build_sources(args)
    serve(sources, host, args.port, args.allow_origin)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m twin.dashboard"))
