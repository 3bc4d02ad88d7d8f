"""`python -m data_pipeline record | info | validate` as subprocesses, and every `--help`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import subprocess_env

from data_pipeline.store import TrajectoryStore


def cli(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "data_pipeline", *args], capture_output=True, text=True,
                            env=subprocess_env(), cwd=cwd, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result


def keys(stdout: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line)


@pytest.mark.parametrize("command", [None, "record", "ingest", "info", "validate", "export"])
def test_help(tmp_path, command):
    result = cli(*([command] if command else []), "--help", cwd=tmp_path)
    assert result.stdout.startswith("usage: python -m data_pipeline")
    if command == "record":
        for option in ("--env", "--episodes", "--policy", "--seed", "--out", "--num-envs", "--image-size",
                       "--max-episode-steps", "--append", "--overwrite"):
            assert option in result.stdout


def test_record_info_validate(tmp_path):
    out = tmp_path / "p.zarr"
    result = cli("record", "--env", "Pendulum-v1", "--episodes", "3", "--policy", "random", "--seed", "0",
                 "--max-episode-steps", "20", "--num-envs", "2", "--out", str(out), cwd=tmp_path)
    assert keys(result.stdout) == {"store": str(out), "episodes": "3", "steps": "63"}
    assert "record Pendulum-v1" in result.stderr  # the progress bar

    info = cli("info", str(out), cwd=tmp_path).stdout
    for line in ("episodes: 3", "steps: 63 rows (60 transitions)", "dt: 0.05 s",
                 "episode_length: min 20  mean 20.0  max 20 transitions", "sources: Pendulum-v1 (3)"):
        assert line in info, info
    assert "time_span:" in info and "(3.100 s)" in info  # 62 rows of 0.05 s after the first
    rows = {line.split()[1]: line.split() for line in info.splitlines() if line.startswith(("obs ", "action "))}
    assert rows["theta_dot"][2] == "rad/s" and rows["torque"][2] == "N*m"
    assert -2.0 <= float(rows["torque"][5]) and float(rows["torque"][6]) <= 2.0  # min / max of the torque

    assert keys(cli("validate", str(out), cwd=tmp_path).stdout) == {
        "store": str(out), "episodes": "3", "steps": "63", "status": "ok"}
    with xr.open_zarr(out) as ds:  # plain xarray: named channels with units
        assert list(ds.obs_channel.values) == ["cos_theta", "sin_theta", "theta_dot"]
        assert list(ds.obs_unit.values) == ["1", "1", "rad/s"]

    again = cli("record", "--env", "Pendulum-v1", "--episodes", "2", "--seed", "50", "--max-episode-steps", "20",
                "--append", "--no-progress", "--out", str(out), cwd=tmp_path)
    assert keys(again.stdout)["episodes"] == "5" and again.stderr == ""
    refused = cli("record", "--env", "CartPole-v1", "--episodes", "1", "--append", "--no-progress",
                  "--out", str(out), cwd=tmp_path, check=False)
    assert refused.returncode != 0 and "schema drift" in refused.stderr


def test_info_discrete_statistics_skip_the_fill(tmp_path):
    out = tmp_path / "c.zarr"
    cli("record", "--env", "CartPole-v1", "--episodes", "4", "--seed", "0", "--no-progress", "--out", str(out),
        cwd=tmp_path)
    push = next(line.split() for line in cli("info", str(out), cwd=tmp_path).stdout.splitlines()
                if line.startswith("action "))
    assert push[1:3] == ["push", "0=left,1=right"]
    assert (float(push[5]), float(push[6])) == (0.0, 1.0)  # min, max: never the -1 of last rows


def test_validate_reports_a_corrupted_chunk(tiny_store, tmp_path):
    tiny = tiny_store(episodes=[3, 10, 4, 6], chunk_steps=8)
    chunk = Path(tiny.path) / "action" / "c" / "2" / "0"
    data = bytearray(chunk.read_bytes())
    for i in range(4, len(data), 7):  # flip a few bytes in the middle of the chunk file
        data[i] ^= 0x5A
    chunk.write_bytes(bytes(data))
    result = cli("validate", tiny.path, cwd=tmp_path, check=False)
    assert result.returncode == 1
    report = keys(result.stdout)
    assert report["status"] == "corrupted"
    assert "array 'action' chunk 2 along 'step' (rows 16..23) cannot be read" in report["error"]
    store = TrajectoryStore.open(tiny.path)
    with pytest.raises(Exception, match="array 'action' chunk 2") as err:
        store.read_episode(2)  # rows 15..19: never plausible numbers
    assert type(err.value).__name__ == "StoreCorruptionError"
    np.testing.assert_array_equal(store.read_episode(0).action, tiny.episodes[0].action)


def test_validate_repair_drops_an_uncommitted_tail(tiny_store, tmp_path):
    tiny = tiny_store(episodes=2)
    with TrajectoryStore.open(tiny.path, mode="a") as store:  # a writer that died mid-append
        store.array("reward").append(np.zeros(5, np.float32))
    report = keys(cli("validate", tiny.path, cwd=tmp_path).stdout)
    assert report["uncommitted_rows"] == "5" and report["status"] == "ok"
    report = keys(cli("validate", tiny.path, "--repair", cwd=tmp_path).stdout)
    assert report["dropped_rows"] == "5" and "uncommitted_rows" not in report and report["status"] == "ok"
    assert TrajectoryStore.open(tiny.path).array("reward").shape[0] == sum(ep.num_rows for ep in tiny.episodes)
