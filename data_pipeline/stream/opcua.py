"""`OpcUaSource`: the nodes of an OPC UA server, subscribed, as stream messages (`opc.tcp://HOST:PORT`).

    export TWINWORLD_OPCUA_PASSWORD=…          # only where the server asks for a user
    python -m data_pipeline stream --source opc.tcp://127.0.0.1:4840 --spec plant.yaml --out live.zarr \
        --opcua-user operator --opcua-security Basic256Sha256,SignAndEncrypt,client.der,client.pem

Each channel of the spec names its node (`node: ns=2;s=Tank.Level`, or a browse path
`/Objects/2:Tank/2:Level`; `StreamSpec`). Every value change of those nodes becomes a reading at the
server's *source* timestamp, in the same JSON messages the MQTT source delivers (`{"t": …, "level":
…}`, the time in the spec's timestamp unit), so the values go through the same reorder → resample →
commit path. Values of one instant are merged into one message.

Quality: a value whose status is not Good (Bad or Uncertain) is a missing reading: it is handed on as
a `StreamDataError` naming the node, the channel and the status, which the pipeline counts as
rejected; the number it carries is never used. A value without a source timestamp is refused the same
way (it cannot be placed in time).

Connection: the asyncua client runs in a thread with its own event loop. The first connection must
succeed (an unreachable server or an unknown node is an error naming it); after that a lost
connection (a server restart) is retried with backoff and the nodes are resolved and subscribed
again. A new subscription first reports each node's current value, which the source has already
delivered: values at or before the newest source time already seen for their node are dropped here
(counted in `resent`), so no step is stored twice.

Credentials and security come from options or the environment (`OpcUaOptions.from_env`), never from
the spec file, and are never printed: the password only from `TWINWORLD_OPCUA_PASSWORD`; a URL that
carries one is refused (URLs are printed and stored in the store's provenance).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import logging
import os
import queue
import sys
import threading
import time as _time
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from data_pipeline.errors import InputError, UserError
from data_pipeline.ingest.spec import TimestampSpec
from data_pipeline.stream.config import StreamSpec
from data_pipeline.stream.messages import StreamDataError

USER_ENV = "TWINWORLD_OPCUA_USER"
PASSWORD_ENV = "TWINWORLD_OPCUA_PASSWORD"
SECURITY_ENV = "TWINWORLD_OPCUA_SECURITY"
POLICIES = ("Basic128Rsa15", "Basic256", "Basic256Sha256", "Aes128Sha256RsaOaep", "Aes256Sha256RsaPss")
MODES = ("Sign", "SignAndEncrypt")
_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)


class OpcUaError(UserError, ConnectionError):
    """The OPC UA server cannot be reached, refuses the session, or lacks a node the spec names."""


@dataclass
class OpcUaOptions:
    """How to talk to the server: credentials, security, subscription settings (never from the spec file)."""

    user: str | None = None
    """User name (--opcua-user, or TWINWORLD_OPCUA_USER); None: anonymous."""
    password: str | None = field(default=None, repr=False)
    """Password (TWINWORLD_OPCUA_PASSWORD only: a command line is visible to every user of the machine)."""
    security: str | None = None
    """asyncua's security string `Policy,Mode,client_cert,client_key[,server_cert]`; None: no security."""
    publishing_ms: float = 50.0
    """Publishing interval of the subscription (ms): how often the server sends what changed."""
    queue_size: int = 10_000
    """Values a monitored item queues between two publishes; more are lost by the server (counted)."""
    connect_timeout: float = 10.0
    """Seconds the first connection may take."""
    reconnect_max_s: float = 10.0
    """Longest wait between two reconnection attempts (the wait doubles from 0.5 s)."""
    watchdog_s: float = 10.0
    """Seconds between the client's probes of a connection that went silent (and the probe's timeout)."""

    @classmethod
    def from_env(cls, user: str | None = None, security: str | None = None, **settings: Any) -> OpcUaOptions:
        """Options given on the command line, completed from TWINWORLD_OPCUA_USER / _PASSWORD / _SECURITY."""
        options = cls(user=user or os.environ.get(USER_ENV) or None,
                      password=os.environ.get(PASSWORD_ENV) or None,
                      security=security or os.environ.get(SECURITY_ENV) or None, **settings)
        options.check()
        return options

    def check(self) -> None:
        """Refuse a password without a user and a malformed security string (naming the option, not the secret)."""
        if self.password and not self.user:
            raise InputError(f"{PASSWORD_ENV} is set but no user is given; expected --opcua-user NAME or {USER_ENV}")
        if self.security is None:
            return
        parts = self.security.split(",")
        if len(parts) not in (4, 5) or parts[0] not in POLICIES or parts[1] not in MODES:
            raise InputError(f"--opcua-security {self.security!r}: expected POLICY,MODE,CLIENT_CERT,CLIENT_KEY"
                             f"[,SERVER_CERT] with POLICY one of {', '.join(POLICIES)} and MODE Sign or "
                             "SignAndEncrypt")
        for path in parts[2:]:
            if not os.path.isfile(path):
                raise InputError(f"--opcua-security: certificate or key file {path!r} not found; expected a "
                                 "readable file")


