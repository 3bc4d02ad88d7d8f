"""`python -m twin.live` over OPC UA: the demo server as the plant, the twin's scores and predictions
published back to the twin's own nodes, never to the plant's."""

from __future__ import annotations

import asyncio
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO, subprocess_env
from stream_helpers import free_port, wait_for

from data_pipeline.stream.config import StreamSpec
from data_pipeline.windows.batch import Normalization
from examples.opcua_server import SPEC
from twin.opcua_publish import OpcUaPublisher
from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel

SECRET = "an0ther-s3cret"


def spec_file(tmp_path: Path) -> Path:
    """The demo server's stream spec (`python -m examples.opcua_server --print-spec`)."""
    path = tmp_path / "plant.yaml"
    path.write_text(SPEC.format(dt=0.05))
    return path


def start_server(port: int, tmp_path: Path, *args: str) -> subprocess.Popen:
    log = open(tmp_path / "server.out", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "examples.opcua_server", "--port", str(port), *args],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                            env={**subprocess_env(), "TWINWORLD_OPCUA_PASSWORD": SECRET})
    wait_for(lambda: "serving" in Path(log.name).read_text(), 30, "the OPC UA server")
    return proc


def test_the_publisher_refuses_the_plants_nodes_and_writes_only_under_its_prefix(tmp_path: Path) -> None:
    spec = StreamSpec.from_yaml(spec_file(tmp_path))
    source = SimpleNamespace(nodes=list(spec.nodes.values()), write=lambda values: None)
    with pytest.raises(ValueError, match="would write the plant's node 'ns=2;s=Pendulum.cos_theta'"):
        OpcUaPublisher(source, "ns=2;s=Pendulum", ["cos_theta"])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="expected a string node id prefix"):
        OpcUaPublisher(source, "Twin", ["cos_theta"])  # type: ignore[arg-type]
    publisher = OpcUaPublisher(source, "ns=2;s=Twin", ["cos_theta", "theta_dot"])  # type: ignore[arg-type]
    assert sorted(publisher.targets.values()) == ["ns=2;s=Twin.alert", "ns=2;s=Twin.cos_theta", "ns=2;s=Twin.score",
                                                  "ns=2;s=Twin.theta_dot"]


def mirrored(err: Path) -> int:
    """Steps the twin mirrored, from its newest status line."""
    steps = [int(line.split()[1]) for line in err.read_text().splitlines() if line.startswith("steps: ")]
    return steps[-1] if steps else 0


async def _read(port: int, nodes: list[str]) -> list:
    from asyncua import Client

    client = Client(f"opc.tcp://127.0.0.1:{port}")
    client.set_user("op")
    client.set_password(SECRET)
    async with client:
        client_nodes = [client.get_node(n) for n in nodes]
        return [await n.read_data_value() for n in client_nodes]


@pytest.mark.slow
def test_live_twin_over_opcua_publishes_scores_to_the_twin_nodes(tmp_path: Path) -> None:
    port = free_port()
    spec = StreamSpec.from_yaml(spec_file(tmp_path))
    schema = spec.ingest.schema({})
    torch.manual_seed(0)
    d, a = schema.obs_dim, schema.action_dim
    norm = Normalization(obs_mean=[0.0] * d, obs_std=[1.0] * d, obs_min=[-8.0] * d, obs_max=[8.0] * d,
                         action_mean=[0.0] * a, action_std=[1.0] * a, action_min=[-2.0] * a, action_max=[2.0] * a,
                         reward_mean=0.0, reward_std=1.0, reward_min=-20.0, reward_max=0.0)
    EnsembleWorldModel(EnsembleConfig.preset("tiny"), schema, norm).eval().save(str(tmp_path / "model.pt"))
    server = start_server(port, tmp_path, "--rate", "40", "--steps", "120", "--wait-for-subscriber", "--user", "op")
    err = open(tmp_path / "live.err", "w")  # noqa: SIM115
    live = subprocess.Popen([sys.executable, "-m", "twin.live", "--model", str(tmp_path / "model.pt"), "--spec",
                             str(tmp_path / "plant.yaml"), "--source", f"opc.tcp://127.0.0.1:{port}", "--store",
                             str(tmp_path / "live.zarr"), "--no-mlflow", "--threshold", "1.0", "--reorder-window",
                             "0.2", "--publish-opcua", "ns=2;s=Twin", "--opcua-user", "op", "--status-every", "0.5"],
                            stdout=subprocess.PIPE, stderr=err, text=True, cwd=tmp_path,
                            env={**subprocess_env(), "TWINWORLD_OPCUA_PASSWORD": SECRET})
    try:
        wait_for(lambda: mirrored(Path(err.name)) >= 100 or live.poll() is not None, 90, "the twin")
        time.sleep(1.0)
        score, alert, cos, torque = asyncio.run(_read(port, ["ns=2;s=Twin.score", "ns=2;s=Twin.alert",
                                                             "ns=2;s=Twin.cos_theta", "ns=2;s=Pendulum.torque"]))
    finally:
        live.send_signal(signal.SIGINT)
        stdout, _ = live.communicate(timeout=60)
        server.kill()
        server.wait()
    keys = dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)
    assert live.returncode == 0, Path(err.name).read_text()
    assert int(keys["published"]) > 0 and int(keys["steps"]) >= 100
    assert math.isfinite(score.Value.Value) and isinstance(alert.Value.Value, bool)
    assert -8 < cos.Value.Value < 8, "the twin's prediction of cos_theta"
    t = (score.SourceTimestamp.timestamp() - 1.7e9) / 0.05
    assert abs(t - round(t)) < 1e-3 and round(t) >= 99, "written at the row's source time"
    assert torque.SourceTimestamp == score.SourceTimestamp or torque.Value.Value != 0.0  # the plant's own value
    assert SECRET not in stdout + Path(err.name).read_text()
