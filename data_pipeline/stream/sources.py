"""Where messages come from: an MQTT topic, standard input, a growing file, or an OPC UA server
(`data_pipeline.stream.opcua`) (`make_source`).

Each source runs in its own thread and puts `(payload, arrival)` on a queue; `END` on the queue
says the source has ended (stdin at EOF). A line longer than the message limit is cut to one byte
over it (the decoder refuses it) and the rest skipped, so a source's memory stays bounded.
"""

from __future__ import annotations

import os
import queue
import select
import sys
import threading
import time as _time
import urllib.parse
from typing import Any, Protocol

from data_pipeline.errors import InputError
from data_pipeline.stream.config import MAX_MESSAGE_BYTES, StreamSpec
from data_pipeline.stream.opcua import OpcUaOptions, OpcUaSource

END = object()
"""Put on the queue by a source that has ended (stdin at EOF)."""


class LineSplitter:
    """Bytes into lines (without the newline), each cut to at most `limit` + 1 bytes.

    A line longer than `limit` comes out as its first `limit` + 1 bytes, once, as soon as that much
    has arrived (the decoder refuses it as too large); the rest of it is skipped up to its newline.
    """

    def __init__(self, limit: int = MAX_MESSAGE_BYTES) -> None:
        self.limit = limit
        self.partial = b""
        self.skipping = False

    def feed(self, chunk: bytes) -> list[bytes]:
        lines = (self.partial + chunk).split(b"\n")
        rest = lines.pop()
        out = []
        for line in lines:
            if not self.skipping:
                out.append(line[: self.limit + 1])
            self.skipping = False
        if self.skipping:
            rest = b""
        elif len(rest) > self.limit:
            out.append(rest[: self.limit + 1])
            rest, self.skipping = b"", True
        self.partial = rest
        return out

    def tail(self) -> bytes:
        """The last line when the input ends without a newline (empty if there is none)."""
        tail, self.partial = self.partial, b""
        return tail


class Source(Protocol):
    """Where messages come from: `start()` puts `(payload, arrival)` on a queue from its own thread.

    A protocol, so that a source in a module of its own (`opcua.OpcUaSource`) is one without importing
    this module; the sources here subclass it for its defaults.
    """

    name: str = ""

    def start(self, out: queue.Queue) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        pass


