"""`OpcUaPublisher`: the twin's latest prediction and anomaly score, written to OPC UA nodes for the
plant's SCADA / HMI (`python -m twin.live --publish-opcua ns=2;s=Twin`).

Advice only: it writes to the nodes under its prefix, `PREFIX.score`, `PREFIX.alert` and
`PREFIX.<obs channel>` (the twin's one-step prediction), and to nothing else; a prefix whose nodes
would be one of the plant's input nodes (the spec's `node:` keys) is refused. It writes once per
poll of the stream (the latest row), on the source's own connection, at the row's source time.
"""

from __future__ import annotations

import re

from data_pipeline.errors import InputError
from data_pipeline.stream.opcua import OpcUaSource
from twin.mirror import LiveMirror

PREFIX = re.compile(r"^(ns=\d+;s=)(.+)$")


class OpcUaPublisher:
    """Writes the mirror's latest score, alert flag and prediction to `PREFIX.score`, `.alert`, `.<channel>`."""

    def __init__(self, source: OpcUaSource, prefix: str, channels: list[str]) -> None:
        match = PREFIX.match(prefix)
        if match is None:
            raise InputError(f"--publish-opcua {prefix!r}: expected a string node id prefix, ns=N;s=NAME (e.g. "
                             "ns=2;s=Twin)")
        self.source = source
        self.targets = {name: f"{prefix}.{name}" for name in ["score", "alert", *channels]}
        plant = set(source.nodes)
        clash = sorted(set(self.targets.values()) & plant)
        if clash:
            raise InputError(f"--publish-opcua {prefix!r}: would write the plant's node {clash[0]!r}; expected a "
                             "prefix of the twin's own nodes (the twin advises, it never writes the plant's inputs)")
        self.channels = channels
        self.written = 0
        self._last_time: int | None = None

    def publish(self, mirror: LiveMirror) -> None:
        """Write the mirror's newest row, if there is one since the last call."""
        latest = mirror.latest
        if latest is None or latest.time_ns == self._last_time:
            return
        self._last_time = latest.time_ns
        t = latest.time_ns
        values: list[tuple[str, float | bool, int]] = [(self.targets["score"], latest.score, t),
                                                       (self.targets["alert"], latest.alert, t)]
        if latest.prediction is not None:
            values += [(self.targets[c], float(v), t) for c, v in zip(self.channels, latest.prediction, strict=True)]
        self.source.write(values)
        self.written += 1
