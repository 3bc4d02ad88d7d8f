"""A demo OPC UA plant: Pendulum-v1 under a random torque, served on loopback (docs/opcua.md).

    python -m examples.opcua_server --print-spec > plant.yaml      # the stream spec for its nodes
    python -m examples.opcua_server --port 4840 --rate 20          # serve until stopped

Nodes (namespace `urn:twinworld:demo`, index 2): `ns=2;s=Pendulum.cos_theta`, `….sin_theta`,
`….theta_dot`, `….torque`, `….reward` (read-only to clients), and the twin's display nodes
`ns=2;s=Twin.score`, `Twin.alert`, `Twin.cos_theta`, … (writable: `python -m twin.live --publish-opcua
ns=2;s=Twin` writes there). Step k carries the source time `t0 + k * dt` whatever the wall clock
does; `--jitter` makes the publishing irregular, `--bad-at K` publishes theta_dot of step K with status
BadSensorFailure, `--fault-at K` halves the actuator's torque from step K (an anomaly for the twin),
`--first-step` continues a stopped server's clock. With `--user`, the server accepts only that user
and the password in TWINWORLD_OPCUA_PASSWORD.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
import time
from typing import Any

import numpy as np

CHANNELS = ["cos_theta", "sin_theta", "theta_dot", "torque", "reward"]
TWIN_NODES = ["score", "alert", "cos_theta", "sin_theta", "theta_dot"]
SPEC = """timestamp: {{column: t, unit: s}}
dt: {dt}
observation:
  channels:
    - {{column: cos_theta, unit: "1", low: -1.0, high: 1.0, node: "ns=2;s=Pendulum.cos_theta"}}
    - {{column: sin_theta, unit: "1", low: -1.0, high: 1.0, node: "ns=2;s=Pendulum.sin_theta"}}
    - {{column: theta_dot, unit: rad/s, low: -8.0, high: 8.0, node: "/Objects/2:Pendulum/2:theta_dot"}}
action:
  channels:
    - {{column: torque, unit: N*m, low: -2.0, high: 2.0, node: "ns=2;s=Pendulum.torque"}}
reward: {{column: reward, node: "ns=2;s=Pendulum.reward"}}
"""


class _OneUser:
    """asyncua user manager: only `name` with `password` may open a session."""

    def __init__(self, name: str, password: str) -> None:
        self.name, self.password = name, password

    def get_user(self, iserver: Any, username: str | None = None, password: str | None = None,
                 certificate: Any = None) -> Any:
        from asyncua.crypto.permission_rules import User, UserRole

        return User(role=UserRole.User, name=username) if (username, password) == (self.name, self.password) \
            else None


async def serve(args: argparse.Namespace) -> None:
    import gymnasium as gym
    from asyncua import Server, ua

    password = os.environ.get("TWINWORLD_OPCUA_PASSWORD", "")
    server = Server(user_manager=_OneUser(args.user, password) if args.user else None)  # type: ignore[arg-type]
    await server.init()
    server.set_endpoint(f"opc.tcp://{args.host}:{args.port}/")
    if args.user:
        server.set_identity_tokens([ua.UserNameIdentityToken])
    ns = await server.register_namespace("urn:twinworld:demo")
    plant = await server.nodes.objects.add_object(f"ns={ns};s=Pendulum", f"{ns}:Pendulum")
    nodes = {c: await plant.add_variable(f"ns={ns};s=Pendulum.{c}", f"{ns}:{c}", 0.0) for c in CHANNELS}
    twin = await server.nodes.objects.add_object(f"ns={ns};s=Twin", f"{ns}:Twin")
    for name in TWIN_NODES:
        node = await twin.add_variable(f"ns={ns};s=Twin.{name}", f"{ns}:{name}", False if name == "alert" else 0.0)
        await node.set_writable()
    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(args.seed + args.first_step)
    obs, _ = env.reset(seed=args.seed + args.first_step)
    epoch = ua.DateTime(1970, 1, 1, tzinfo=dt.UTC)
    bad = {int(k) for k in args.bad_at.split(",") if k}
    state = {"obs": obs}

    async def publish(k: int) -> None:
        torque = float(rng.uniform(-2.0, 2.0))
        applied = 0.5 * torque if args.fault_at is not None and k >= args.fault_at else torque
        next_obs, reward, *_ = env.step([applied])
        when = epoch + dt.timedelta(microseconds=round((args.t0 + k * args.dt) * 1e6))
        values = [*map(float, state["obs"]), torque, float(reward)]
        order = rng.permutation(len(CHANNELS)) if args.jitter else range(len(CHANNELS))
        for i in order:  # the channels of one step in a random order when jittered
            status = ua.StatusCode(ua.UInt32(ua.StatusCodes.BadSensorFailure if k in bad
                                             and CHANNELS[i] == "theta_dot" else ua.StatusCodes.Good))
            value = 7.5 if status.is_bad() else values[i]  # a bad reading carries a plausible number
            await server.write_attribute_value(nodes[CHANNELS[i]].nodeid, ua.DataValue(
                ua.Variant(value, ua.VariantType.Double), StatusCode=status, SourceTimestamp=when))
        state["obs"] = next_obs

    async with server:
        await publish(args.first_step)  # the plant's current state, before anyone listens
        print(f"serving opc.tcp://{args.host}:{args.port}/ from step {args.first_step}", flush=True)
        if args.wait_for_subscriber:
            while not server.iserver.subscription_service.subscriptions:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # its monitored items follow the subscription
        start = time.monotonic()
        k = args.first_step + 1
        last = args.first_step + args.steps
        while args.steps == 0 or k < last:
            due = args.first_step + 1 + int((time.monotonic() - start) * args.rate)
            while k < due and (args.steps == 0 or k < last):
                await publish(k)
                k += 1
            pause = 0.01 if not args.jitter else float(rng.uniform(0, 2 * args.jitter / args.rate + 0.01))
            await asyncio.sleep(pause)
        print(f"published steps {args.first_step}..{k - 1} in {time.monotonic() - start:.2f} s", flush=True)
        while True:  # keep serving (the last values stay readable) until stopped
            await asyncio.sleep(1.0)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m examples.opcua_server", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=int, default=4840, help="TCP port")
    p.add_argument("--rate", type=float, default=20.0, help="steps published per wall-clock second")
    p.add_argument("--steps", type=int, default=0, help="steps to publish, then keep serving (0: forever)")
    p.add_argument("--first-step", type=int, default=0, help="first step (continue a stopped server's clock)")
    p.add_argument("--dt", type=float, default=0.05, help="seconds of source time per step (Pendulum-v1: 0.05)")
    p.add_argument("--t0", type=float, default=1.7e9, help="source time of step 0, seconds since the epoch")
    p.add_argument("--seed", type=int, default=0, help="seed of the pendulum and the torque")
    p.add_argument("--jitter", type=float, default=0.0,
                   help="irregular publishing: pauses up to 2 x JITTER step periods, channels in random order")
    p.add_argument("--bad-at", default="", help="steps (comma-separated) whose theta_dot has status BadSensorFailure")
    p.add_argument("--fault-at", type=int, default=None, help="from this step on the actuator gives half the torque")
    p.add_argument("--wait-for-subscriber", action="store_true",
                   help="publish the first step, then wait for a client's subscription before the next ones")
    p.add_argument("--user", default=None, help="accept only this user, with the password in TWINWORLD_OPCUA_PASSWORD")
    p.add_argument("--print-spec", action="store_true", help="print the stream spec for these nodes and exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.print_spec:
        print(SPEC.format(dt=args.dt), end="")
        return 0
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
