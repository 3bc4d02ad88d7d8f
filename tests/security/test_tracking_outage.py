"""A tracking outage never loses a fit (issue 13): when the MLflow server is away at the end of `fit`,
the model file, config and publish request stay in the run folder, the fit ends with exit code 75 and
says how to publish later, and `python -m tracking.publish RUN_DIR` then publishes (metrics from the spool,
model, registry) and marks the run FINISHED, once however often it is run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, subprocess_env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _publish(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tracking.publish", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**subprocess_env(), **env})


def test_publish_help_and_a_folder_without_a_publish_request(tmp_path: Path) -> None:
    proc = _publish(["--help"], tmp_path)
    assert proc.returncode == 0 and "run_dir" in proc.stdout and "--timeout_s" in proc.stdout and "75" in proc.stdout
    from tracking.publish import main

    with pytest.raises(Exception, match=f"{tmp_path}: no publish.json"):
        os.environ["TWINWORLD_DEBUG"] = "1"  # run_cli re-raises: the message itself is checked
        try:
            main([str(tmp_path)])
        finally:
            del os.environ["TWINWORLD_DEBUG"]


def _pending_run(tmp_path: Path) -> tuple[Path, str, str, Path]:
    """A run folder as a fit leaves it when the server at a dead port never answered: (run_dir, db, run_id, spool)."""
    from mlflow import MlflowClient

    from tracking.publish import PublishPending, PublishRequest, publish_run_dir

    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(db)
    run_id = client.create_run(client.create_experiment("outage")).info.run_id
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / "model.pt").write_bytes(b"weights")  # publishing logs the file; it never loads it
    (run_dir / "config.yaml").write_text("model: {}\n")
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / f"{run_id}.jsonl").write_text(json.dumps(["test_eval/nrmse/h1", 0.25, 1, 0]) + "\n")
    dead = f"http://127.0.0.1:{_free_port()}"
    PublishRequest(run_id=run_id, tracking_uri=dead, registered_model_name="outage-model", tags={"model.kind": "x"},
                   spool_dir=str(spool)).write(run_dir)

    started = time.monotonic()
    with pytest.raises(PublishPending, match="python -m tracking.publish"):
        publish_run_dir(run_dir, timeout_s=1.0)
    assert time.monotonic() - started < 30, "the retries are not bounded"
    assert (run_dir / "model.pt").read_bytes() == b"weights" and (run_dir / "config.yaml").exists()
    request = PublishRequest.read(run_dir)
    assert not request.published and request.attempts, "the failed attempt is not recorded"
    return run_dir, db, run_id, spool


def test_an_unreachable_server_keeps_the_files_within_a_bounded_time(tmp_path: Path) -> None:
    _pending_run(tmp_path)


@pytest.mark.slow
def test_publish_later_publishes_once(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    run_dir, db, run_id, spool = _pending_run(tmp_path)
    client = MlflowClient(db)
    proc = _publish([str(run_dir), "--tracking_uri", db], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "model_uri: models:/outage-model/1" in proc.stdout
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_eval/nrmse/h1"] == 0.25 and run.data.tags["model.kind"] == "x"
    assert not (spool / f"{run_id}.jsonl").exists(), "the delivered spool was kept"
    again = _publish([str(run_dir), "--tracking_uri", db], tmp_path)
    assert again.returncode == 0 and "models:/outage-model/1" in again.stdout
    assert len(client.search_model_versions("name='outage-model'")) == 1, "publishing twice registered twice"


KILLER = '''
import os, signal, time, urllib.request
from lightning.pytorch.callbacks import Callback

class KillServer(Callback):
    """Test helper: SIGKILL the tracking server's process group when training ends, before publishing."""
    def __init__(self, pgid: int, uri: str) -> None:
        self.pgid, self.uri = pgid, uri
    def on_train_end(self, trainer, *args) -> None:
        os.killpg(self.pgid, signal.SIGKILL)
        while True:
            try:
                urllib.request.urlopen(self.uri + "/health", timeout=1)
                time.sleep(0.1)
            except OSError:
                return
'''


class _Server:
    """A real `mlflow server` on loopback (SQLite backend) that can be killed and restarted on its port."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.root / "server.log").open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'srv.db'}",
             "--default-artifact-root", str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((self.root / "server.log").read_text()[-3000:]) from None
                time.sleep(0.2)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)


@pytest.mark.slow
def test_fit_survives_a_server_killed_before_publishing(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from data_pipeline.record import record

    store = tmp_path / "p.zarr"
    record("Pendulum-v1", 6, str(store), seed=0, max_episode_steps=30, progress=False).close()
    (tmp_path / "killer.py").write_text(KILLER)
    server = _Server(tmp_path)
    server.start()
    try:
        assert server.proc is not None
        env = {**subprocess_env(), "MLFLOW_TRACKING_URI": server.uri}
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
        fit = subprocess.run(
            [sys.executable, str(REPO / "train.py"), "fit", "--config", str(REPO / "configs/pendulum/ensemble.yaml"),
             "--data.store", str(store), "--out_dir", str(tmp_path / "runs"), "--mlflow.run_name", "r",
             "--model.config.preset", "tiny", "--trainer.max_epochs", "1", "--data.batches_per_epoch", "4",
             "--data.val_batches", "1", "--model.eval_horizons", "[1]", "--model.eval_samples", "2",
             "--model.eval_windows", "4", "--trainer.enable_progress_bar", "false",
             "--mlflow.registered_model_name", "outage-fit", "--mlflow.publish_timeout_s", "3",
             "--trainer.callbacks+=killer.KillServer", "--trainer.callbacks.pgid", str(server.proc.pid),
             "--trainer.callbacks.uri", server.uri],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        run_dir = tmp_path / "runs" / "r"
        assert fit.returncode == 75, f"{fit.stdout[-3000:]}\n{fit.stderr[-3000:]}"
        assert "model_uri: unpublished (tracking server" in fit.stdout
        assert f"publish_later: python -m tracking.publish {run_dir}" in fit.stdout
        assert f"checkpoint: {run_dir / 'model.pt'}" in fit.stdout and "Traceback" not in fit.stderr
        for name in ("model.pt", "config.yaml", "publish.json", "last.ckpt", "mlflow_run_id"):
            assert (run_dir / name).exists(), f"{name} was not kept"

        server.start()  # the server is back: the run shows RUNNING until it is published
        run_id = (run_dir / "mlflow_run_id").read_text().strip()
        client = MlflowClient(server.uri)
        assert client.get_run(run_id).info.status == "RUNNING"
        proc = _publish([str(run_dir)], tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "model_uri: models:/outage-fit/1" in proc.stdout
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and "test_eval/nrmse/h1" in run.data.metrics
    finally:
        server.kill()
