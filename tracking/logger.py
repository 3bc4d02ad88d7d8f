"""MLflow tracking that survives a tracking server's outage.

`BufferedMLflowLogger` is a Lightning logger that batches metrics locally and sends them with
`log_batch` every few seconds (one call per batch, not per metric: a per-call `log_metric` costs
~90 ms against a remote server). A failed send keeps the metrics in the buffer and retries later,
backing off up to a minute between tries, so a server that goes away and comes back loses nothing
and an unreachable one costs training little; MLflow's own HTTP retries are turned off
(`configure_client`). Metrics are also appended to a local JSON-lines spool, so a crash during an
outage leaves them on disk, and a resumed run (same run id) sends the spool again first: the
tracking store drops the duplicates of what did arrive. A run that fails is marked FAILED where the
server can be told; the end of a successful fit is tracking/publish.py's.
"""

from __future__ import annotations

import json
import os
import time
from argparse import Namespace
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightning.pytorch.loggers.logger import Logger, rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

if TYPE_CHECKING:
    from mlflow import MlflowClient

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` if set, else the embedded SQLite store `mlflow.db` in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def configure_client() -> None:
    """Fail fast on an unreachable server (we buffer and retry ourselves) instead of MLflow's minutes of retries."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config to MLflow params (`a.b.c: value`), values cut to MLflow's 6000 characters."""
    out: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Namespace):
            value = vars(value)
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = str(value)[:6000]
    return out


class BufferedMLflowLogger(Logger):
    """Lightning logger: MLflow run with buffered, outage-tolerant metric logging."""

    def __init__(
        self,
        experiment_name: str = "twinworld",
        run_name: str | None = None,
        run_id: str | None = None,
        tags: dict[str, str] | None = None,
        flush_interval_s: float = 5.0,
        spool_dir: str | None = None,
        max_backoff_s: float = 60.0,
        tracking_uri: str | None = None,
        finalize_timeout_s: float | None = None,
    ) -> None:
        """
        Args:
            experiment_name: MLflow experiment (created if missing).
            run_name: name of a new run.
            run_id: an existing run to continue (a resumed training); its params are not re-logged.
            tags: tags of a new run.
            flush_interval_s: seconds between sends of the buffered metrics.
            spool_dir: folder of the local metric spool (default `.twinworld-spool` in the working directory).
            max_backoff_s: longest wait between tries while the server is unreachable.
            tracking_uri: the tracking server (default: `tracking_uri()`, i.e. `MLFLOW_TRACKING_URI`).
            finalize_timeout_s: how long `finalize` keeps retrying to deliver what is left (default:
                `TWINWORLD_MLFLOW_FLUSH_TIMEOUT`, else 300 s); 0 tries once.
        """
        super().__init__()
        configure_client()
        self._experiment_name = experiment_name
        self._run_name = run_name
        self._run_id = run_id
        self._resuming = run_id is not None
        self._tags = tags or {}
        self.flush_interval_s = flush_interval_s
        self.max_backoff_s = max_backoff_s
        self._buffer: list[tuple[str, float, int, int]] = []
        self._last_flush = 0.0
        self._retry_in = flush_interval_s  # grows while the server is away (backoff), reset on success
        self._client: MlflowClient | None = None
        self._spool_dir = spool_dir
        self._tracking_uri = tracking_uri
        self.finalize_timeout_s = finalize_timeout_s
        self.failed_flushes = 0
        self.last_error = ""  # why the last send failed ("" after a success)

    # -------------------------------------------------------------- mlflow objects
    @property
    @rank_zero_experiment
    def experiment(self) -> MlflowClient:
        if self._client is None:
            from mlflow import MlflowClient

            client = self._client = MlflowClient(self.tracking_uri)
            if self._run_id is None:
                exp = client.get_experiment_by_name(self._experiment_name)
                exp_id = exp.experiment_id if exp else client.create_experiment(self._experiment_name)
                run = client.create_run(exp_id, run_name=self._run_name, tags=self._tags)
                self._run_id = run.info.run_id
            else:
                self._resend_spool()
        return self._client

    def _resend_spool(self) -> None:
        """A resumed run: queue what the previous process spooled but may not have delivered."""
        path = self.spool_dir / f"{self._run_id}.jsonl"
        if not path.exists():
            return
        rows = []
        for line in path.read_text().splitlines():
            try:
                key, value, timestamp, step = json.loads(line)
                rows.append((str(key), float(value), int(timestamp), int(step)))
            except (ValueError, TypeError):
                continue  # a line cut short by the crash
        self._buffer[:0] = rows

    @property
    def tracking_uri(self) -> str:
        """The tracking server this logger sends to."""
        return self._tracking_uri or tracking_uri()

    @property
    def spool_dir(self) -> Path:
        """The folder of the local metric spool (absolute)."""
        return Path(self._spool_dir or ".twinworld-spool").absolute()

    @property
    def active_run_id(self) -> str | None:
        """The MLflow run's id, created on first use; None on DDP ranks other than 0, which log nothing."""
        _ = self.experiment
        return self._run_id

    @property
    def run_id(self) -> str:
        """The MLflow run's id (on the process that logs: rank 0 under DDP)."""
        run_id = self.active_run_id
        if run_id is None:
            raise RuntimeError("no MLflow run on this process: under DDP only rank 0 logs")
        return run_id

    @property
    def name(self) -> str:
        return self._experiment_name

    @property
    def version(self) -> str | None:
        return self.active_run_id

    @property
    def save_dir(self) -> str | None:
        return None

    @property
    def spool_path(self) -> Path:
        base = self.spool_dir
        base.mkdir(parents=True, exist_ok=True)
        return base / f"{self.run_id}.jsonl"

    # -------------------------------------------------------------- logging
    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace) -> None:
        if isinstance(params, Namespace):
            params = vars(params)
        from mlflow.entities import Param

        flat = flatten(params)
        changed: dict[str, str] = {}
        if self._resuming:
            # MLflow params are immutable: a resumed run logs only new keys; values that differ from the
            # first attempt's (e.g. `ckpt_path`) go to tags `resume.<key>` instead of failing the run.
            logged = self.experiment.get_run(self.run_id).data.params
            changed = {k: v for k, v in flat.items() if k in logged and logged[k] != v}
            flat = {k: v for k, v in flat.items() if k not in logged}
        items = [Param(k, v) for k, v in flat.items()]
        for i in range(0, len(items), 100):  # MLflow's log_batch takes at most 100 params per call
            self.experiment.log_batch(self.run_id, params=items[i : i + 100])
        for key, value in changed.items():
            self.experiment.set_tag(self.run_id, f"resume.{key}", value[:5000])

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        rows = [(k, float(v), now, int(step or 0)) for k, v in metrics.items() if not isinstance(v, str)]
        self._buffer.extend(rows)
        with self.spool_path.open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        if time.monotonic() - self._last_flush >= self._retry_in:
            self.flush()

    def flush(self) -> bool:
        """Send buffered metrics; on failure keep them for the next try. True when the buffer is empty.

        Never raises: an unreachable or failing server only delays delivery.
        """
        if not self._buffer:
            return True
        from mlflow.entities import Metric

        self._last_flush = time.monotonic()
        try:
            while self._buffer:
                chunk = self._buffer[:1000]  # log_batch takes at most 1000 metrics per call
                self.experiment.log_batch(self.run_id, metrics=[Metric(*row) for row in chunk])
                del self._buffer[: len(chunk)]
        except Exception as err:  # the server is away: keep the metrics and try again later
            self.failed_flushes += 1
            self.last_error = f"{type(err).__name__}: {str(err)[:300]}"
            self._retry_in = min(self.max_backoff_s, max(self._retry_in, self.flush_interval_s) * 2)
            if self.failed_flushes in (1, 10, 100) or self.failed_flushes % 1000 == 0:
                print(f"mlflow: tracking server unreachable ({type(err).__name__}); "
                      f"{len(self._buffer)} metrics buffered, retrying in {self._retry_in:.1f} s")
            return False
        if self.failed_flushes and self._retry_in > self.flush_interval_s:
            print("mlflow: tracking server back; buffered metrics delivered")
        self._retry_in = self.flush_interval_s
        self.last_error = ""
        return True

    @rank_zero_only
    def finalize(self, status: str) -> None:
        """Flush what is left, retrying for up to `finalize_timeout_s`; Lightning calls it at the end of a
        run (`success`) or on an error or interrupt (`failed`), and a failed run is then marked FAILED."""
        timeout = self.finalize_timeout_s
        if timeout is None:
            timeout = float(os.environ.get("TWINWORLD_MLFLOW_FLUSH_TIMEOUT", "300"))
        deadline = time.monotonic() + timeout
        while not self.flush() and time.monotonic() < deadline:
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        if self._buffer:
            print(f"mlflow: {len(self._buffer)} metrics not delivered; they are in {self.spool_path}")
        elif self._client is not None:
            self.spool_path.unlink(missing_ok=True)
        if status == "failed" and self._client is not None and self._run_id is not None:
            try:  # never RUNNING after a crash; a resumed run continues it, publishing marks it FINISHED
                self._client.set_terminated(self._run_id, "FAILED")
            except Exception as err:  # the server is away: the run stays RUNNING there, say so
                print(f"mlflow: could not mark run {self._run_id} FAILED ({type(err).__name__}); it shows "
                      "RUNNING until a resumed run or `python -m tracking.publish` ends it")

    @rank_zero_only
    def log_stop(self, summary: str, epochs: int, best_epoch: int | None) -> None:
        """Why a fit stopped: the tag `twinworld.stopped` (the `stopped: …` line) and the metrics `epochs` and
        `best_epoch` (buffered and spooled, so an outage delays them only). A tag the server cannot take now is
        reported, not retried: the line is in the command's output and the metrics carry the numbers."""
        metrics = {"epochs": float(epochs)} | ({} if best_epoch is None else {"best_epoch": float(best_epoch)})
        self.log_metrics(metrics, step=0)
        try:
            self.experiment.set_tag(self.run_id, "twinworld.stopped", summary.removeprefix("stopped: ")[:5000])
        except Exception as err:  # the server is away: publishing retries the rest and says so
            print(f"mlflow: could not set the tag twinworld.stopped ({type(err).__name__})")

    def end_run(self, status: str = "FINISHED") -> None:
        if self._client is not None and self._run_id is not None:
            self.finalize(status)
            self._client.set_terminated(self._run_id, status)
