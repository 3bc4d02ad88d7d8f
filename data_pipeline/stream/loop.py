"""The run loop: a source into a `StreamIngest` until the source ends or SIGINT / SIGTERM arrive.

    python -m data_pipeline stream --source mqtt://127.0.0.1:1883/plant/pendulum --spec spec.yaml --out live.zarr
    producer | python -m data_pipeline stream --source - --spec spec.yaml --out live.zarr
    python -m data_pipeline stream --source file:plant.jsonl --spec spec.yaml --out live.zarr
    python -m data_pipeline stream --source opc.tcp://127.0.0.1:4840 --spec spec.yaml --out live.zarr
"""

from __future__ import annotations

import queue
import signal
import sys
import threading
import time as _time
from collections.abc import Callable
from typing import Any

from data_pipeline.stream.config import StreamConfig, StreamSpec
from data_pipeline.stream.opcua import OpcUaOptions
from data_pipeline.stream.pipeline import StreamIngest, StreamStats, open_or_create
from data_pipeline.stream.resampler import Block
from data_pipeline.stream.sources import END, Source, make_source


class _StopFlag:
    """SIGINT / SIGTERM set the flag; the loop notices it within one poll interval."""

    def __init__(self) -> None:
        self.set = False
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.set, self.signal = True, signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class StatusLine:
    """A status line on stderr: rewritten in place on a terminal, one line per interval otherwise."""

    def __init__(self, every: float = 1.0) -> None:
        self.every = every
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def show(self, text: str, now: float, force: bool = False) -> None:
        if self.every <= 0 or (not force and now - self._last < self.every):
            return
        self._last = now
        if self.tty:
            print(f"\r{text}\033[K", end="", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty and self.every > 0:
            print(file=sys.stderr, flush=True)


def run(source: Source, ingest: StreamIngest, *, on_blocks: Callable[[list[Block]], None] | None = None,
        status: Callable[[], str] | None = None, status_every: float = 1.0, poll_interval: float = 0.05,
        stop: threading.Event | None = None) -> StreamStats:
    """Run a stream until its source ends, SIGINT / SIGTERM arrive, or `stop` is set; then commit.

    Messages that already arrived are processed before the final commit, so a clean shutdown keeps
    everything complete; the signal handlers stay until that commit is done. `on_blocks` sees every
    batch of new rows (after they went to the store).
    """
    messages: queue.Queue = queue.Queue()
    flag = _StopFlag()
    flag.install()
    line = StatusLine(status_every)
    status = status or ingest.status_line
    handle = on_blocks or (lambda blocks: None)
    try:
        try:
            source.start(messages)
            print(f"stream: reading {source.name} (SIGINT / SIGTERM commit and stop)", file=sys.stderr, flush=True)
            last_poll = 0.0
            ended = False
            while not (flag.set or ended or (stop is not None and stop.is_set())):
                deadline = _time.monotonic() + poll_interval
                while True:  # take what arrived during one poll interval, then resample it together
                    timeout = deadline - _time.monotonic()
                    try:
                        item = messages.get(timeout=timeout) if timeout > 0 else messages.get_nowait()
                    except queue.Empty:
                        break
                    if item is END:
                        ended = True
                        break
                    ingest.feed(*item)
                now = _time.monotonic()
                if now - last_poll >= poll_interval:
                    handle(ingest.poll(now))
                    last_poll = now
                line.show(status(), now)
        finally:
            source.stop()
        while True:  # what arrived before the source stopped is complete: keep it
            try:
                item = messages.get_nowait()
            except queue.Empty:
                break
            if item is not END:
                ingest.feed(*item)
        handle(ingest.finish())
    finally:  # a second SIGINT / SIGTERM during the final commit does not cut it short
        flag.restore()
    line.show(status(), _time.monotonic(), force=True)
    line.close()
    return ingest.stats


def stream(source_url: str, spec_path: str, out: str, config: StreamConfig | None = None,
           status_every: float = 1.0, opcua: OpcUaOptions | None = None) -> StreamStats:
    """`python -m data_pipeline stream`: mirror a source into the store `out` until it ends or is stopped."""
    config = config or StreamConfig()
    stream_spec = StreamSpec.from_yaml(spec_path)
    spec = stream_spec.ingest
    source = make_source(source_url, config.max_message_bytes, stream_spec, opcua)
    store = open_or_create(out, spec, spec_path, source.name)
    try:
        ingest = StreamIngest(spec, store, source.name, config)
        return run(source, ingest, status_every=status_every)  # refused messages were named as they came
    finally:
        store.close()
