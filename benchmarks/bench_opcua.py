"""The live twin over OPC UA end to end, beside the same twin fed JSON lines (issue 16).

    python benchmarks/bench_opcua.py                    # 1,000 steps/s for 10 s, each way
    python benchmarks/bench_opcua.py --rate 500 --seconds 5 --no-record

1. The demo plant (`python -m examples.opcua_server`, Pendulum-v1, 5 nodes) publishes `rate` steps per
   second (5 x rate node values/s) for `seconds`; `python -m twin.live --source opc.tcp://…
   --publish-opcua ns=2;s=Twin` subscribes, mirrors into a store, scores every step and writes the
   scores back. Measured: the sustained rate, steps mirrored from the twin's first status line that
   shows any to the one that shows all of them, over the wall time between (status lines every 0.1 s);
   seconds from SIGINT to exit (commit), rows committed, how often scores were written.
   The demo server is Python too: on a busy machine it may publish slower than asked; its achieved
   rate is reported beside the twin's.
2. Side by side in the same run: the same twin fed the same rate of JSON lines on stdin
   (`bench_anomaly.realtime_check`, the MQTT/stdin path).

The model is the default ensemble (EnsembleConfig()), untrained: throughput does not depend on the
weights. Prints the numbers and records rows in BENCHMARKS.md (latest first).
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench_anomaly import realtime_check, rollout  # noqa: E402  (benchmarks/bench_anomaly.py)
from common import record_rows  # noqa: E402  (benchmarks/common.py)

from data_pipeline.stream.config import StreamSpec  # noqa: E402
from data_pipeline.windows.batch import Normalization  # noqa: E402
from examples.opcua_server import SPEC  # noqa: E402
from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_text(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {text!r} in {path} after {timeout:g} s:\n{path.read_text()[-2000:]}")
        time.sleep(0.1)


def status_steps(path: Path) -> list[int]:
    return [int(line.split()[1]) for line in path.read_text().splitlines() if line.startswith("steps: ")]


def opcua_check(model_path: str, spec_path: str, workdir: str, rate: float, seconds: float) -> dict[str, float]:
    """`python -m twin.live` over OPC UA against the demo plant publishing `rate` steps/s for `seconds`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    port, n = free_port(), int(rate * seconds)
    server_out = Path(workdir, "server.out")
    server = subprocess.Popen([sys.executable, "-m", "examples.opcua_server", "--port", str(port), "--rate",
                               str(rate), "--steps", str(n), "--wait-for-subscriber"], cwd=ROOT, env=env,
                              stdout=server_out.open("w"), stderr=subprocess.STDOUT)
    err = Path(workdir, "opcua.err")
    live = None
    try:
        wait_for_text(server_out, "serving", 120)
        live = subprocess.Popen([sys.executable, "-m", "twin.live", "--model", model_path, "--spec", spec_path,
                                 "--source", f"opc.tcp://127.0.0.1:{port}", "--store",
                                 os.path.join(workdir, "opcua.zarr"), "--no-mlflow", "--window", "5",
                                 "--reorder-window", "0.2", "--status-every", "0.1", "--publish-opcua", "ns=2;s=Twin"],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err.open("w"), text=True)
        first: tuple[float, int] | None = None  # (when, steps) the twin first reported mirrored steps
        deadline = time.perf_counter() + seconds * 5 + 180
        while time.perf_counter() < deadline:
            steps = (status_steps(err) or [0])[-1]
            if first is None and steps > 0:
                first = (time.perf_counter(), steps)
            if steps >= n:
                break
            time.sleep(0.02)
        done = time.perf_counter()
        live.send_signal(signal.SIGINT)
        stdout, _ = live.communicate(timeout=120)
        exit_s = time.perf_counter() - done
    finally:
        if live is not None and live.poll() is None:
            live.kill()
        server.kill()
        server.wait()
    keys = dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)
    mirrored = (status_steps(err) or [0])[-1]
    said = [line for line in server_out.read_text().splitlines() if line.startswith("published steps")]
    served_s = float(said[-1].split(" in ")[1].split()[0]) if said else float("nan")
    rate_s = (mirrored - first[1]) / (done - first[0]) if first is not None and done > first[0] else 0.0
    return {"published": n, "served_per_s": n / served_s, "mirrored": mirrored, "mirrored_per_s": rate_s,
            "exit_s": exit_s,
            "committed": int(keys.get("committed_steps", 0)), "scores_written": int(keys.get("published", 0)),
            "rejected": int(keys.get("rejected", 0))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=1000.0, help="steps published per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds of publishing, each way")
    parser.add_argument("--workdir", default=None, help="where the stores go (default: a temporary directory)")
    parser.add_argument("--no-record", action="store_true", help="print only, record nothing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    workdir = args.workdir or tempfile.mkdtemp(prefix="bench_opcua_")
    spec_path = os.path.join(workdir, "plant.yaml")
    Path(spec_path).write_text(SPEC.format(dt=0.05))
    schema = StreamSpec.from_yaml(spec_path).ingest.schema({})
    d, a = schema.obs_dim, schema.action_dim
    norm = Normalization(obs_mean=[0.0] * d, obs_std=[1.0] * d, obs_min=[-8.0] * d, obs_max=[8.0] * d,
                         action_mean=[0.0] * a, action_std=[1.0] * a, action_min=[-2.0] * a, action_max=[2.0] * a,
                         reward_mean=-5.0, reward_std=3.0, reward_min=-17.0, reward_max=0.0)
    torch.manual_seed(0)
    model = EnsembleWorldModel(EnsembleConfig(), schema, norm).eval()
    model_path = os.path.join(workdir, "model.pt")
    model.save(model_path)

    opc = opcua_check(model_path, spec_path, workdir, args.rate, args.seconds)
    print(f"OPC UA: published {opc['published']:,} steps (asked {args.rate:,.0f}/s, the server managed "
          f"{opc['served_per_s']:,.0f}/s); mirrored {opc['mirrored_per_s']:,.0f} "
          f"steps/s sustained ({opc['mirrored']:,} mirrored); exited {opc['exit_s']:.2f} s after SIGINT; "
          f"{opc['committed']:,} rows committed, scores written {opc['scores_written']} times", flush=True)
    episodes = [rollout(30_000 + i, None, 0) for i in range(10)]
    fed, mirrored, drain, committed = realtime_check(model, episodes, workdir, args.rate, args.seconds)
    print(f"stdin JSON lines: fed {fed:,.0f} lines/s; mirrored {mirrored:,.0f} steps/s; exited {drain:.2f} s after "
          f"the last line; {committed:,} rows committed", flush=True)
    if args.no_record:
        return
    load = os.getloadavg()[0]
    machine = f"{os.cpu_count()}-core CPU {platform.processor() or platform.machine()} (load avg {load:.1f}), " \
              f"torch {torch.__version__}, 1 thread"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=ROOT).stdout.strip()
    cmd = f"`python benchmarks/bench_opcua.py --rate {args.rate:g} --seconds {args.seconds:g}` (at {commit})"
    today = date.today().isoformat()
    record_rows(ROOT / "BENCHMARKS.md", "bench_opcua", [
        [today, "python -m twin.live over OPC UA (demo plant, 5 nodes, --publish-opcua): steps mirrored with scores "
         "per second, sustained (first to last mirrored step)", machine, cmd,
         f"{opc['mirrored_per_s']:,.0f} ({5 * opc['mirrored_per_s']:,.0f} node values/s; the demo server published "
         f"{opc['served_per_s']:,.0f} steps/s; {opc['committed']:,} of "
         f"{opc['published']:,} rows committed; scores written {opc['scores_written']} times)",
         f"stdin JSON lines, same twin, same run: {mirrored:,.0f} (median steps per status second)",
         f"{opc['mirrored_per_s'] / max(mirrored, 1e-9):.2f}", "≥ 1,000"]])


if __name__ == "__main__":
    main()
