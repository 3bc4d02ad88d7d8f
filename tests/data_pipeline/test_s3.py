"""Object storage: a store on S3 (through fsspec/s3fs) works for record, info and training.

The S3 endpoint is moto's server mode on 127.0.0.1 and a free port, started by the test. The command
lines find it the way they would find any S3-compatible service: `AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (botocore reads them; see docs/cluster.md); training also
takes explicit fsspec options with `--data.storage_options '{"endpoint_url": …}'`.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest
from conftest import REPO, subprocess_env

pytest.importorskip("moto.server")
pytest.importorskip("s3fs")

BUCKET = "twin-data"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3(monkeypatch) -> str:
    """A moto S3 server with an empty bucket; the AWS_* variables point at it. Yields its URL."""
    import boto3
    import fsspec
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for key, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    fsspec.filesystem("s3").clear_instance_cache()  # no s3fs instance bound to another test's endpoint
    try:
        yield endpoint
    finally:
        fsspec.filesystem("s3").clear_instance_cache()
        server.stop()


@pytest.mark.slow  # a moto server, three command lines and a short fit: ~25 s
def test_record_info_and_fit_on_an_s3_store(s3, tmp_path, monkeypatch) -> None:
    import boto3

    import train
    from data_pipeline.__main__ import main as data_main
    from data_pipeline.store import TrajectoryStore

    url = f"s3://{BUCKET}/pendulum/p.zarr"
    assert data_main(["record", "--env", "Pendulum-v1", "--episodes", "4", "--seed", "0", "--out", url,
                      "--no-progress"]) == 0
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3).list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert "pendulum/p.zarr/zarr.json" in keys and any(k.startswith("pendulum/p.zarr/obs/c/") for k in keys)

    # The CLI in a fresh process, finding the endpoint and credentials in the environment, with the
    # object-storage concurrency docs/cluster.md recommends.
    env = {**subprocess_env(), "ZARR_ASYNC__CONCURRENCY": "32"}
    info = subprocess.run([sys.executable, "-m", "data_pipeline", "info", url], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert info.returncode == 0, info.stderr[-3000:]
    assert "episodes: 4" in info.stdout and "steps: 804 rows" in info.stdout, info.stdout

    # Training with explicit fsspec options (no AWS_ENDPOINT_URL): what a cluster job passes.
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    options = {"endpoint_url": s3, "key": "testing", "secret": "testing"}
    store = TrajectoryStore.open(url, storage_options=options)
    first = store.read_episode(0)
    assert first.obs.shape == (201, 3) and np.isfinite(first.obs).all()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train.main(["fit", "--config", str(REPO / "configs/pendulum/ensemble.yaml"), "--data.store", url,
                    "--data.storage_options", json.dumps(options), "--model.config.preset", "tiny",
                    "--data.batches_per_epoch", "5", "--data.val_batches", "2", "--trainer.max_epochs", "1",
                    "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
                    "--model.eval_horizons", "[1, 5]", "--model.eval_samples", "4", "--model.eval_windows", "8",
                    "--out_dir", str(tmp_path / "runs"), "--mlflow.run_name", "s3",
                    "--mlflow.registered_model_name", ""])
    assert (tmp_path / "runs" / "s3" / "model.pt").exists()
    for written in ("last.ckpt", "config.yaml"):  # the config also goes to MLflow
        data = (tmp_path / "runs" / "s3" / written).read_bytes()
        assert b"testing" not in data, f"storage options (credentials) leaked into {written}"
