"""The trajectory store (contract 1): round trips, ragged episodes, episode lookup, schema compatibility,
validation, and readers of damaged or half-written stores. Writers (the lock, crash recovery, row by
row episodes) are in test_store_writers.py."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import make_tiny_episodes, make_tiny_schema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from store_checks import assert_store_holds, episode_equal, store_digest

from data_pipeline.info import validate_store
from data_pipeline.schema import Episode
from data_pipeline.store import StoreCorruptionError, TrajectoryStore, episode_index
from data_pipeline.validate import DataValidationError, check_schema_compatible


# ---------------------------------------------------------------- round trips
@pytest.mark.parametrize("kind", [
    dict(action="box"),
    dict(action="discrete", n_actions=4),
    dict(obs_dim=2, image_shape=(8, 6, 3)),
    dict(obs_dim=0, image_shape=(4, 4, 3), action="discrete"),
])
def test_round_trip_identical(tiny_store, kind):
    tiny = tiny_store(episodes=4, chunk_steps=7, **kind)
    store = TrajectoryStore.open(tiny.path)
    assert_store_holds(store.to_xarray(), tiny.schema, tiny.episodes)
    # Plain xarray, without twinworld: the consolidated snapshot and the live metadata agree.
    with xr.open_zarr(tiny.path) as plain:
        assert_store_holds(plain, tiny.schema, tiny.episodes)
    with xr.open_zarr(tiny.path, consolidated=False) as plain:
        assert_store_holds(plain, tiny.schema, tiny.episodes)
    assert store.to_xarray().attrs["schema"] == tiny.schema.to_attrs()
    for i, ep in enumerate(tiny.episodes):
        episode_equal(store.read_episode(i), ep)
        episode_equal(store.read_episode(ep.episode_id), ep)


@pytest.mark.parametrize("scheme", ["file", "memory"])
def test_fsspec_urls(tmp_path, scheme):
    url = f"file://{tmp_path}/u.zarr" if scheme == "file" else f"memory://{tmp_path.name}/u.zarr"
    schema = make_tiny_schema(action="discrete")
    eps = make_tiny_episodes(schema, 3)
    with TrajectoryStore.create(url, schema, chunk_steps=5) as store:
        store.append(eps[:2])
        with store.episode_writer(episode_id=eps[2].episode_id, source="tiny", seed=2, flush_rows=2) as s:
            for t in range(eps[2].num_rows):
                s.add(obs=eps[2].obs[t], action=eps[2].action[t], reward=float(eps[2].reward[t]),
                      time=int(eps[2].time[t]))
    assert_store_holds(TrajectoryStore.open(url).to_xarray(), schema, eps[:2] + [
        dataclasses.replace(eps[2], terminated=np.zeros(eps[2].num_rows, bool),
                            truncated=np.zeros(eps[2].num_rows, bool))])
    TrajectoryStore.open(url, mode="a").close()
    if scheme == "file":
        assert (tmp_path / ".u.zarr.writer-lock").exists()


def test_named_channels_units_and_attrs(tiny_store):
    tiny = tiny_store(episodes=2, obs_dim=2)
    with xr.open_zarr(tiny.path) as ds:
        assert list(ds.obs_channel.values) == ["obs_0", "obs_1"]
        assert list(ds.obs_unit.values) == ["m", "m"]
        assert list(ds.action_unit.values) == ["N", "N"]
        assert ds.time.dtype == np.int64 and "ns since 1970" in ds.time.attrs["unit"]
        assert ds.attrs["dt"] == 0.1 and ds.attrs["schema_version"] == "1.0"
        assert ds.attrs["obs_units"] == {"obs_0": "m", "obs_1": "m"}
        assert all("long_name" in ds[v].attrs for v in ds.data_vars)


def test_select_and_fingerprint(tiny_store):
    tiny = tiny_store(episodes=5)
    store = TrajectoryStore.open(tiny.path)
    picked = [tiny.episodes[3], tiny.episodes[1]]
    ds = store.select([3, tiny.episodes[1].episode_id])
    assert list(ds.episode_id.values) == [ep.episode_id for ep in picked]
    np.testing.assert_array_equal(ds.obs.values, np.concatenate([ep.obs for ep in picked]))
    fp = store.fingerprint()
    assert TrajectoryStore.open(tiny.path).fingerprint() == fp
    with TrajectoryStore.open(tiny.path, mode="a") as w:
        w.append(make_tiny_episodes(tiny.schema, 1, seed=9))
    assert store.fingerprint() != fp  # a reader sees the new commit
    with pytest.raises(KeyError, match="no committed episode with id 'nope'"):
        store.read_episode("nope")
    with pytest.raises(IndexError, match="out of range"):
        store.read_episode(99)


def test_episode_lookup_by_position_or_id(tiny_store):
    tiny = tiny_store(episodes=[3, 5, 2])
    store = TrajectoryStore.open(tiny.path)
    ids = [ep.episode_id for ep in tiny.episodes]
    assert [store.episode_index(i) for i in range(3)] == [0, 1, 2]
    assert [store.episode_index(e) for e in ids] == [0, 1, 2]
    assert store.episode_index(np.int64(2)) == 2
    assert store.episode_rows([2, ids[0], 1]) == [(10, 13), (0, 4), (4, 10)]
    assert episode_index(np.array(ids, dtype=object), ids[1], where="x") == 1
    with pytest.raises(KeyError, match=f"{tiny.path} has no committed episode with id 'nope'"):
        store.episode_rows(["nope"])
    for position in (3, -1):  # a position names one table row: no Python-style negative positions
        with pytest.raises(IndexError, match=rf"episode {position} out of range; .* has 3 committed episodes "
                                             r"\(0..2\)"):
            store.episode_index(position)
    with pytest.raises(IndexError, match="has no committed episodes"):
        episode_index([], 0, where="empty.zarr")


def test_schema_compatibility():
    store = make_tiny_schema()
    check_schema_compatible(store, dataclasses.replace(store), use="append", where="same")
    renamed = dataclasses.replace(store, obs_channels=["a", "b", "c"])
    for use in ("append", "model"):
        with pytest.raises(DataValidationError, match="obs_channels"):
            check_schema_compatible(store, renamed, use=use, where="x")
    # Units and dt are the data's business, not the model's: drift on append, fine for a model.
    for other, words in [(dataclasses.replace(store, obs_units=["s", "s", "s"]),
                          "x: schema field 'obs_units' is ['s', 's', 's']; the store has ['m', 'm', 'm'] "
                          "(schema drift on append)"),
                         (dataclasses.replace(store, dt=0.2), "x: schema field 'dt' is 0.2 s; the store has 0.1 s")]:
        check_schema_compatible(store, other, use="model", where="x")
        with pytest.raises(DataValidationError) as err:
            check_schema_compatible(store, other, use="append", where="x")
        assert words in str(err.value)
    discrete = make_tiny_schema(action="discrete")
    with pytest.raises(DataValidationError, match=r"store p.zarr: the model was trained on action_channels "
                                                  r"\['action'\], but the store has \['action_0', 'action_1'\]; "
                                                  r"use the store"):
        check_schema_compatible(store, discrete, use="model", where="store p.zarr")


# ---------------------------------------------------------------- ragged episodes (property-based)
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    appends=st.lists(st.lists(st.integers(1, 9), min_size=1, max_size=3), min_size=1, max_size=3),
    discrete=st.booleans(),
    obs_dim=st.integers(1, 3),
    chunk_steps=st.integers(2, 9),
    seed=st.integers(0, 2**16),
)
def test_ragged_episodes(appends, discrete, obs_dim, chunk_steps, seed):
    schema = make_tiny_schema(obs_dim=obs_dim, action="discrete" if discrete else "box")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "r.zarr")
        written: list[Episode] = []
        with TrajectoryStore.create(path, schema, chunk_steps=chunk_steps) as store:
            for k, lengths in enumerate(appends):
                eps = make_tiny_episodes(schema, lengths, seed=seed + k, id_prefix=f"a{k}-")
                assert store.append(eps) == [ep.episode_id for ep in eps]
                written += eps
        store = TrajectoryStore.open(path)
        table = store.episodes()
        lengths = np.array([ep.num_rows for ep in written])
        np.testing.assert_array_equal(table["length"], lengths)  # N+1 rows
        np.testing.assert_array_equal(table["start"], np.r_[0, np.cumsum(lengths)[:-1]])  # back to back
        assert store.num_steps == lengths.sum()
        for i, ep in enumerate(written):
            got = store.read_episode(i)
            episode_equal(got, ep)
            assert np.isnan(got.reward[-1]) and not np.isnan(got.reward[:-1]).any()
            if discrete:
                assert got.action[-1, 0] == -1 and (got.action[:-1] >= 0).all()
            else:
                assert np.isnan(got.action[-1]).all() and np.isfinite(got.action[:-1]).all()
        first = store.read_rows("is_first", 0, store.num_steps)
        last = store.read_rows("is_last", 0, store.num_steps)
        np.testing.assert_array_equal(np.flatnonzero(first), table["start"])
        np.testing.assert_array_equal(np.flatnonzero(last), table["start"] + table["length"] - 1)


# ---------------------------------------------------------------- validation: rejected, store untouched
def _bad(field: str, fn, words: list[str]):
    def make(ep: Episode) -> Episode:
        ep = dataclasses.replace(ep)
        fn(ep)
        return ep
    return pytest.param(make, words, id=field)


def _set(ep: Episode, name: str, row, value) -> None:
    arr = getattr(ep, name).copy()
    arr[row] = value
    setattr(ep, name, arr)


def _short(ep: Episode) -> None:
    for name in ("obs", "action", "reward", "terminated", "truncated", "time"):
        setattr(ep, name, getattr(ep, name)[:1])


BAD_EPISODES = [  # the bad episode has 5 transitions (6 rows), 3 obs and 2 action channels
    _bad("obs-nan", lambda ep: _set(ep, "obs", (3, 1), np.nan),
         ["channel 'obs_1'", "'obs'", "row 3", "finite"]),
    _bad("obs-inf", lambda ep: _set(ep, "obs", (2, 0), np.inf), ["channel 'obs_0'", "row 2", "inf"]),
    _bad("obs-overflow", lambda ep: setattr(ep, "obs", np.full(ep.obs.shape, 1e300)),
         ["'obs'", "row 0", "float32"]),
    _bad("time-decreasing", lambda ep: _set(ep, "time", 4, ep.time[2]),
         ["field 'time' is decreasing at row 4", "strictly increasing"]),
    _bad("time-duplicate", lambda ep: _set(ep, "time", 3, ep.time[2]),
         ["field 'time' is duplicate at row 3", "strictly increasing"]),
    _bad("time-float", lambda ep: setattr(ep, "time", ep.time.astype(float)), ["'time'", "int64 ns"]),
    _bad("obs-shape", lambda ep: setattr(ep, "obs", ep.obs[:, :2]),
         ["field 'obs' has shape (6, 2)", "(6, 3)"]),
    _bad("obs-rows", lambda ep: setattr(ep, "obs", ep.obs[:-1]), ["field 'obs' has shape (5, 3)", "(6, 3)"]),
    _bad("obs-dtype", lambda ep: setattr(ep, "obs", ep.obs.astype(str)), ["field 'obs' has dtype", "floats"]),
    _bad("obs-missing", lambda ep: setattr(ep, "obs", None), ["field 'obs' is missing"]),
    _bad("action-shape", lambda ep: setattr(ep, "action", ep.action[:, :1]),
         ["field 'action' has shape (6, 1)", "expected (6, 2)", "action_0"]),
    _bad("action-nan", lambda ep: _set(ep, "action", (1, 1), np.nan),
         ["channel 'action_1' of field 'action'", "row 1", "finite"]),
    _bad("reward-inf", lambda ep: _set(ep, "reward", 4, -np.inf), ["field 'reward' is -inf at row 4"]),
    _bad("reward-shape", lambda ep: setattr(ep, "reward", ep.reward[:, None]), ["field 'reward' has shape"]),
    _bad("terminated-early", lambda ep: _set(ep, "terminated", 2, True),
         ["field 'terminated' is set at row 2", "only on the last row (5)"]),
    _bad("image-given", lambda ep: setattr(ep, "image", np.zeros((6, 2, 2, 3), np.uint8)),
         ["field 'image' given", "no image"]),
    _bad("too-short", _short, ["0 transitions (1 rows)", "at least 1 (min_transitions)"]),
]


@pytest.mark.parametrize(("corrupt", "words"), BAD_EPISODES)
def test_bad_episode_rejected_store_untouched(tiny_store, corrupt, words):
    tiny = tiny_store(episodes=2)
    before = store_digest(tiny.path)
    good, bad = make_tiny_episodes(tiny.schema, [3, 5], seed=7, id_prefix="new-")
    with TrajectoryStore.open(tiny.path, mode="a") as store:
        with pytest.raises(DataValidationError) as err:
            store.append([good, corrupt(bad)])  # the good one is not written either
        assert store.num_episodes == 2
    message = str(err.value)
    assert "tiny (episode new-1)" in message
    for word in words:
        assert word in message, message
    assert store_digest(tiny.path) == before


DISCRETE_BAD = [
    _bad("float-actions", lambda ep: setattr(ep, "action", ep.action.astype(np.float32)),
         ["field 'action' has dtype float32", "integers for a Discrete"]),
    _bad("out-of-range", lambda ep: _set(ep, "action", (2, 0), 4),
         ["channel 'action' of field 'action' is 4 at row 2", "[0, 4)"]),
]


@pytest.mark.parametrize(("corrupt", "words"), DISCRETE_BAD)
def test_bad_discrete_action_rejected(tiny_store, corrupt, words):
    tiny = tiny_store(episodes=1, action="discrete", n_actions=4)
    before = store_digest(tiny.path)
    (ep,) = make_tiny_episodes(tiny.schema, [4], seed=3, id_prefix="new-")
    with TrajectoryStore.open(tiny.path, mode="a") as store, pytest.raises(DataValidationError) as err:
        store.append(corrupt(ep))
    for word in words:
        assert word in str(err.value), str(err.value)
    assert store_digest(tiny.path) == before


def test_bad_image_rejected(tiny_store):
    tiny = tiny_store(episodes=1, obs_dim=1, image_shape=(4, 4, 3))
    before = store_digest(tiny.path)
    (ep,) = make_tiny_episodes(tiny.schema, [3], seed=3, id_prefix="new-")
    with TrajectoryStore.open(tiny.path, mode="a") as store:
        for image, word in [(ep.image.astype(np.float32), "float32"), (ep.image[:, :2], "(4, 2, 4, 3)"),
                            (None, "is None")]:
            with pytest.raises(DataValidationError, match="field 'image'") as err:
                store.append(dataclasses.replace(ep, image=image))
            assert word in str(err.value) and "expected shape (4, 4, 4, 3) uint8" in str(err.value)
    assert store_digest(tiny.path) == before


def test_duplicate_ids_and_min_transitions(tiny_store):
    tiny = tiny_store(episodes=2)
    before = store_digest(tiny.path)
    fresh = make_tiny_episodes(tiny.schema, [4, 4], seed=5, id_prefix="x-")
    with TrajectoryStore.open(tiny.path, mode="a") as store:
        with pytest.raises(DataValidationError, match=r"episode_id 's0-1' is already in the store; expected"):
            store.append(dataclasses.replace(fresh[0], episode_id="s0-1"))
        with pytest.raises(DataValidationError, match=r"episode_id 'x-0' is already in the store"):
            store.append([fresh[0], dataclasses.replace(fresh[1], episode_id="x-0")])  # twice in one batch
        with pytest.raises(DataValidationError, match=r"4 transitions \(5 rows\); expected at least 5"):
            store.append(fresh, min_transitions=5)
        with pytest.raises(PermissionError, match="read-only"):
            TrajectoryStore.open(tiny.path).append(fresh)
    assert store_digest(tiny.path) == before


# ---------------------------------------------------------------- readers during writes, corruption
def test_reader_during_unfinished_write(tiny_store):
    """Variables of different lengths along `step` (a writer mid-append): readers see committed data."""
    tiny = tiny_store(episodes=3)
    store = TrajectoryStore.open(tiny.path, mode="a")
    (extra,) = make_tiny_episodes(tiny.schema, [5], seed=1, id_prefix="half-")
    store.array("obs").append(extra.obs)  # only some of the data rows of an append
    store.array("episode_id").append(np.array(["half-0"], dtype=object))  # and a table row
    reader = TrajectoryStore.open(tiny.path)
    assert reader.num_episodes == 3
    assert_store_holds(reader.to_xarray(), tiny.schema, tiny.episodes)
    with pytest.raises(ValueError, match="conflicting sizes"):
        xr.open_zarr(tiny.path, consolidated=False)  # what a naive reader would hit
    assert_store_holds(xr.open_zarr(tiny.path), tiny.schema, tiny.episodes)  # the consolidated snapshot
    store.close()


def test_corrupted_chunk_raises_never_numbers(tiny_store):
    tiny = tiny_store(episodes=[3, 10, 4, 6], chunk_steps=8)  # rows 0-3, 4-14, 15-19, 20-26
    chunk = Path(tiny.path) / "obs" / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    store = TrajectoryStore.open(tiny.path)
    for i in (1, 2):
        with pytest.raises(StoreCorruptionError, match=r"array 'obs' chunk 1 along 'step' \(rows 8..15\)"):
            store.read_episode(i)
    episode_equal(store.read_episode(0), tiny.episodes[0])  # chunk 0 is fine
    episode_equal(store.read_episode(3), tiny.episodes[3])
    report = validate_store(tiny.path)
    assert report["status"] == "corrupted" and "array 'obs' chunk 1" in report["error"]


def test_missing_chunk_is_reported(tiny_store):
    tiny = tiny_store(episodes=[3, 10, 4, 6], chunk_steps=8)
    (Path(tiny.path) / "truncated" / "c" / "1").unlink()  # all False, still written
    report = validate_store(tiny.path)
    assert report["status"] == "corrupted"
    assert "array 'truncated' chunk 1 along 'step' holds committed rows but its file is missing" in (
        report["error"])
