"""`record` commits on a clock (issue 13): a SIGKILL loses at most the last `--commit-interval`, and
SIGINT / SIGTERM commit every finished episode before it exits (130 / 143)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from conftest import subprocess_env
from stream_helpers import wait_for

from data_pipeline.info import validate_store
from data_pipeline.store import StoreCorruptionError, TrajectoryStore


def committed(path: str) -> int:
    try:
        with TrajectoryStore.open(path) as store:
            return store.num_episodes
    except (FileNotFoundError, StoreCorruptionError):  # not created yet, or its creation still under way
        return 0


def start_record(path: str) -> subprocess.Popen:
    """CartPole with a random policy finishes hundreds of episodes a second; far fewer bytes than
    FLUSH_BYTES, so only the clock makes them commit."""
    cmd = [sys.executable, "-m", "data_pipeline", "record", "--env", "CartPole-v1", "--episodes", "10000000",
           "--out", path, "--no-progress", "--commit-interval", "1"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env())


def test_sigkill_loses_at_most_the_last_interval(tmp_path):
    path = str(tmp_path / "cp.zarr")
    proc = start_record(path)
    try:
        wait_for(lambda: committed(path) > 0, 60.0, "a first commit")
        first = committed(path)
        time.sleep(2.5)  # two more intervals: commits keep coming, about one a second
        seen = committed(path)
        assert seen > first, "no commit within 2.5 s of a 1 s commit interval"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert committed(path) >= seen
    assert validate_store(path)["status"] == "ok"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_commits_finished_episodes(tmp_path, sig):
    path = str(tmp_path / "cp.zarr")
    proc = start_record(path)
    try:
        wait_for(lambda: committed(path) > 0, 60.0, "a first commit")
        seen = committed(path)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + sig, err
    assert "Traceback" not in err and f"record stopped by {sig.name}" in err
    n = committed(path)
    assert n >= seen and f"episodes: {n}" in out
    assert validate_store(path)["status"] == "ok"
