"""`--live SOURCE`: the server mirrors a live stream into a store of its own, so `current_state` sees the
plant's newest rows within about a second of their arrival.

The stream is read with data_pipeline.stream, the same pipeline as `python -m twin.live` (decode, reorder,
resample onto dt, commit segments): only read. Nothing is published to the source or sent to the plant.
The mirror lies in the server's output folder (`live.zarr`), so nothing that arrived is lost when the
server stops, and the user's store is never written.
"""

from __future__ import annotations

import threading
from pathlib import Path

from data_pipeline.errors import InputError
from data_pipeline.ingest import IngestSpec
from data_pipeline.stream import StreamConfig, StreamIngest, make_source, open_or_create, run
from data_pipeline.validate import check_schema_compatible
from worldmodel.interface import WorldModel


class LiveFeed:
    """A background thread that mirrors `source` (mqtt://HOST:PORT/TOPIC or file:PATH) into `store`."""

    def __init__(self, source: str, spec_path: str, store: Path, model: WorldModel,
                 commit_seconds: float = 1.0) -> None:
        if source == "-":
            raise InputError("--live -: standard input carries the MCP protocol; expected mqtt://HOST:PORT/TOPIC or "
                             "file:PATH")
        spec = IngestSpec.from_yaml(spec_path)
        self.source = make_source(source)
        self.store_path = str(store)
        self.store = open_or_create(self.store_path, spec, spec_path, self.source.name)
        try:
            check_schema_compatible(self.store.schema, model.schema, use="model", where=f"--live-spec {spec_path}")
        except BaseException:
            self.store.close()
            raise
        self.ingest = StreamIngest(spec, self.store, self.source.name,
                                   StreamConfig(commit_seconds=commit_seconds, reorder_window=0.2))
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="twin.mcp live", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            run(self.source, self.ingest, status_every=0, stop=self.stop)
        except BaseException as err:  # reported by current_state; the server carries on
            self.error = err

    @property
    def name(self) -> str:
        return self.source.name

    def close(self) -> None:
        """Stop reading, commit what arrived and close the mirror."""
        self.stop.set()
        self.thread.join(10)
        self.store.close()
