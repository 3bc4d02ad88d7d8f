"""Checkpoints load no code (issue 13): a Lightning-style checkpoint whose pickle would create a marker file
is refused by `train.py fit --ckpt_path` (a local path, `last`, an http URL) and by `worldmodel.load` (a
path, an MLflow URI), with a message naming the file; a good checkpoint still resumes, also from a URL.

`TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` is set throughout: safety must not rest on torch's default.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import REPO, subprocess_env

FAST = ["--model.config.preset", "tiny", "--trainer.max_epochs", "1", "--data.batches_per_epoch", "4",
        "--data.val_batches", "1", "--model.eval_horizons", "[1]", "--model.eval_samples", "2",
        "--model.eval_context", "4", "--model.eval_windows", "4", "--trainer.enable_progress_bar", "false",
        "--mlflow.registered_model_name", ""]


class _Payload:
    """Unpickling this creates `path`: what an attacker's checkpoint would do instead of a harmless file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.path), "w"))


def _evil_checkpoint(path: Path, marker: Path) -> Path:
    """A Lightning-style checkpoint dict (it loads as one with weights_only=False) carrying the payload."""
    torch.save({"epoch": 0, "global_step": 0, "pytorch-lightning_version": "2.6.0", "state_dict": {},
                "hyper_parameters": {"kind": "ensemble"}, "payload": _Payload(marker)}, path)
    return path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    from data_pipeline.record import record

    path = tmp_path_factory.mktemp("ckpt-store") / "p.zarr"
    record("Pendulum-v1", 6, str(path), seed=0, max_episode_steps=30, progress=False).close()
    return str(path)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over http on 127.0.0.1: (folder, base URL)."""
    root = tmp_path / "www"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _train(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**subprocess_env(), "MLFLOW_TRACKING_URI": f"sqlite:///{cwd / 'mlflow.db'}",
           "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1", "TORCH_HOME": str(cwd / "torch-home")}
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def _fit_args(store: str, out: Path) -> list[str]:
    return ["fit", "--config", str(REPO / "configs/pendulum/ensemble.yaml"), "--data.store", store,
            "--out_dir", str(out), "--mlflow.run_name", "r", *FAST]


@pytest.fixture
def in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """train.main in this process (saves the imports of a subprocess): its own MLflow DB, torch home, cwd."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path


def _refused(args: list[str], marker: Path, named: str) -> None:
    """train.py refuses the checkpoint with a CheckpointError naming it (one line through run_cli)."""
    import train

    with pytest.raises(Exception) as err:
        train.main(args)
    assert not marker.exists(), "the checkpoint's pickle ran code"
    from worldmodel.io import CheckpointError

    assert isinstance(err.value, CheckpointError), repr(err.value)
    message = str(err.value)
    assert message.startswith(f"{named}: refused") and "weights_only=True" in message and "io.open" in message


def test_fit_refuses_a_local_checkpoint_that_runs_code(in_process: Path, store: str) -> None:
    marker = in_process / "PWNED"
    evil = _evil_checkpoint(in_process / "evil.ckpt", marker)
    _refused([*_fit_args(store, in_process / "runs"), "--ckpt_path", str(evil)], marker, str(evil))


def test_fit_refuses_a_planted_last_checkpoint(in_process: Path, store: str) -> None:
    """`--ckpt_path last` is resolved by Lightning, not LightningCLI: the load must be safe there too."""
    marker = in_process / "PWNED"
    run_dir = in_process / "runs" / "r"
    run_dir.mkdir(parents=True)
    evil = _evil_checkpoint(run_dir / "last.ckpt", marker)
    _refused([*_fit_args(store, in_process / "runs"), "--ckpt_path", "last"], marker, str(evil))


def test_fit_refuses_a_checkpoint_url_that_runs_code(in_process: Path, store: str, serve: tuple[Path, str]) -> None:
    root, base = serve
    marker = in_process / "PWNED"
    _evil_checkpoint(root / "evil.ckpt", marker)
    _refused([*_fit_args(store, in_process / "runs"), "--ckpt_path", f"{base}/evil.ckpt"], marker,
             f"{base}/evil.ckpt")
    assert not (in_process / "torch-home").exists(), "the URL went through torch.hub's name-keyed cache"


