"""Helpers shared by the stream and live-twin tests: a Pendulum spec and samples, waiting, counting
committed rows, and an MQTT publisher. The `mqtt_broker` fixture lives in tests/conftest.py."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

import numpy as np
import pandas as pd

from data_pipeline.store import TrajectoryStore

PENDULUM_SPEC = {
    "timestamp": {"column": "t", "unit": "s"}, "dt": 0.05,
    "observation": {"channels": [{"column": "cos_theta", "unit": "1", "low": -1.0, "high": 1.0},
                                 {"column": "sin_theta", "unit": "1", "low": -1.0, "high": 1.0},
                                 {"column": "theta_dot", "unit": "rad/s", "low": -8.0, "high": 8.0}]},
    "action": {"channels": [{"column": "torque", "unit": "N*m", "low": -2.0, "high": 2.0}]},
    "reward": {"column": "reward"},
}


def pendulum_samples(steps: int = 120, seed: int = 0, jitter: float = 0.0) -> list[dict]:
    """A random-policy Pendulum-v1 episode as JSON samples (one per step), timestamps optionally jittered."""
    import gymnasium as gym

    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(seed)
    o, _ = env.reset(seed=seed)
    out = []
    for k in range(steps):
        a = float(rng.uniform(-2, 2))
        o2, r, *_ = env.step([a])
        t = 100.0 + k * 0.05 + (rng.uniform(-jitter, jitter) * 0.05 if 0 < k < steps - 1 else 0.0)
        out.append({"t": round(t, 6), "seq": k, "cos_theta": float(o[0]), "sin_theta": float(o[1]),
                    "theta_dot": float(o[2]), "torque": a, "reward": float(r)})
        o = o2
    return out


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def committed_steps(path: str) -> int:
    try:
        with TrajectoryStore.open(path) as store:
            return store.num_steps
    except (FileNotFoundError, KeyError, ValueError):
        return 0


def stored_series(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.DataFrame]:
    """Committed segments joined back into one series (a continuing segment repeats the previous last row)."""
    with TrajectoryStore.open(path) as store:
        table = store.episodes()
        obs, action, time_ns = [], [], []
        for i in range(store.num_episodes):
            ep = store.read_episode(i)
            skip = 1 if time_ns and ep.time[0] == time_ns[-1][-1] else 0
            if skip:
                action[-1][-1] = ep.action[0]  # the shared row: its action is the continuing segment's
            obs.append(ep.obs[skip:])
            action.append(ep.action[skip:].copy())
            time_ns.append(ep.time[skip:])
    return np.concatenate(obs), np.concatenate(action), np.concatenate(time_ns), table


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Publisher:
    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, samples: list[dict], pause: float = 0.0) -> None:
        infos = []
        for s in samples:
            infos.append(self.client.publish(topic, json.dumps(s), qos=1))
            if pause:
                time.sleep(pause)
        for info in infos:
            info.wait_for_publish(timeout=10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
