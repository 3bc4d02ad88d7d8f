"""A hostile OPC UA node never stalls the stream or costs other readings (data_pipeline/stream/opcua.py,
docs/security.md "One bad input never costs data"). A node may deliver a string, bytes, a date, an array
or a structure instead of a number: that value is refused and named, and the other nodes' readings are
kept. A value the decoder refuses (out of range, NaN under `nan_policy: error`) costs only its own instant.

Before: a value json.dumps cannot write failed every flush from then on (the stream stalled, reconnecting
forever), and one refused value cost every reading batched with it."""

from __future__ import annotations

import datetime as dt
import queue
from pathlib import Path
from typing import Any

import pytest
from asyncua import ua

from data_pipeline.ingest import IngestSpec
from data_pipeline.stream.config import StreamSpec
from data_pipeline.stream.messages import StreamDataError, decode
from data_pipeline.stream.opcua import OpcUaSource
from examples.opcua_server import SPEC

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
COS, THETA_DOT = 0, 2  # node positions in the demo spec: cos_theta (low -1, high 1), theta_dot


@pytest.fixture
def stream(tmp_path: Path) -> tuple[OpcUaSource, IngestSpec]:
    """A source for the demo server's spec (never connected: values are handed to it as its client would)."""
    path = tmp_path / "plant.yaml"
    path.write_text(SPEC.format(dt=0.05))
    spec = StreamSpec.from_yaml(path)
    return OpcUaSource("opc.tcp://127.0.0.1:4840", spec), spec.ingest


def _value(step: int) -> ua.DataValue:
    when = T0 + dt.timedelta(seconds=0.05 * step)
    return ua.DataValue(ua.Variant(0.0), SourceTimestamp=ua.DateTime(*when.timetuple()[:6], when.microsecond, dt.UTC),
                        StatusCode=ua.StatusCode(ua.UInt32(0)))


def _flushed(source: OpcUaSource, spec: IngestSpec) -> tuple[list[dict[str, Any]], list[str]]:
    """What the source hands the pipeline: the readings it decodes and every refusal (as the pipeline sees it)."""
    out: queue.Queue = queue.Queue()
    source._flush(out)
    readings, refused = [], []
    while not out.empty():
        payload, _ = out.get_nowait()
        if isinstance(payload, StreamDataError):
            refused.append(str(payload))
            continue
        try:
            readings += [{"t": s.time_ns, **{c: v for c, v in zip(source.columns, s.values, strict=True)
                                           if v == v}} for s in decode(payload, spec)]
        except StreamDataError as err:
            refused.append(str(err))
    return readings, refused


@pytest.mark.parametrize("hostile", ["3.5", b"\x00\x01", T0, [0.1, 0.2], ua.LocalizedText("x"), None],
                         ids=["string", "bytes", "date", "array", "structure", "empty"])
def test_a_value_that_is_no_number_is_refused_alone(stream: tuple[OpcUaSource, IngestSpec], hostile: Any) -> None:
    source, spec = stream
    source.take(COS, hostile, _value(0))
    source.take(THETA_DOT, 1.5, _value(0))  # the same instant, another node: kept
    source.take(COS, 0.5, _value(1))
    readings, refused = _flushed(source, spec)
    assert len(refused) == 1 and "node 'ns=2;s=Pendulum.cos_theta' (channel 'cos_theta')" in refused[0]
    assert "expected a number" in refused[0]
    assert [r.get("theta_dot") for r in readings] == [1.5, None] and readings[1]["cos_theta"] == 0.5
    source.take(COS, 0.25, _value(2))  # the source carries on: the next flush works
    assert _flushed(source, spec)[0][0]["cos_theta"] == 0.25


def test_a_reading_the_decoder_refuses_costs_only_its_instant(stream: tuple[OpcUaSource, IngestSpec]) -> None:
    source, spec = stream
    source.take(COS, 0.5, _value(0))
    source.take(COS, 7.0, _value(1))  # beyond cos_theta's high of 1
    source.take(COS, -0.5, _value(2))
    readings, refused = _flushed(source, spec)
    assert [r["cos_theta"] for r in readings] == [0.5, -0.5]
    assert len(refused) == 1 and "'cos_theta' is 7.0" in refused[0]



class _Client:
    """The part of asyncua's Client that `_write` uses: node ids parsed as asyncua parses them; writes recorded."""

    def __init__(self) -> None:
        from asyncua import Client

        self.real = Client("opc.tcp://127.0.0.1:4840")
        self.written: list[str] = []

    def get_node(self, text: str) -> Any:
        return self.real.get_node(text)

    async def write_values(self, nodes: list[Any], data: list[Any]) -> None:
        self.written += [n.nodeid.to_string() for n in nodes]


def test_the_twin_never_writes_a_node_it_reads_however_it_is_spelled(stream: tuple[OpcUaSource, IngestSpec],
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The spec names theta_dot by its browse path; `--publish-opcua ns=2;s=Pendulum` then targets the same node
    by its node id, which the string comparison of the publisher cannot see: the source refuses the write."""
    import asyncio

    source, _ = stream
    assert "/Objects/2:Pendulum/2:theta_dot" in source.nodes
    source._plant_ids = {ua.NodeId.from_string("ns=2;s=Pendulum.theta_dot")}  # what the browse path resolved to
    client = _Client()
    t = 1_700_000_000 * 10**9
    asyncio.run(source._write(client, [("ns=2;s=Pendulum.score", 0.5, t), ("ns=2;s=Pendulum.theta_dot", 1.0, t)]))
    assert client.written == [] and source.write_failures == 1
    assert "'ns=2;s=Pendulum.theta_dot' is a node this source reads" in capsys.readouterr().err
    asyncio.run(source._write(client, [("ns=2;s=Twin.score", 0.5, t), ("ns=2;s=Twin.theta_dot", 1.0, t)]))
    assert client.written == ["ns=2;s=Twin.score", "ns=2;s=Twin.theta_dot"]