class MqttSource(Source):
    """Subscribe to `mqtt://host:port/topic[?qos=1]` (paho-mqtt 2.x); wildcards `+` and `#` (as %23) allowed.

    Connects at `start()` (an unreachable broker is an error naming the URL) and reconnects by itself
    afterwards. `publish()` sends on the same connection (alerts).
    """

    def __init__(self, url: str, client_id: str = "", subscribe: bool = True) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "mqtt" or not parsed.hostname:
            raise InputError(f"source {url!r}: expected mqtt://HOST[:PORT]/TOPIC")
        self.name = url.split("?")[0]
        self.host = parsed.hostname
        self.port = parsed.port or 1883
        self.topic = urllib.parse.unquote(parsed.path.lstrip("/"))
        if not self.topic:
            raise InputError(f"source {url!r}: no topic; expected mqtt://{self.host}:{self.port}/TOPIC")
        query = urllib.parse.parse_qs(parsed.query)
        self.qos = int(query.get("qos", ["1"])[0])
        self.client_id = client_id
        self.subscribe = subscribe
        self.subscribed = threading.Event()
        self._client: Any = None

    def start(self, out: queue.Queue) -> None:
        import paho.mqtt.client as mqtt

        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id)

        def on_connect(c: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
            if self.subscribe:
                c.subscribe(self.topic, qos=self.qos)  # again after every reconnect

        def on_subscribe(c: Any, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
            if not self.subscribed.is_set():
                print(f"stream: subscribed to {self.name} (qos {self.qos})", file=sys.stderr, flush=True)
            self.subscribed.set()

        def on_message(c: Any, userdata: Any, msg: Any) -> None:
            out.put((msg.payload, _time.monotonic()))

        client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        try:
            client.connect(self.host, self.port, keepalive=30)
        except OSError as err:
            raise ConnectionError(f"source {self.name}: cannot connect to the MQTT broker at "
                                  f"{self.host}:{self.port} ({err})") from err
        client.loop_start()
        self._client = client

    def publish(self, topic: str, payload: str) -> None:
        if self._client is not None:
            self._client.publish(topic, payload, qos=1)

    def stop(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None


class StdinSource(Source):
    """JSON lines on standard input; the stream ends at EOF.

    The reader polls the file descriptor (select) and reads it with os.read, never through
    sys.stdin's buffered reader: a thread blocked in that reader would hold its lock, and the
    interpreter would abort at exit after SIGINT / SIGTERM while the producer keeps stdin open.
    """

    name = "stdin"

    def __init__(self, max_message_bytes: int = MAX_MESSAGE_BYTES, poll_s: float = 0.05) -> None:
        self.max_message_bytes = max_message_bytes
        self.poll_s = poll_s
        self._stop = threading.Event()

    def start(self, out: queue.Queue) -> None:
        threading.Thread(target=self._read, args=(sys.stdin.fileno(), out), name="stdin-source", daemon=True).start()

    def _read(self, fd: int, out: queue.Queue) -> None:
        lines = LineSplitter(self.max_message_bytes)
        while not self._stop.is_set():
            if not select.select([fd], [], [], self.poll_s)[0]:
                continue
            chunk = os.read(fd, 1 << 16)
            now = _time.monotonic()
            if not chunk:  # EOF
                tail = lines.tail()
                if tail.strip():
                    out.put((tail, now))
                out.put(END)
                return
            for line in lines.feed(chunk):
                out.put((line, now))

    def stop(self) -> None:
        self._stop.set()


class FileSource(Source):
    """Follow a JSON-lines file as it grows (like `tail -f`), from its start; waits for it to appear.

    A partial last line waits for its newline. A file that shrinks (rotated or truncated) is read
    again from its start. Runs until stopped.
    """

    def __init__(self, path: str, poll_s: float = 0.05, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.path = path
        self.name = f"file:{path}"
        self.poll_s = poll_s
        self.max_message_bytes = max_message_bytes
        self._stop = threading.Event()

    def start(self, out: queue.Queue) -> None:
        threading.Thread(target=self._follow, args=(out,), name="file-source", daemon=True).start()

    def _follow(self, out: queue.Queue) -> None:
        pos, lines = 0, LineSplitter(self.max_message_bytes)
        while not self._stop.is_set():
            try:
                size = os.stat(self.path).st_size
            except FileNotFoundError:
                self._stop.wait(self.poll_s)
                continue
            if size < pos:  # truncated or replaced: start again
                pos, lines = 0, LineSplitter(self.max_message_bytes)
            if size == pos:
                self._stop.wait(self.poll_s)
                continue
            with open(self.path, "rb") as f:
                f.seek(pos)
                chunk = f.read(min(size - pos, 1 << 20))  # a huge append is read in pieces: memory stays bounded
            pos += len(chunk)
            now = _time.monotonic()
            for line in lines.feed(chunk):
                if line.strip():
                    out.put((line, now))

    def stop(self) -> None:
        self._stop.set()


def make_source(url: str, max_message_bytes: int = MAX_MESSAGE_BYTES, spec: StreamSpec | None = None,
                opcua: OpcUaOptions | None = None) -> Source:
    """`mqtt://host:port/topic`, `-` (stdin), `file:PATH` or `opc.tcp://host:port` (which reads the nodes
    `spec` names, with `opcua`'s credentials); lines longer than `max_message_bytes` are cut."""
    if url.startswith("opc.tcp://"):
        if spec is None:
            raise InputError(f"source {url!r}: an opc.tcp:// source needs the spec's nodes")
        return OpcUaSource(url, spec, opcua)
    if url == "-":
        return StdinSource(max_message_bytes)
    if url.startswith("file:"):
        return FileSource(url[len("file:"):], max_message_bytes=max_message_bytes)
    if url.startswith("mqtt://"):
        return MqttSource(url)
    raise InputError(f"source {url!r}: expected mqtt://HOST:PORT/TOPIC, opc.tcp://HOST:PORT, '-' (JSON lines on "
                     "stdin) or file:PATH")
