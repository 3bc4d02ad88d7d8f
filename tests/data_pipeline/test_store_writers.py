"""Writers of the trajectory store: one writer per store, crash recovery (a writer killed at any
moment leaves a recoverable store), and episodes written row by row."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import make_tiny_episodes, make_tiny_schema, subprocess_env
from store_checks import assert_store_holds, episode_equal

from data_pipeline.info import validate_store
from data_pipeline.schema import Episode
from data_pipeline.store import StoreLockedError, TrajectoryStore, lock_path_of
from data_pipeline.validate import DataValidationError


# ---------------------------------------------------------------- one writer per store
def _child(code: str, *args: str, wait: bool = True, **kw) -> subprocess.Popen | subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", textwrap.dedent(code), *args]
    if wait:
        return subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=120, **kw)
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=subprocess_env())


OPEN_FOR_WRITING = """
    import sys
    from data_pipeline.store import StoreLockedError, TrajectoryStore
    try:
        TrajectoryStore.open(sys.argv[1], mode="a").close()
    except StoreLockedError as err:
        print(err)
        sys.exit(3)
    print("opened")
"""


def test_one_writer_lock(tiny_store):
    tiny = tiny_store(episodes=1)
    writer = TrajectoryStore.open(tiny.path, mode="a")
    result = _child(OPEN_FOR_WRITING, tiny.path)
    assert result.returncode == 3, result.stderr
    assert f"pid {os.getpid()}" in result.stdout and "one writer" in result.stdout
    with pytest.raises(StoreLockedError, match=f"pid {os.getpid()}"):  # a second handle in this process too
        TrajectoryStore.open(tiny.path, mode="a")
    assert TrajectoryStore.open(tiny.path).num_episodes == 1  # readers are never blocked
    writer.close()
    assert _child(OPEN_FOR_WRITING, tiny.path).stdout.strip() == "opened"
    assert lock_path_of(tiny.path).parent == Path(tiny.path).resolve().parent  # beside, not inside
    with pytest.raises(PermissionError, match="closed"):
        writer.append(make_tiny_episodes(tiny.schema, 1, seed=4))


def test_lock_released_when_writer_dies(tiny_store):
    tiny = tiny_store(episodes=1)
    child = _child("""
        import sys, time
        from data_pipeline.store import TrajectoryStore
        store = TrajectoryStore.open(sys.argv[1], mode="a")
        print("locked", flush=True)
        time.sleep(60)
    """, tiny.path, wait=False)
    try:
        assert child.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError, match=f"pid {child.pid}"):
            TrajectoryStore.open(tiny.path, mode="a")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    TrajectoryStore.open(tiny.path, mode="a").close()


def test_create_takes_the_lock(tiny_store):
    tiny = tiny_store(episodes=1)
    with TrajectoryStore.open(tiny.path, mode="a"), pytest.raises(StoreLockedError):
        TrajectoryStore.create(tiny.path, tiny.schema, overwrite=True)  # would delete under a writer
    with pytest.raises(FileExistsError, match="overwrite=True"):
        TrajectoryStore.create(tiny.path, tiny.schema)
    assert TrajectoryStore.open(tiny.path).num_episodes == 1


# ---------------------------------------------------------------- crash recovery
CRASHING_WRITER = """
    import os, signal, sys
    from conftest import make_tiny_episodes, make_tiny_schema
    from data_pipeline.store import TrajectoryStore
    from data_pipeline.store.writer import StoreWriter

    path, mode, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    schema = make_tiny_schema()
    store = TrajectoryStore.create(path, schema, chunk_steps=16)
    batch = 0
    # The commit's two steps (data_pipeline/store/writer.py): "data" dies after the data rows, before any
    # table column; "table" dies after every table column, before the status (the commit point).
    step = {"data": "write_table", "table": "write_status"}.get(mode)
    if step is not None:
        real = getattr(StoreWriter, step)
        def dying(self, columns):
            if batch == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            real(self, columns)
        setattr(StoreWriter, step, dying)
    while True:  # "loop": until the parent kills us
        store.append(make_tiny_episodes(schema, 3, seed=batch, id_prefix=f"b{batch}-"))
        print(batch, flush=True)
        batch += 1
        if mode == "stream" and batch == kill_at:
            w = store.episode_writer(episode_id="long", source="tiny", flush_rows=5)
            for i in range(40):
                w.add(obs=[i, i, i], action=[0.0, 0.0], reward=1.0)
            os.kill(os.getpid(), signal.SIGKILL)
