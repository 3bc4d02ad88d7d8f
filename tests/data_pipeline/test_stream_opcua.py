"""`python -m data_pipeline stream --source opc.tcp://…` against a real asyncua server on loopback
(`examples/opcua_server.py` as a subprocess): jittered publishing, a bad-quality value, a server restart
mid-stream, a user with a password that must never show."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, subprocess_env
from stream_helpers import free_port, stored_series, wait_for

from data_pipeline.specfile import SpecError
from data_pipeline.stream.config import StreamSpec
from data_pipeline.stream.opcua import OpcUaOptions, OpcUaSource, time_value
from examples.opcua_server import SPEC

SECRET = "s3cr3t-Pa55word"
DT, T0 = 0.05, 1.7e9


def spec_file(tmp_path: Path) -> Path:
    """The demo server's stream spec (`python -m examples.opcua_server --print-spec`)."""
    path = tmp_path / "plant.yaml"
    path.write_text(SPEC.format(dt=0.05))
    return path


def start_server(port: int, tmp_path: Path, *args: str) -> subprocess.Popen:
    log = open(tmp_path / f"server{port}-{time.monotonic_ns()}.out", "w")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "examples.opcua_server", "--port", str(port), *args],
                            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                            env={**subprocess_env(), "TWINWORLD_OPCUA_PASSWORD": SECRET})
    wait_for(lambda: "serving" in Path(log.name).read_text(), 30, "the OPC UA server")
    return proc


def test_the_node_key_is_checked_and_never_reaches_the_file_ingest(tmp_path: Path) -> None:
    path = spec_file(tmp_path)
    printed = subprocess.run([sys.executable, "-m", "examples.opcua_server", "--print-spec"], capture_output=True,
                             text=True, check=True, cwd=REPO, env=subprocess_env()).stdout
    assert printed == path.read_text()
    spec = StreamSpec.from_yaml(path)
    assert spec.nodes["cos_theta"] == "ns=2;s=Pendulum.cos_theta"
    assert spec.nodes["theta_dot"] == "/Objects/2:Pendulum/2:theta_dot"
    assert "node" not in json.dumps(spec.ingest.raw)
    bad = tmp_path / "bad.yaml"
    bad.write_text(path.read_text().replace("ns=2;s=Pendulum.torque", "ns=two;x=Torque"))
    with pytest.raises(SpecError, match=r"bad.yaml: key 'action.channels.0.node' is 'ns=two;x=Torque'; expected an "
                                        r"OPC UA node id"):
        StreamSpec.from_yaml(bad)
    twice = tmp_path / "twice.yaml"
    twice.write_text(path.read_text().replace("ns=2;s=Pendulum.torque", "ns=2;s=Pendulum.cos_theta"))
    with pytest.raises(SpecError, match="a node no other channel reads"):
        StreamSpec.from_yaml(twice)


def test_credentials_come_from_options_and_environment_only(tmp_path: Path, monkeypatch) -> None:
    spec = StreamSpec.from_yaml(spec_file(tmp_path))
    with pytest.raises(ValueError, match="TWINWORLD_OPCUA_PASSWORD") as err:
        OpcUaSource(f"opc.tcp://op:{SECRET}@127.0.0.1:4840", spec)
    assert SECRET not in str(err.value)
    monkeypatch.setenv("TWINWORLD_OPCUA_PASSWORD", SECRET)
    with pytest.raises(ValueError, match="no user"):
        OpcUaOptions.from_env()
    options = OpcUaOptions.from_env("operator")
    assert options.password == SECRET and SECRET not in repr(options)
    (tmp_path / "partial.yaml").write_text(spec_file(tmp_path).read_text().replace(
        ', node: "ns=2;s=Pendulum.reward"', ""))
    with pytest.raises(ValueError, match="partial.yaml: channel 'reward' .* has no node"):
        OpcUaSource("opc.tcp://127.0.0.1:4840", StreamSpec.from_yaml(tmp_path / "partial.yaml"))
    assert time_value(1_700_000_000_050_000_000, spec.ingest.timestamp) == 1_700_000_000.05


