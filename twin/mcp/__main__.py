"""The twin as an MCP server for AI agents (docs/agents.md).

    python -m twin.mcp --model model.pt --store pendulum.zarr                       # stdio (an agent starts it)
    python -m twin.mcp --model model.pt --store pendulum.zarr --policy policy.zip --http --port 8765
    python -m twin.mcp --model model.pt --store pendulum.zarr --live mqtt://127.0.0.1:1883/plant/pendulum \\
        --live-spec spec.yaml --calibration calibration.json

Tools: describe_twin, current_state, simulate (a generate.py scenario spec as JSON), compare_interventions,
recommend_intervention; resources twin://data-card and twin://model-card. The answers are advice: no tool
writes to the plant or to the source. Scenario stores and fan charts go into call folders under --out (a
new folder, or one this server made before; never a user's folder). Every call is capped in samples,
horizon and imagined steps and ends with a tool error after --timeout seconds. Streamable HTTP binds to
127.0.0.1 only. A bad start (a missing model or store, a policy that is not a safe policy file) is one line
on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from data_pipeline.errors import run_cli
from twin.mcp.limits import Limits
from worldmodel.threads import apply_threads, parse_threads


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m twin.mcp", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model file, train.py run dir, or MLflow model URI")
    p.add_argument("--store", required=True, help="trajectory store the twin mirrors (read only)")
    p.add_argument("--policy", default=None,
                   help="trained policy file for recommend_intervention (safe policy files only: .zip with its "
                   ".json and .safetensors)")
    p.add_argument("--live", default=None, metavar="SOURCE",
                   help="follow a live stream for current_state: mqtt://HOST:PORT/TOPIC or file:PATH (read only; "
                   "mirrored into OUT/live.zarr)")
    p.add_argument("--live-spec", default=None, metavar="SPEC",
                   help="with --live: the ingest spec YAML mapping the stream's JSON keys to channels (docs/ingest.md)")
    p.add_argument("--calibration", default=None, help="anomaly calibration JSON (python -m twin.calibrate)")
    p.add_argument("--out", default=None,
                   help="output folder for scenario stores and fan charts (default: a new temporary folder)")
    p.add_argument("--http", action="store_true", help="serve streamable HTTP on 127.0.0.1 instead of stdio")
    p.add_argument("--port", type=int, default=8765, help="HTTP port (with --http)")
    d = Limits()
    p.add_argument("--max-samples", type=int, default=d.max_samples, help="imagined futures per scenario or plan")
    p.add_argument("--max-horizon", type=int, default=d.max_horizon, help="imagined steps per future")
    p.add_argument("--max-scenarios", type=int, default=d.max_scenarios, help="starts x interventions per call")
    p.add_argument("--max-steps", type=int, default=d.max_steps, help="imagined steps per call, all together")
    p.add_argument("--timeout", type=float, default=d.timeout_s, help="seconds a call may take")
    p.add_argument("--threads", type=parse_threads, default="auto", help="torch CPU threads: a number, or auto")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    limits = Limits(max_samples=args.max_samples, max_horizon=args.max_horizon, max_scenarios=args.max_scenarios,
                    max_steps=args.max_steps, timeout_s=args.timeout)
    apply_threads(args.threads)
    from twin.mcp.server import build_server
    from twin.mcp.tools import TwinConfig, TwinTools

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="twinworld-mcp-"))
    tools = TwinTools(TwinConfig(model=args.model, store=args.store, out=out, policy=args.policy,
                                 calibration=args.calibration, live=args.live, live_spec=args.live_spec,
                                 limits=limits))
    print(f"twin.mcp: model {args.model}, store {args.store}, output folder {out}", file=sys.stderr)
    app = build_server(tools)
    try:
        if args.http:
            app.run("streamable-http", host="127.0.0.1", port=args.port)
        else:
            app.run()
    finally:
        tools.close()
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main, "python -m twin.mcp"))
