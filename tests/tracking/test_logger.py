"""The buffered MLflow logger: metrics survive a tracking server that is away, and a crash.

- Unit level (fast): a send that fails keeps the metrics, a later one delivers them; the spool of a
  crashed run is sent again when the run resumes.
- End to end (slow, issue 8): a real `mlflow server` process killed in the middle of a run and restarted
  on the same port: training goes on, and every metric logged during the outage reaches the server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import pytest
from lightning.pytorch.callbacks import Callback
from training_helpers import quiet_trainer, tiny_datamodule

from tracking.logger import BufferedMLflowLogger
from worldmodel.lightning import WorldModelModule


class _FlakyClient:
    """An MlflowClient stand-in whose `log_batch` fails while `down` is set."""

    def __init__(self) -> None:
        self.down = False
        self.received: list[tuple[str, float, int]] = []
        self.status: dict[str, str] = {}

    def set_terminated(self, run_id: str, status: str) -> None:
        if self.down:
            raise ConnectionError("server away")
        self.status[run_id] = status

    def log_batch(self, run_id: str, metrics: Any = (), params: Any = ()) -> None:
        if self.down:
            raise ConnectionError("server away")
        self.received += [(m.key, m.value, m.step) for m in metrics]


def _offline_logger(tmp_path: Path, run_id: str = "run-1") -> tuple[BufferedMLflowLogger, _FlakyClient]:
    logger = BufferedMLflowLogger(run_id=run_id, flush_interval_s=0.0, spool_dir=str(tmp_path / "spool"),
                                  max_backoff_s=0.0)
    client = _FlakyClient()
    logger._client = client  # type: ignore[assignment]  # a stand-in for the MLflow client
    return logger, client


def test_failed_sends_keep_metrics_until_the_server_is_back(tmp_path: Path) -> None:
    logger, client = _offline_logger(tmp_path)
    client.down = True
    logger.log_metrics({"loss": 1.0}, step=1)
    logger.log_metrics({"loss": 0.5}, step=2)
    assert logger.failed_flushes >= 1 and client.received == []
    client.down = False
    assert logger.flush()
    assert [(k, s) for k, _, s in client.received] == [("loss", 1), ("loss", 2)]


def test_a_resumed_run_sends_the_spool_of_the_crashed_one_again(tmp_path: Path) -> None:
    crashed, client = _offline_logger(tmp_path)
    client.down = True
    crashed.log_metrics({"loss": 3.0}, step=7)  # spooled, never delivered: the process dies here
    resumed = BufferedMLflowLogger(run_id="run-1", spool_dir=str(tmp_path / "spool"))
    resumed._resend_spool()
    assert [(k, v, s) for k, v, _, s in resumed._buffer] == [("loss", 3.0, 7)]


def test_a_failed_run_is_marked_failed_not_left_running(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    logger, client = _offline_logger(tmp_path)
    logger.finalize_timeout_s = 0.0
    logger.finalize("failed")  # what Lightning calls when fit raises
    assert client.status == {"run-1": "FAILED"}
    client.down = True
    logger.log_metrics({"loss": 1.0}, step=1)
    logger.finalize("failed")  # the server is away: one try, then say what is left where
    assert "could not mark run run-1 FAILED" in capsys.readouterr().out


# ------------------------------------------------------------------------------ MLflow outage
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _MlflowServer:
    """A real `mlflow server` (SQLite backend) on 127.0.0.1:port that the test can kill and restart."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        log = (self.root / "server.log").open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'srv.db'}",
             "--default-artifact-root", str(self.root / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)  # its own process group

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.healthy():
            if self.proc is not None and self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start:\n{(self.root / 'server.log').read_text()[-3000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the server and its workers (the process group it leads), like a crashed host."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        while self.healthy():  # a worker that outlived its parent would still answer
            time.sleep(0.1)


class _SpyLogger(BufferedMLflowLogger):
    """Records every (metric, step) handed to the logger, to compare with what the server holds."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.handed: dict[str, set[int]] = {}
        self.server_down = False
        self.handed_while_down: set[int] = set()  # steps of train/loss logged while the server was away

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        for key in metrics:
            self.handed.setdefault(key, set()).add(int(step or 0))
        if self.server_down and "train/loss" in metrics:
            self.handed_while_down.add(int(step or 0))
        super().log_metrics(metrics, step)


class _Outage(Callback):
    """Kills the server at step `down`, restarts it at `up` (training goes on while it boots), and at `wait`
    waits for it, so the last steps log to a live server again."""

    def __init__(self, server: _MlflowServer, tracker: _SpyLogger, down: int, up: int, wait: int) -> None:
        self.server, self.tracker, self.down, self.up, self.wait = server, tracker, down, up, wait

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        step = trainer.global_step
        if step == self.down:
            self.server.kill()
            self.tracker.server_down = True
        elif step == self.up:
            self.server.start()
        elif step == self.wait:
            self.server.wait_healthy()
            self.tracker.server_down = False


@pytest.mark.slow
def test_training_survives_an_mlflow_server_outage_without_losing_metrics(tmp_path, tiny_store, monkeypatch) -> None:
    from mlflow import MlflowClient

    server = _MlflowServer(tmp_path)
    server.start()
    tiny = tiny_store(episodes=[60] * 6, chunk_steps=16)
    try:
        server.wait_healthy()
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # what configure_client sets by default
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
        tracker = _SpyLogger(experiment_name="outage", run_name="outage", flush_interval_s=0.05,
                             spool_dir=str(tmp_path / "spool"), max_backoff_s=0.5)
        tracker.log_hyperparams({"test": "outage"})
        outage = _Outage(server, tracker, down=5, up=15, wait=30)
        module = WorldModelModule(kind="ensemble", config={"preset": "tiny"})
        trainer = quiet_trainer(tmp_path, [outage], max_epochs=4, log_every_n_steps=1, enable_checkpointing=False)
        trainer.loggers = [tracker]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(module, datamodule=tiny_datamodule(tiny.path))
        assert trainer.global_step == 40, "training stopped early"
        assert tracker.failed_flushes > 0, "no send failed: the outage was not felt"
        tracker.end_run()
        assert not tracker._buffer

        client = MlflowClient(server.uri)
        assert len(tracker.handed_while_down) >= 20, "too few steps were logged during the outage"
        for key, steps in tracker.handed.items():
            on_server = {m.step for m in client.get_metric_history(tracker.run_id, key)}
            assert on_server == steps, f"{key}: steps {sorted(steps - on_server)} never reached the server"
        assert client.get_run(tracker.run_id).info.status == "FINISHED"
    finally:
        server.kill()