def test_an_unreachable_server_is_one_error_naming_it(tmp_path: Path) -> None:
    port = free_port()
    result = subprocess.run([sys.executable, "-m", "data_pipeline", "stream", "--source", f"opc.tcp://127.0.0.1:{port}",
                             "--spec", str(spec_file(tmp_path)), "--out", str(tmp_path / "live.zarr")],
                            capture_output=True, text=True, cwd=tmp_path, env=subprocess_env(), timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"python -m data_pipeline: error: source opc.tcp://127.0.0.1:{port}: cannot connect to the OPC UA server")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_opcua_stream_survives_a_server_restart_stores_each_step_once_and_refuses_bad_quality(tmp_path: Path) -> None:
    """Jittered publishing, theta_dot of step 60 with status BadSensorFailure, the server killed after
    step ~100 and restarted at step 200: every stored step once, in time order, committed; the bad
    value is counted as rejected and never stored; the password shows nowhere."""
    port = free_port()
    spec = spec_file(tmp_path)
    common = ["--rate", "50", "--jitter", "0.5", "--user", "operator", "--wait-for-subscriber"]
    server = start_server(port, tmp_path, *common, "--bad-at", "60")
    out = tmp_path / "live.zarr"
    err = open(tmp_path / "stream.err", "w")  # noqa: SIM115
    stream = subprocess.Popen([sys.executable, "-m", "data_pipeline", "stream", "--source",
                               f"opc.tcp://127.0.0.1:{port}", "--spec", str(spec), "--out", str(out),
                               "--reorder-window", "0.3", "--commit-interval", "0.5", "--status-every", "0.5",
                               "--opcua-user", "operator"], stdout=subprocess.PIPE, stderr=err, text=True,
                              cwd=tmp_path, env={**subprocess_env(), "TWINWORLD_OPCUA_PASSWORD": SECRET})
    try:
        wait_for(lambda: "rejected: 1" in Path(err.name).read_text(), 60, "the bad-quality value")
        time.sleep(0.5)
        server.kill()  # a crash, mid-stream
        server.wait()
        server = start_server(port, tmp_path, *common, "--first-step", "200", "--steps", "60")
        wait_for(lambda: "(reconnected)" in Path(err.name).read_text(), 60, "the reconnection")
        time.sleep(2.0)  # the 60 steps of the second run: 1.2 s
    finally:
        stream.send_signal(signal.SIGINT)
        stdout, _ = stream.communicate(timeout=60)
        server.kill()
        server.wait()
    text = Path(err.name).read_text()
    assert stream.returncode == 0, text
    keys = dict(line.split(": ", 1) for line in stdout.splitlines())
    assert keys["rejected"] == "1" and "BadSensorFailure" in text and "channel 'theta_dot'" in text
    obs, _, time_ns, table = stored_series(str(out))
    steps = np.round((time_ns / 1e9 - T0) / DT).astype(int)
    assert np.all(np.diff(time_ns) > 0), "every step once, in time order"
    assert np.allclose(time_ns, np.round(T0 * 1e9 + steps * DT * 1e9), atol=1e3), "on the source clock's grid"
    before, after = steps[steps < 200], steps[steps >= 200]
    assert before.tolist() == list(range(before[-1] + 1)) and before[-1] >= 61, "before the crash: steps 0, 1, …"
    assert after.tolist() == list(range(200, 260)), "after the reconnection every published step arrives"
    assert int(keys["committed_steps"]) == len(steps)
    assert abs(obs[steps == 60, 2][0] - 7.5) > 1e-3, "the bad reading's number is never stored"
    everything = stdout + text + "".join(p.read_text(errors="replace") for p in out.rglob("*.json"))
    assert SECRET not in everything
    assert not os.environ.get("TWINWORLD_OPCUA_PASSWORD")