"""


def _committed_batches(path: str, batches: int) -> list[Episode]:
    schema = make_tiny_schema()
    return [ep for b in range(batches) for ep in make_tiny_episodes(schema, 3, seed=b, id_prefix=f"b{b}-")]


def _check_recovery(path: str, committed: list[Episode]) -> None:
    schema = make_tiny_schema()
    reader = TrajectoryStore.open(path)  # the tail is still there: a reader sees committed episodes only
    assert reader.num_episodes == len(committed)
    assert_store_holds(reader.to_xarray(), schema, committed)
    with xr.open_zarr(path) as plain:
        # Plain xarray reads the consolidated snapshot published after each commit: consistent, and
        # at most the one commit behind that a kill between commit and publish leaves.
        k = plain.sizes["episode"]
        assert len(committed) - 3 <= k <= len(committed)
        assert_store_holds(plain, schema, committed[:k])

    with TrajectoryStore.open(path, mode="a") as store:  # recovery
        assert store.array("obs").shape[0] == store.num_steps == sum(ep.num_rows for ep in committed)
        for i, ep in enumerate(committed):
            episode_equal(store.read_episode(i), ep)  # bit-identical
        more = make_tiny_episodes(schema, 2, seed=99, id_prefix="after-")
        store.append(more)
    assert_store_holds(TrajectoryStore.open(path).to_xarray(), schema, committed + more)
    assert_store_holds(xr.open_zarr(path), schema, committed + more)
    assert validate_store(path)["status"] == "ok"
    assert not list(Path(path).rglob("*.partial"))


@pytest.mark.parametrize("mode", ["data", "table"])
def test_sigkill_mid_append_recovers(tmp_path, mode):
    path = str(tmp_path / "crash.zarr")
    result = _child(CRASHING_WRITER, path, mode, "3")
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert result.stdout.split() == ["0", "1", "2"]
    raw = TrajectoryStore.open(path).array("obs").shape[0]
    committed = _committed_batches(path, 3)
    assert raw > sum(ep.num_rows for ep in committed)  # an uncommitted tail really is there
    _check_recovery(path, committed)


def test_sigkill_mid_stream_recovers(tmp_path):
    path = str(tmp_path / "stream.zarr")
    result = _child(CRASHING_WRITER, path, "stream", "2")
    assert result.returncode == -signal.SIGKILL, result.stderr
    committed = _committed_batches(path, 2)
    # 40 rows added with flush_rows=5: 35 written in blocks, the newest 5 still in memory.
    assert TrajectoryStore.open(path).array("obs").shape[0] == sum(ep.num_rows for ep in committed) + 35
    _check_recovery(path, committed)


@pytest.mark.parametrize("attempts", [
    pytest.param(1, id="once"),
    pytest.param(12, id="many", marks=pytest.mark.slow),
])
def test_sigkill_from_outside_at_any_time(tmp_path, attempts):
    """The parent kills a writer in a tight append loop at an arbitrary moment."""
    rng = np.random.default_rng(attempts)
    for attempt in range(attempts):
        path = str(tmp_path / f"outside{attempt}.zarr")
        child = _child(CRASHING_WRITER, path, "loop", "-1", wait=False)
        done = []
        while len(done) < 3:
            done.append(child.stdout.readline())
        time.sleep(float(rng.uniform(0.0, 0.1)))
        child.send_signal(signal.SIGKILL)
        child.wait()
        printed = len(done) + len(child.stdout.read().split())
        n = TrajectoryStore.open(path).num_episodes
        assert n % 3 == 0 and printed * 3 <= n <= printed * 3 + 3  # the batch in flight may have committed
        _check_recovery(path, _committed_batches(path, n // 3))


def test_failed_write_in_process_leaves_no_orphans(tiny_store, monkeypatch):
    """An exception between the data rows and the commit: the next append starts at the committed end."""
    tiny = tiny_store(episodes=2)
    with TrajectoryStore.open(tiny.path, mode="a") as store:
        def boom(entries):
            raise OSError("disk full")
        monkeypatch.setattr(store, "commit_episodes", boom)
        with pytest.raises(OSError, match="disk full"):
            store.append(make_tiny_episodes(tiny.schema, 2, seed=1, id_prefix="lost-"))
        monkeypatch.undo()
        more = make_tiny_episodes(tiny.schema, 2, seed=2, id_prefix="kept-")
        store.append(more)
    assert_store_holds(TrajectoryStore.open(tiny.path).to_xarray(), tiny.schema, tiny.episodes + more)


def test_recover_removes_partial_files(tiny_store):
    tiny = tiny_store(episodes=1)
    partial = Path(tiny.path) / "obs" / "c" / "0" / f"0.{'a' * 32}.partial"
    partial.write_bytes(b"half a chunk")
    TrajectoryStore.open(tiny.path, mode="a").close()
    assert not partial.exists()


# ---------------------------------------------------------------- streaming
@pytest.mark.parametrize(("kind", "flush_rows", "timed"), [
    (dict(), 1, True),
    (dict(), 3, False),
    (dict(action="discrete"), 2, True),
    (dict(obs_dim=1, image_shape=(4, 4, 3)), 100, False),
])
def test_stream_equals_append(tmp_path, kind, flush_rows, timed):
    schema = make_tiny_schema(**kind)
    eps = make_tiny_episodes(schema, [7, 1], seed=3)
    with TrajectoryStore.create(tmp_path / "a.zarr", schema, chunk_steps=4) as a:
        a.append(eps if timed else [dataclasses.replace(ep, time=None) for ep in eps])
    with TrajectoryStore.create(tmp_path / "s.zarr", schema, chunk_steps=4) as s:
        for ep in eps:
            stream = s.episode_writer(episode_id=ep.episode_id, source=ep.source, seed=ep.seed,
                              start_time=None if timed else ep.start_time, flush_rows=flush_rows)
            for t in range(ep.num_rows):
                last = t == ep.num_rows - 1
                stream.add(obs=None if ep.obs is None else ep.obs[t],
                           image=None if ep.image is None else ep.image[t],
                           action=None if last else ep.action[t],
                           reward=None if last else float(ep.reward[t]),
                           time=int(ep.time[t]) if timed else None)
                assert stream.pending <= flush_rows + 1  # memory stays bounded
            ended = dict(terminated=bool(ep.terminated[-1]), truncated=bool(ep.truncated[-1]))
            assert stream.commit(**ended) == ep.episode_id
    xr.testing.assert_identical(TrajectoryStore.open(tmp_path / "s.zarr").to_xarray().drop_attrs(),
                                TrajectoryStore.open(tmp_path / "a.zarr").to_xarray().drop_attrs())
    assert_store_holds(TrajectoryStore.open(tmp_path / "s.zarr").to_xarray(), schema, eps)


def test_stream_rejects_bad_rows_and_leaves_store_untouched(tiny_store):
    tiny = tiny_store(episodes=1, chunk_steps=4)
    before = TrajectoryStore.open(tiny.path).to_xarray().load()
    row = dict(obs=[0.0, 0.0, 0.0], action=[0.0, 0.0], reward=0.0)
    with TrajectoryStore.open(tiny.path, mode="a") as store:
        # Time must keep increasing across written blocks: rows 0..1 are written on the third add,
        # rows 2..3 on the fifth, and the episode is dropped when that block fails.
        s = store.episode_writer(source="plc", flush_rows=2)
        for ns in (10, 20, 30, 25):
            s.add(**row, time=ns)
        with pytest.raises(DataValidationError, match=r"\(episode .*\): field 'time' is decreasing at row 3 "
                                                       r"\(30 then 25 ns\)"):
            s.add(**row, time=40)
        assert store.array("obs").shape[0] == store.num_steps  # the written block is gone again
        with pytest.raises(DataValidationError, match=r"'obs' has shape \(2,\) at row 1; expected \(3,\)"):
            with store.episode_writer(source="plc") as s:
                s.add(**row)
                s.add(obs=[0.0, 0.0], action=[0.0, 0.0], reward=0.0)
        with pytest.raises(DataValidationError, match=r"'action_1' of field 'action' is nan at row 2;"):
            with store.episode_writer(source="plc", flush_rows=1) as s:
                for action in ([0, 0], [0, 0], [0, np.nan]):
                    s.add(obs=[0, 0, 0], action=action, reward=0.0)
                s.add(obs=[0, 0, 0])
        with pytest.raises(DataValidationError, match=r"0 transitions \(1 rows\); expected at least 1"):
            with store.episode_writer(source="plc") as s:
                s.add(obs=[0, 0, 0])
        with pytest.raises(DataValidationError, match="'time' is given at row 1; expected it on every"):
            with store.episode_writer(source="plc") as s:
                s.add(**row)
                s.add(obs=[0, 0, 0], time=5)
        with pytest.raises(DataValidationError, match="episode_id 's0-0' is already in the store"):
            store.episode_writer(episode_id="s0-0")
        with pytest.raises(RuntimeError, match="boom"), store.episode_writer(source="plc", flush_rows=1) as s:
            for _ in range(5):
                s.add(**row)
            raise RuntimeError("boom")
        s = store.episode_writer()
        with pytest.raises(RuntimeError, match="an episode is being written"):
            store.append(make_tiny_episodes(tiny.schema, 1, seed=8))
        s.add(**row)
        s.add(**row)
    # close() dropped the open stream; every failed stream left nothing behind.
    after = TrajectoryStore.open(tiny.path)
    xr.testing.assert_identical(after.to_xarray().load(), before)
    assert all(after.array(name).shape[0] == after.num_steps for name in after.step_vars)