def test_validate_refuses_a_checkpoint_url_that_runs_code(in_process: Path, store: str,
                                                          serve: tuple[Path, str]) -> None:
    root, base = serve
    marker = in_process / "PWNED"
    _evil_checkpoint(root / "evil.ckpt", marker)
    args = ["validate", *_fit_args(store, in_process / "runs")[1:], "--ckpt_path", f"{base}/evil.ckpt"]
    _refused(args, marker, f"{base}/evil.ckpt")


def test_weights_only_false_is_a_usage_error(in_process: Path, store: str, capsys: pytest.CaptureFixture) -> None:
    import train

    with pytest.raises(SystemExit) as exit_:
        train.main([*_fit_args(store, in_process / "runs"), "--weights_only", "false"])
    assert exit_.value.code == 2 and "--weights_only false" in capsys.readouterr().err


@pytest.mark.slow
def test_train_py_refuses_a_checkpoint_url_as_a_command(tmp_path: Path, store: str, serve: tuple[Path, str]) -> None:
    """The same as a user runs it: a subprocess, exit code non-zero, the message last on stderr."""
    root, base = serve
    marker = tmp_path / "PWNED"
    _evil_checkpoint(root / "evil.ckpt", marker)
    proc = _train([*_fit_args(store, tmp_path / "runs"), "--ckpt_path", f"{base}/evil.ckpt"], tmp_path)
    assert not marker.exists(), "the checkpoint's pickle ran code"
    assert proc.returncode != 0, proc.stdout[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert f"{base}/evil.ckpt: refused" in last and "weights_only=True" in last, proc.stderr[-3000:]


def test_worldmodel_load_refuses_a_file_or_mlflow_uri_that_runs_code(tmp_path: Path, monkeypatch) -> None:
    import mlflow

    import worldmodel

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "PWNED"
    evil = _evil_checkpoint(tmp_path / "model.pt", marker)
    with pytest.raises(Exception) as err:
        worldmodel.load(str(evil))
    assert not marker.exists()
    assert re.match(rf"{re.escape(str(evil))}: refused .*io\.open.*weights_only=True", str(err.value)), err.value

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with mlflow.start_run() as run:
        mlflow.log_artifact(str(evil), artifact_path="checkpoint")
    with pytest.raises(Exception) as err:
        worldmodel.load(f"runs:/{run.info.run_id}/checkpoint")
    assert not marker.exists()
    assert re.search(r"model\.pt: refused .*io\.open", str(err.value)), err.value
    from worldmodel.io import CheckpointError

    assert isinstance(err.value, CheckpointError)


def test_a_file_that_is_no_checkpoint_is_named(tmp_path: Path) -> None:
    from worldmodel.io import CheckpointError, load_checkpoint_file

    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=r"junk\.ckpt: not a readable PyTorch checkpoint"):
        load_checkpoint_file(junk)


@pytest.mark.slow
def test_a_train_py_checkpoint_resumes_from_a_url(tmp_path: Path, store: str, serve: tuple[Path, str]) -> None:
    """A checkpoint train.py wrote holds only weights_only-loadable values, so it resumes, also over http."""
    root, base = serve
    first = _train(_fit_args(store, tmp_path / "runs"), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    last = tmp_path / "runs" / "r" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 4
    os.replace(last, root / "last.ckpt")
    resumed = _train([*_fit_args(store, tmp_path / "runs2"), "--trainer.max_epochs", "2",
                      "--ckpt_path", f"{base}/last.ckpt"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    state = torch.load(tmp_path / "runs2" / "r" / "last.ckpt", map_location="cpu", weights_only=True)
    assert state["global_step"] == 8, state["global_step"]
    assert "Restored all states from the checkpoint at http" in resumed.stdout + resumed.stderr, resumed.stderr[-3000:]