def time_value(ns: int, ts: TimestampSpec) -> int | float | str:
    """A time (int ns since the epoch) written as the spec's timestamp column expects it."""
    if ts.unit == "ns":
        return ns
    if ts.unit == "us":
        return ns // 1000 if ns % 1000 == 0 else ns / 1e3
    if ts.unit == "ms":
        return ns / 1e6
    if ts.unit == "s":
        return ns / 1e9
    when = _EPOCH + _dt.timedelta(microseconds=ns // 1000)
    return when.strftime(ts.format) if ts.format else when.isoformat()


def datetime_ns(when: _dt.datetime) -> int:
    """An OPC UA timestamp (a datetime; naive means UTC) as int ns since the epoch, exact to the microsecond."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    return (when - _EPOCH) // _dt.timedelta(microseconds=1) * 1000


def _status_name(status: Any) -> str:
    try:
        return f"{status.name} (0x{status.value:08X})"
    except (AttributeError, KeyError, ValueError):
        return str(status)


class OpcUaSource:
    """Subscribe to the spec's nodes on `opc.tcp://HOST:PORT[/PATH]`; values become stream messages.

    `start()` returns once the first subscription is made (or raises `OpcUaError`); the client then
    runs, and reconnects, in its own thread. `write()` sends values to nodes on the same connection
    (the live twin's published predictions). A `sources.Source` (the protocol), like the MQTT source.
    """

    def __init__(self, url: str, spec: StreamSpec, options: OpcUaOptions | None = None) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "opc.tcp" or not parsed.hostname:
            raise InputError(f"source {url!r}: expected opc.tcp://HOST:PORT")
        if parsed.password is not None:
            raise InputError(f"source opc.tcp://…@{parsed.hostname}: a password in the URL would be printed and "
                             f"stored in the store's provenance; expected it in {PASSWORD_ENV}")
        self.options = options or OpcUaOptions()
        self.options.check()
        # asyncua's own warnings (revised session timeouts, plaintext notes) are noise on a stream's terminal;
        # its debug logs would show session requests. Errors still show.
        logging.getLogger("asyncua").setLevel(logging.ERROR)
        if parsed.username and not self.options.user:
            self.options.user = urllib.parse.unquote(parsed.username)
        port = parsed.port or 4840
        self.url = f"opc.tcp://{parsed.hostname}:{port}{parsed.path}"
        self.name = self.url
        ingest = spec.ingest
        self.timestamp = ingest.timestamp
        self.columns = [ch.column for _, ch in ingest.channels()]
        names = [ch.name for _, ch in ingest.channels()]
        missing = [c for c in self.columns if c not in spec.nodes]
        if missing:
            name = names[self.columns.index(missing[0])]
            raise InputError(f"{spec.path}: channel {name!r} (column {missing[0]!r}) has no node; expected `node: "
                             "ns=2;s=…` (or a browse path) on every channel read from an opc.tcp:// source")
        self.nodes = [spec.nodes[c] for c in self.columns]
        self.names = names
        self.resent = 0
        """Values dropped because their node already delivered a value at that source time (resubscribes)."""
        self.overflows = 0
        """Values the server reported lost from a monitored item's queue (publishing too slow)."""
        self.connections = 0
        self.write_failures = 0
        self.subscribed = threading.Event()
        self._newest: list[int | None] = [None] * len(self.columns)  # newest source time seen per node
        self._fresh = [True] * len(self.columns)  # no report yet since the node was (re)subscribed
        self._pending: list[dict[str, Any]] = []  # messages being built, one per source time
        self._at: dict[int, dict[str, Any]] = {}  # source time -> its message in _pending
        self._refused: list[StreamDataError] = []
        self._stop = threading.Event()
        self._failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Any = None
        self._thread: threading.Thread | None = None
        self._plant_ids: set[Any] = set()
        """The node ids the read nodes resolved to: never written, however a writer spells them."""

    # ------------------------------------------------------------------ Source
    def start(self, out: queue.Queue) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main(out)), name="opcua-source",
                                        daemon=True)
        self._thread.start()
        if not self.subscribed.wait(self.options.connect_timeout + 5) and self._failed is None:
            self._failed = OpcUaError(f"source {self.name}: no subscription within "
                                      f"{self.options.connect_timeout + 5:g} s")
        if self._failed is not None:
            self.stop()
            raise self._failed

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def write(self, values: list[tuple[str, Any, int]]) -> None:
        """Write `(node id, value, time ns)` on the source's connection, without waiting (advice: a value
        that cannot be written while the connection is down is dropped; the next one replaces it)."""
        loop, client = self._loop, self._client
        if loop is None or client is None or not values:
            return
        asyncio.run_coroutine_threadsafe(self._write(client, values), loop)

    # ------------------------------------------------------------------ the client's thread
    async def _main(self, out: queue.Queue) -> None:
        self._loop = asyncio.get_running_loop()
        delay = 0.5
        while not self._stop.is_set():
            try:
                await self._session(out)
                delay = 0.5
            except Exception as err:  # noqa: BLE001 - any failure of a session: report, then reconnect
                if not self.subscribed.is_set():
                    self._failed = err if isinstance(err, UserError) else OpcUaError(
                        f"source {self.name}: cannot connect to the OPC UA server ({type(err).__name__}: "
                        f"{str(err) or 'no answer'})")
                    self.subscribed.set()
                    return
                print(f"stream: {self.name}: connection lost ({type(err).__name__}: {err}); reconnecting in "
                      f"{delay:g} s", file=sys.stderr, flush=True)
            if self._stop.wait(0) or await self._sleep(delay):
                break
            delay = min(2 * delay, self.options.reconnect_max_s)

    async def _sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if the source was stopped meanwhile."""
        deadline = _time.monotonic() + seconds
        while _time.monotonic() < deadline:
            if self._stop.is_set():
                return True
            await asyncio.sleep(0.05)
        return self._stop.is_set()

    async def _session(self, out: queue.Queue) -> None:
        """One connection: connect, resolve and subscribe the nodes, hand on values until it is lost."""
        from asyncua import Client, ua

        # A closed socket is noticed at once; the watchdog's probe is for a silent one. Its answer may wait behind
        # thousands of value changes on a busy stream: a 1 s probe (asyncua's default) would drop good connections.
        client = Client(self.url, timeout=self.options.connect_timeout, watchdog_intervall=self.options.watchdog_s)
        if self.options.user:
            client.set_user(self.options.user)
        if self.options.password:
            client.set_password(self.options.password)
        if self.options.security:
            await client.set_security_string(self.options.security)
        lost = asyncio.Event()

        async def on_lost(exc: Exception) -> None:
            lost.set()

        client.connection_lost_callback = on_lost
        await asyncio.wait_for(client.connect(), self.options.connect_timeout)
        try:
            nodes = [await self._resolve(client, k) for k in range(len(self.nodes))]
            self._plant_ids = {node.nodeid for node in nodes}
            self._fresh = [True] * len(self.columns)
            sub = await client.create_subscription(self.options.publishing_ms, _Handler(self))
            requests = [ua.MonitoredItemCreateRequest(
                ItemToMonitor=ua.ReadValueId(NodeId=node.nodeid, AttributeId=ua.AttributeIds.Value),
                MonitoringMode=ua.MonitoringMode.Reporting,
                RequestedParameters=ua.MonitoringParameters(
                    ClientHandle=k + 1, SamplingInterval=0.0, QueueSize=self.options.queue_size, DiscardOldest=True,
                    # every new source time is a reading, also when the value repeats (a steady sensor)
                    Filter=ua.DataChangeFilter(Trigger=ua.DataChangeTrigger.StatusValueTimestamp)))
                for k, node in enumerate(nodes)]
            for k, result in enumerate(await sub.create_monitored_items(requests)):
                if isinstance(result, ua.StatusCode):
                    raise OpcUaError(f"source {self.name}: node {self.nodes[k]!r} (channel {self.names[k]!r}) cannot "
                                     f"be subscribed ({_status_name(result)}); expected a readable variable node")
            self._client = client
            self.connections += 1
            print(f"stream: subscribed to {len(nodes)} nodes on {self.name}"
                  + (" (reconnected)" if self.connections > 1 else ""), file=sys.stderr, flush=True)
            self.subscribed.set()
            while not (lost.is_set() or self._stop.is_set()):
                await asyncio.sleep(0.01)
                self._flush(out)
            if lost.is_set():
                raise ConnectionError("the server closed the connection")
        finally:
            self._client = None
            self._flush(out)
            try:
                await asyncio.wait_for(client.disconnect(), 2.0)
            except Exception:  # noqa: BLE001, S110 - the connection is gone already; nothing to close
                pass

    async def _resolve(self, client: Any, k: int) -> Any:
        from asyncua import ua

        text = self.nodes[k]
        try:
            if text.startswith("/"):
                return await client.nodes.root.get_child([p if ":" in p else f"0:{p}" for p in text[1:].split("/")])
            node = client.get_node(text)
            await node.read_browse_name()  # an unknown node id fails here, named, not at subscription
            return node
        except ua.UaStatusCodeError as err:
            raise OpcUaError(f"source {self.name}: node {text!r} (channel {self.names[k]!r}) not found on the server "
                             f"({_status_name(ua.StatusCode(err.code))}); expected a node id or browse path of "
                             "a variable the server has") from None

    async def _write(self, client: Any, values: list[tuple[str, Any, int]]) -> None:
        from asyncua import ua

        try:
            nodes = [client.get_node(node) for node, _, _ in values]
            clash = [text for (text, _, _), node in zip(values, nodes, strict=True) if node.nodeid in self._plant_ids]
            if clash:  # a read node named another way (a browse path in the spec, a node id here): never written
                raise OpcUaError(f"node {clash[0]!r} is a node this source reads (the plant's); nothing written")
            data = [ua.DataValue(ua.Variant(value, ua.VariantType.Boolean if isinstance(value, bool)
                                            else ua.VariantType.Double),
                                 SourceTimestamp=ua.DateTime(1970, 1, 1, tzinfo=_dt.UTC)
                                 + _dt.timedelta(microseconds=t // 1000))
                    for _, value, t in values]
            await client.write_values(nodes, data)
        except Exception as err:  # noqa: BLE001 - advice only: a failed write never stops the stream
            self.write_failures += 1
            if self.write_failures <= 5:  # the first few named; a server that refuses every write is not a flood
                print(f"stream: {self.name}: write of {len(values)} values failed ({type(err).__name__}: {err})"
                      + ("; further failed writes are counted, not shown" if self.write_failures == 5 else ""),
                      file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ values into messages
    def take(self, k: int, value: Any, data_value: Any) -> None:
        """One value change of node `k`: merged into the message of its source time, or refused."""
        status = data_value.StatusCode
        if status is not None and status.value & 0x480 == 0x480:  # InfoType DataValue + Overflow: values lost
            self.overflows += 1
            if self.overflows == 1:
                print(f"stream: {self.name}: the server dropped values of node {self.nodes[k]!r} (its queue "
                      "overflowed); expected a larger queue or a shorter publishing interval", file=sys.stderr)
        when = data_value.SourceTimestamp
        if when is None:
            self._refused.append(StreamDataError(
                f"node {self.nodes[k]!r} (channel {self.names[k]!r}): no source timestamp; expected the server to "
                "stamp each value at its source"))
            return
        ns = datetime_ns(when)
        newest = self._newest[k]
        if self._fresh[k]:  # a subscription's first report: the node's current value, perhaps delivered already
            self._fresh[k] = False
            if newest is not None and ns <= newest:
                self.resent += 1
                return
        self._newest[k] = ns if newest is None else max(ns, newest)
        if status is not None and not status.is_good():
            self._refused.append(StreamDataError(
                f"node {self.nodes[k]!r} (channel {self.names[k]!r}) at t={ns} ns has status {_status_name(status)}; "
                "a value of bad or uncertain quality is a missing reading (expected Good)"))
            return
        if not isinstance(value, bool | int | float):  # a string, an array, bytes, a date, a structure: refused
            # alone, so the other nodes' readings of this instant are kept (and json.dumps never sees what it cannot
            # write: it failed the whole batch, at every flush after, and the stream stalled)
            self._refused.append(StreamDataError(
                f"node {self.nodes[k]!r} (channel {self.names[k]!r}) at t={ns} ns has a value of type "
                f"{type(value).__name__}; expected a number"))
            return
        column = self.columns[k]
        message = self._at.get(ns)
        if message is None or column in message:  # a second value of one node at one instant: its own message
            message = self._at[ns] = {self.timestamp.column: time_value(ns, self.timestamp)}
            self._pending.append(message)
        message[column] = int(value) if isinstance(value, bool) else value

    def _flush(self, out: queue.Queue) -> None:
        now = _time.monotonic()
        for refusal in self._refused:
            out.put((refusal, now))
        self._refused = []
        for message in self._pending:  # one payload per source time: a refused reading costs only its instant
            out.put((json.dumps(message).encode(), now))
        self._pending, self._at = [], {}


class _Handler:
    """asyncua's subscription handler: hands each value change to the source (in the client's event loop)."""

    def __init__(self, source: OpcUaSource) -> None:
        self.source = source

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.source.take(data.subscription_data.client_handle - 1, val, data.monitored_item.Value)

    def status_change_notification(self, status: Any) -> None:
        print(f"stream: {self.source.name}: subscription status {_status_name(status.Status)}", file=sys.stderr,
              flush=True)
