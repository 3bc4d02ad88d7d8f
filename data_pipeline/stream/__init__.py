"""Streaming ingest: JSON samples from MQTT, stdin or a growing file, into a trajectory store as they arrive.

    python -m data_pipeline stream --source mqtt://127.0.0.1:1883/plant/pendulum --spec spec.yaml --out live.zarr
    producer | python -m data_pipeline stream --source - --spec spec.yaml --out live.zarr
    python -m data_pipeline stream --source file:plant.jsonl --spec spec.yaml --out live.zarr
    python -m data_pipeline stream --source opc.tcp://127.0.0.1:4840 --spec spec.yaml --out live.zarr

The spec is the CSV ingest's (docs/ingest.md), applied with the same rules (`data_pipeline.ingest`);
the pipeline and the segment layout are described in docs/live-twin.md.

| module | job |
| --- | --- |
| `messages` | `decode`: a message's JSON samples, checked by the ingest's time, range and NaN rules |
| `skew` | `SkewGuard`: a sample far from the stream's recent time: refused (glitch) or followed (clock jump) |
| `reorder` | `ReorderBuffer`: samples back into time order; duplicates and late samples dropped |
| `resampler` | `Resampler`: released samples onto the store's dt grid as `Block`s, split at gaps |
| `segments` | `SegmentWriter`: rows committed to the store as segment episodes |
| `config` | `StreamConfig`: buffering, commit, skew and message-size settings; `StreamSpec`: the spec + `node:` keys |
| `pipeline` | `StreamIngest` (decode → reorder → resample → write), `StreamStats`, `open_or_create` |
| `opcua` | `OpcUaSource`: an OPC UA server's nodes as messages (source times, quality, reconnects); `OpcUaOptions` |
| `sources` | where messages come from: `MqttSource`, `StdinSource`, `FileSource`, `make_source`; `LineSplitter` |
| `loop` | `run` (stop flag, status line, clean shutdown) and `stream`, the CLI's entry |
"""

from data_pipeline.stream.config import StreamConfig, StreamSpec
from data_pipeline.stream.loop import StatusLine, run, stream
from data_pipeline.stream.messages import Sample, StreamDataError, decode
from data_pipeline.stream.opcua import OpcUaOptions, OpcUaSource
from data_pipeline.stream.pipeline import StreamIngest, StreamStats, open_or_create
from data_pipeline.stream.reorder import ReorderBuffer
from data_pipeline.stream.resampler import Block, Resampler
from data_pipeline.stream.segments import SegmentWriter
from data_pipeline.stream.skew import SkewGuard
from data_pipeline.stream.sources import END, FileSource, LineSplitter, MqttSource, Source, StdinSource, make_source

__all__ = [
    "END",
    "Block",
    "FileSource",
    "LineSplitter",
    "MqttSource",
    "OpcUaOptions",
    "OpcUaSource",
    "ReorderBuffer",
    "Resampler",
    "Sample",
    "SegmentWriter",
    "SkewGuard",
    "Source",
    "StatusLine",
    "StdinSource",
    "StreamConfig",
    "StreamDataError",
    "StreamIngest",
    "StreamSpec",
    "StreamStats",
    "decode",
    "make_source",
    "open_or_create",
    "run",
    "stream",
]
