"""Alert sinks: where the live mirror's alerts go (stdout, and an MQTT topic when asked)."""

from __future__ import annotations

import json
import queue
from typing import Any

from data_pipeline.stream import MqttSource, Source
from twin.mirror import AlertSink


def alert_sink(topic: str | None, source: Source) -> AlertSink:
    """Print each alert as `alert: {json}`; also publish it when a topic (or mqtt:// URL) is given.

    A bare topic is published on the source's own broker connection (so it needs an mqtt:// source);
    a full mqtt:// URL gets a connection of its own, for publishing only.
    """
    client: MqttSource | None = None
    target = ""
    if topic and topic.startswith("mqtt://"):
        client = MqttSource(topic, subscribe=False)
        client.start(queue.Queue())
        target = client.topic
    elif topic and isinstance(source, MqttSource):
        client, target = source, topic
    elif topic:
        raise ValueError(f"--alert-topic {topic!r}: a bare topic needs an mqtt:// source; give a full "
                         "mqtt://HOST:PORT/TOPIC instead")

    def alert(message: dict[str, Any]) -> None:
        text = json.dumps(message)
        print(f"alert: {text}", flush=True)
        if client is not None:
            client.publish(target, text)

    return alert
