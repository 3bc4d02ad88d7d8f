"""Damage anywhere is named (issue 13): a bit-flipped or deleted chunk of any array (episode table,
flags and time included) and a damaged zarr.json (any array's or the group's) raise StoreCorruptionError
naming the array and the chunk; `validate` lists every damaged part and exits 1; `info` prints no
statistics from missing data; a writer never cuts a damaged store; a half-created store can be retried."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_tiny_episodes, make_tiny_schema, subprocess_env

from data_pipeline.info import validate_store
from data_pipeline.schema import EPISODE_VARS
from data_pipeline.store import StoreCorruptionError, TrajectoryStore, layout

STEP_ARRAYS = ("obs", "action", "reward", "terminated", "truncated", "is_first", "is_last", "time")
LENGTHS = [3, 10, 4, 6]  # rows 0-3, 4-14, 15-19, 20-26: four chunks of 8 rows along `step`


def make_store(tmp_path: Path) -> str:
    schema = make_tiny_schema()
    path = str(tmp_path / "s.zarr")
    with TrajectoryStore.create(path, schema, chunk_steps=8) as store:
        store.append(make_tiny_episodes(schema, LENGTHS))
    return path


def flip(file: Path, at: int | None = None) -> None:
    """Flip one bit of `file` (the middle byte by default)."""
    data = bytearray(file.read_bytes())
    i = len(data) // 2 if at is None else at
    data[i] ^= 0x01
    file.write_bytes(bytes(data))


def read_everything(path: str) -> None:
    """What a reader of the whole store does: the table, then every row of every step array."""
    with TrajectoryStore.open(path) as store:
        end = store.num_steps
        for name in store.step_vars:
            store.read_rows(name, 0, end)


CHUNKS = [(name, "c/1/0" if name == "obs" or name == "action" else "c/1") for name in STEP_ARRAYS]
CHUNKS += [(name, "c/0") for name in EPISODE_VARS]


@pytest.mark.parametrize("kind", ["flip", "delete"])
@pytest.mark.parametrize(("name", "key"), CHUNKS)
def test_damaged_chunk_is_named(tmp_path, name, key, kind):
    path = make_store(tmp_path)
    file = Path(path) / name / key
    flip(file) if kind == "flip" else file.unlink()
    chunk = key.split("/")[1]
    with pytest.raises(StoreCorruptionError, match=rf"array '{name}' chunk {chunk} along"):
        read_everything(path)
    report = validate_store(path)
    assert report["status"] == "corrupted"
    assert f"{name} chunk {chunk} ({name}/{key})" in report["damage"], report


@pytest.mark.parametrize("kind", ["flip", "delete"])
@pytest.mark.parametrize("name", ["", *STEP_ARRAYS, *EPISODE_VARS, *layout.CHANNEL_COORDS])
def test_damaged_zarr_json_is_named(tmp_path, name, kind):
    path = make_store(tmp_path)
    file = Path(path) / name / "zarr.json"
    flip(file, at=0) if kind == "flip" else file.unlink()  # '{' becomes 'z': no longer JSON
    what = f"array '{name}'" if name else "the group's metadata file zarr.json"
    with pytest.raises(StoreCorruptionError, match=what):
        read_everything(path)
    report = validate_store(path)
    assert report["status"] == "corrupted" and what in report["error"], report
    assert f"{name or 'group'} zarr.json" in report["damage"]


def test_zarr_json_that_still_parses_is_caught(tmp_path):
    """A flipped digit in a chunk size is valid JSON; the copy each commit publishes tells it apart."""
    path = make_store(tmp_path)
    file = Path(path) / "reward" / "zarr.json"
    meta = json.loads(file.read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [8]
    meta["chunk_grid"]["configuration"]["chunk_shape"] = [9]  # '8' ^ 0x01
    file.write_text(json.dumps(meta))
    report = validate_store(path)
    assert report["status"] == "corrupted"
    assert "array 'reward' metadata file reward/zarr.json differs" in report["error"], report


def test_writer_never_cuts_a_damaged_table(tmp_path):
    """A missing status chunk read as 'uncommitted' would make opening for writing truncate every
    episode; it is damage instead, and nothing is touched."""
    path = make_store(tmp_path)
    (Path(path) / "episode_status" / "c" / "0").unlink()
    before = {str(p): p.read_bytes() for p in Path(path).rglob("*") if p.is_file()}
    with pytest.raises(StoreCorruptionError, match="array 'episode_status' chunk 0"):
        TrajectoryStore.open(path, mode="a")
    assert {str(p): p.read_bytes() for p in Path(path).rglob("*") if p.is_file()} == before


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "data_pipeline", *args], capture_output=True, text=True,
                          env=subprocess_env(), timeout=120)


def test_validate_and_info_command_lines(tmp_path):
    path = make_store(tmp_path)
    (Path(path) / "time" / "c" / "2").unlink()
    flip(Path(path) / "obs" / "c" / "0" / "0")
    out = run_cli("validate", path)
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert "status: corrupted" in out.stdout and "damaged: 2" in out.stdout
    assert "obs chunk 0 (obs/c/0/0); time chunk 2 (time/c/2)" in out.stdout

    out = run_cli("info", path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "mean" not in out.stdout and "array 'obs' chunk 0" in out.stderr


# ---------------------------------------------------------------- a store whose creation was cut short
def test_half_created_store_can_be_retried(tmp_path, monkeypatch):
    schema = make_tiny_schema()
    path = str(tmp_path / "half.zarr")
    real_make = layout.create_arrays

    def full_disk(group, schema, chunk_steps):
        group.create_array("obs", shape=(0, 3), chunks=(8, 3), dtype="float32")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(layout, "create_arrays", full_disk)
    with pytest.raises(OSError, match="No space left"):
        TrajectoryStore.create(path, schema, chunk_steps=8)
    monkeypatch.setattr(layout, "create_arrays", real_make)

    with pytest.raises(StoreCorruptionError, match="creation did not finish.*Create it again"):
        TrajectoryStore.open(path)
    with TrajectoryStore.create(path, schema, chunk_steps=8) as store:  # no --overwrite needed: it holds no data
        store.append(make_tiny_episodes(schema, [3, 4]))
    assert validate_store(path)["status"] == "ok"


def test_half_created_store_with_user_files_is_refused(tmp_path, monkeypatch):
    schema = make_tiny_schema()
    path = tmp_path / "half.zarr"

    def full_disk(group, schema, chunk_steps):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(layout, "create_arrays", full_disk)
    with pytest.raises(OSError):
        TrajectoryStore.create(str(path), schema)
    monkeypatch.undo()
    (path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        TrajectoryStore.create(str(path), schema)
    assert (path / "notes.txt").read_text() == "mine"
