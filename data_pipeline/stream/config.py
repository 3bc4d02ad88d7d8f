"""`StreamConfig`: how a stream is buffered, resampled and committed (the `python -m data_pipeline
stream` options); `StreamSpec`: the ingest spec with the OPC UA node of each channel (`node:`)."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_pipeline.ingest import GROUPS, IngestSpec
from data_pipeline.specfile import SpecError, read_yaml, validate_spec

MAX_MESSAGE_BYTES = 1 << 20
"""Default largest message (1 MiB); a longer one is refused, and a source reads no more of it."""


@dataclass
class StreamConfig:
    """How a stream is buffered, resampled and committed."""

    reorder_window: float = 1.0
    """Seconds a sample waits for earlier ones (stream time, and at most this long on the wall clock)."""
    reorder_capacity: int = 100_000
    """Samples the reorder buffer holds at most; beyond it the oldest is released early."""
    commit_seconds: float = 10.0
    """Wall-clock seconds between segment commits (0: only at gaps and at shutdown)."""
    commit_rows: int = 0
    """Rows per segment; a segment is committed when it has this many (0: no row limit)."""
    seq_field: str = "seq"
    """JSON key of a message's sequence number (duplicates are detected by it when present)."""
    dedupe_memory: int = 65_536
    """How many recent sample keys are remembered to recognise duplicates."""
    flush_rows: int = 4096
    """Rows of an open segment kept in memory before they are written (uncommitted)."""
    max_skew: float | None = None
    """Seconds a sample's time may be from the stream's newest time before it is held as a possible glitch
    (`SkewGuard`); None: 10 x the spec's longest max_gap, at least 2 x reorder_window."""
    skew_confirm: int = 3
    """Far samples at distinct times that, arriving together, confirm a clock jump instead of a glitch."""
    max_message_bytes: int = MAX_MESSAGE_BYTES
    """Bytes a message may have; a longer one is refused."""

    def max_skew_s(self, spec: IngestSpec) -> float:
        """`max_skew`, or its default for `spec`."""
        if self.max_skew is not None:
            return self.max_skew
        return max(10 * max(spec.max_gap_of(g) for g in GROUPS), 2 * self.reorder_window)


NODE_EXPECTED = ("an OPC UA node id (ns=2;s=Tank.Level, ns=3;i=1001) or a browse path from the root "
                 "(/Objects/2:Tank/2:Level)")


def check_node(text: Any) -> str:
    """A channel's `node:` as written, if it is a node id or a browse path; raises ValueError otherwise.

    Node ids are parsed by asyncua (the library that reads them); a browse path is `/`-separated
    browse names from the Root folder, each `NS:Name` or a bare `Name` in namespace 0.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(NODE_EXPECTED)
    if text.startswith("/"):
        parts = text[1:].split("/")
        for part in parts:
            ns, colon, name = part.partition(":")
            if not (name if colon else ns) or (colon and not ns.isdigit()):
                raise ValueError(NODE_EXPECTED)
        return text
    from asyncua import ua

    try:
        ua.NodeId.from_string(text)
    except (ValueError, TypeError, AttributeError, IndexError, ua.UaError):
        raise ValueError(NODE_EXPECTED) from None
    return text


@dataclass
class StreamSpec:
    """An ingest spec read for a stream: the `IngestSpec`, and the OPC UA node each column is read from.

    The stream spec is the ingest spec (docs/ingest.md) plus one optional key per channel, `node:` (a
    node id or a browse path, read by an `opc.tcp://` source). Other sources ignore it; the file
    ingest refuses it (a historian export has columns, not nodes).
    """

    ingest: IngestSpec
    nodes: dict[str, str]
    """Column -> node as written in the spec, for the channels that name one."""
    path: str = "<spec>"
    """The spec file (named in errors)."""

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> StreamSpec:
        """Read and validate a stream spec; errors name the file, the key and what was expected."""
        data = read_yaml(Path(path))
        nodes: dict[str, str] = {}
        where_of: dict[str, str] = {}
        if isinstance(data, dict):
            data = copy.deepcopy(data)
            places: list[tuple[str, Any]] = [(f"{g}.channels.{i}", ch) for g in ("observation", "action")
                                             if isinstance(data.get(g), dict)
                                             and isinstance(data[g].get("channels"), list)
                                             for i, ch in enumerate(data[g]["channels"])]
            if isinstance(data.get("reward"), dict):
                places.append(("reward", data["reward"]))
            for place, channel in places:
                if not isinstance(channel, dict) or channel.get("node") is None:
                    if isinstance(channel, dict):
                        channel.pop("node", None)
                    continue
                node = channel.pop("node")
                where = f"{path}: key '{place}.node' is {node!r}; expected"
                try:
                    check_node(node)
                except ValueError as err:
                    raise SpecError(f"{where} {err}") from None
                if node in where_of:
                    raise SpecError(f"{where} a node no other channel reads ({where_of[node]} reads it too)")
                where_of[node] = place
                if isinstance(channel.get("column"), str):
                    nodes[channel["column"]] = node
        return cls(validate_spec(IngestSpec, data, str(path)), nodes, str(path))
