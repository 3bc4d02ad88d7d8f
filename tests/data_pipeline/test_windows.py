"""Training windows (contract 2): episode split, normalization cache, chunk-aware sampler, DataModule."""

from __future__ import annotations

import warnings

import lightning as L
import numpy as np
import pytest
import torch
from gymnasium import spaces

from data_pipeline.schema import Episode, StoreSchema
from data_pipeline.store import TrajectoryStore
from data_pipeline.windows import (
    Batch,
    ChunkCache,
    FixedWindows,
    WindowDataModule,
    WindowSampler,
    eval_starts,
    eval_windows,
    normalization_for,
    split_episodes,
    to_batch,
    usable_episodes,
)
from data_pipeline.windows import normalization as normalization_mod


def _episodes(rng: np.random.Generator, n: int, first: int = 0, lo: int = 20, hi: int = 300,
              discrete: bool = False) -> list[Episode]:
    """Ragged episodes whose obs encode (episode number, row), so a window says where it came from."""
    eps = []
    for e in range(first, first + n):
        rows = int(rng.integers(lo, hi))
        obs = np.stack([np.full(rows, e), np.arange(rows), rng.standard_normal(rows)], 1).astype(np.float32)
        action = rng.integers(0, 3, (rows, 1)) if discrete else rng.standard_normal((rows, 2), np.float32)
        term = np.zeros(rows, bool)
        term[-1] = bool(e % 2)
        eps.append(Episode(obs=obs, action=action, reward=rng.standard_normal(rows).astype(np.float32),
                           terminated=term, truncated=~term & (np.arange(rows) == rows - 1),
                           episode_id=f"ep{e:04d}", start_time=0))
    return eps


def _store(path: str, n: int = 40, seed: int = 0, discrete: bool = False) -> TrajectoryStore:
    action_space = spaces.Discrete(3) if discrete else spaces.Box(-1, 1, (2,), np.float32)
    schema = StoreSchema.from_spaces(spaces.Box(-np.inf, np.inf, (3,), np.float32), action_space, 0.05)
    # chunk_bytes=1 gives the smallest chunks (256 rows), so a few thousand rows span many chunks.
    store = TrajectoryStore.create(path, schema, chunk_bytes=1, overwrite=True)
    store.append(_episodes(np.random.default_rng(seed), n, discrete=discrete))
    return store


def _reference(store: TrajectoryStore) -> dict[str, np.ndarray]:
    return {v: store.read_rows(v, 0, store.num_steps) for v in ("obs", "reward", "action", "terminated")}


def _check_windows(batch: Batch, store: TrajectoryStore, ref: dict | None = None) -> set[int]:
    """Every window lies inside one episode and equals its rows; returns the episodes seen."""
    obs = batch.obs.numpy()
    b, t = batch.reward.shape
    assert batch.obs.shape == (b, t, 3) and batch.obs.dtype == torch.float32
    assert not batch.is_first[:, 1:].any(), "is_first inside a window: it crossed an episode start"
    assert not batch.is_last[:, :-1].any(), "is_last inside a window: it crossed an episode end"
    assert (obs[:, :, 0] == obs[:, :1, 0]).all()
    assert (np.diff(obs[:, :, 1], axis=1) == 1).all()
    table = store.episodes()
    ref = ref or _reference(store)
    for i in range(b):
        e, r = int(obs[i, 0, 0]), int(obs[i, 0, 1])
        a = int(table["start"].iloc[e]) + r
        np.testing.assert_array_equal(obs[i], ref["obs"][a : a + t])
        last = batch.is_last[i].numpy()
        np.testing.assert_array_equal(batch.reward[i].numpy(), np.where(last, 0.0, ref["reward"][a : a + t]))
        action = np.where(last[:, None], 0.0, ref["action"][a : a + t])
        np.testing.assert_array_equal(batch.action[i].numpy(), action)
        np.testing.assert_array_equal(batch.terminated[i].numpy(), ref["terminated"][a : a + t])
    assert torch.isfinite(batch.reward).all() and torch.isfinite(batch.action).all()
    return set(obs[:, 0, 0].astype(int).tolist())


def test_windows_never_cross_episodes_and_cover_a_store_larger_than_the_cache(tmp_path) -> None:
    store = _store(str(tmp_path / "s.zarr"))
    train = split_episodes(store, seed=0)["train"]
    with pytest.warns(UserWarning, match="fewer than window=32"):
        starts, lengths = usable_episodes(store, train, window=32)
    budget = 6 * ChunkCache.chunk_bytes(store)
    sampler = WindowSampler(store, starts, lengths, window=32, batch_size=16, cache_bytes=budget, seed=3)
    assert sampler.rotating and len(sampler.needed) > sampler.cache.capacity
    assert sum(buf.nbytes for buf in sampler.cache.buffers.values()) <= budget
    seen: set[int] = set()
    ref = _reference(store)
    for batch in (to_batch(sampler.next_arrays(), store) for _ in range(150)):
        seen |= _check_windows(batch, store, ref)
    usable = {int(store.episodes()["start"].searchsorted(s)) for s in starts}
    assert seen == usable, f"episodes never sampled: {sorted(usable - seen)}"
    assert sampler.passes >= 2


def test_split_is_deterministic_seeded_and_stable_under_appends(tmp_path) -> None:
    store = _store(str(tmp_path / "s.zarr"), n=60)
    a, b = split_episodes(store, seed=1), split_episodes(store, seed=1)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(a[name], b[name])
    assert not all(np.array_equal(a[k], split_episodes(store, seed=2)[k]) for k in a)
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(60))
    store.append(_episodes(np.random.default_rng(9), 30, first=60))
    after = split_episodes(store, seed=1)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(after[name][after[name] < 60], a[name])


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_split_guarantees_on_tiny_stores(tmp_path, n: int) -> None:
    store = _store(str(tmp_path / "s.zarr"), n=n)
    for seed in range(20):
        split = split_episodes(store, seed=seed, val_fraction=0.05, test_fraction=0.05)
        assert len(split["train"]) >= 1
        if n >= 3:
            assert len(split["val"]) >= 1 and len(split["test"]) >= 1
        assert sum(len(v) for v in split.values()) == n


def test_normalization_is_cached_in_the_store_and_reused(tmp_path, monkeypatch) -> None:
    path = str(tmp_path / "s.zarr")
    store = _store(path)
    train = split_episodes(store, seed=0)["train"]
    norm = normalization_for(store, train, split_key={"seed": 0})
    rows = np.concatenate([store.read_episode(int(i)).obs for i in train]).astype(np.float64)
    np.testing.assert_allclose(norm.obs_mean, rows.mean(0), rtol=1e-6)
    np.testing.assert_allclose(norm.obs_std, rows.std(0), rtol=1e-5)
    assert norm.num_actions == 0 and len(norm.action_mean) == 2
    assert store.attrs["normalization"]["fingerprint"] == store.fingerprint()
    store.close()

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("statistics recomputed although cached")

    monkeypatch.setattr(normalization_mod, "channel_stats", boom)
    reader = TrajectoryStore.open(path)
    assert normalization_for(reader, train) == norm
    # Appending makes the cache stale; a read-only store computes in memory and writes nothing.
    monkeypatch.undo()
    writer = TrajectoryStore.open(path, mode="a")
    writer.append(_episodes(np.random.default_rng(5), 3, first=40))
    writer.close()
    reader = TrajectoryStore.open(path)
    fresh = normalization_for(reader, split_episodes(reader, seed=0)["train"])
    assert fresh != norm
    assert TrajectoryStore.open(path).attrs["normalization"]["fingerprint"] != reader.fingerprint()


def test_sampler_is_deterministic_for_a_seed(tmp_path) -> None:
    store = _store(str(tmp_path / "s.zarr"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        starts, lengths = usable_episodes(store, np.arange(40), 32)
    budget = 6 * ChunkCache.chunk_bytes(store)

    def draw(seed: int) -> np.ndarray:
        sampler = WindowSampler(store, starts, lengths, window=32, batch_size=8, cache_bytes=budget,
                                seed=seed)
        return np.stack([sampler.next_arrays()["obs"] for _ in range(40)])

    np.testing.assert_array_equal(draw(0), draw(0))
    assert not np.array_equal(draw(0), draw(1))


def test_eval_windows_are_fixed_and_non_overlapping(tmp_path) -> None:
    store = _store(str(tmp_path / "s.zarr"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        starts, lengths = usable_episodes(store, np.arange(40), 16)
    fixed = eval_starts(starts, lengths, 16, max_windows=10_000)
    assert (np.diff(fixed) >= 16).all()
    capped = eval_starts(starts, lengths, 16, max_windows=50)
    assert len(capped) == 50 and np.isin(capped, fixed).all()
    # A cache of 3 chunks forces the batch to be gathered in groups; the result is the same.
    three_chunks = 3 * ChunkCache.chunk_bytes(store)
    small = FixedWindows(store, capped, window=16, batch_size=32, cache_bytes=three_chunks)
    big = FixedWindows(store, capped, window=16, batch_size=32)
    for x, y in zip(small, big, strict=True):
        _check_windows(x, store)
        torch.testing.assert_close(x.obs, y.obs)


def test_eval_windows_are_the_first_back_to_back_windows_in_episode_order(tmp_path) -> None:
    """The open-loop evaluation windows: episode by episode in the order given, back to back, the first
    `max_windows` of them, read exactly as the store holds them (last-row fill set to 0)."""
    store = _store(str(tmp_path / "s.zarr"))
    table = store.episodes()
    episodes = [7, 3, 12, 0]  # not in store order: the windows follow this order
    expected = [int(table["start"].iloc[e]) + k for e in episodes
                for k in range(0, int(table["length"].iloc[e]) - 40 + 1, 40)]
    batch = eval_windows(store, episodes, 40, max_windows=9)
    assert batch is not None and batch.obs.shape == (9, 40, 3)
    ref = _reference(store)
    for i, a in enumerate(expected[:9]):
        np.testing.assert_array_equal(batch.obs[i].numpy(), ref["obs"][a : a + 40])
    _check_windows(batch, store, ref)
    assert eval_windows(store, episodes, 10_000) is None


def test_discrete_actions_are_int64(tmp_path) -> None:
    store = _store(str(tmp_path / "s.zarr"), n=10, discrete=True)
    starts, lengths = usable_episodes(store, np.arange(10), 8)
    batch = to_batch(WindowSampler(store, starts, lengths, window=8, batch_size=32).next_arrays(), store)
    assert batch.action.dtype == torch.int64 and batch.action.shape == (32, 8)
    assert (batch.action[batch.is_last] == 0).all() and (batch.action >= 0).all()
    norm = normalization_for(store, np.arange(10))
    assert norm.num_actions == 3 and norm.action_mean == []


def _datamodule(path: str, **kwargs: object) -> WindowDataModule:
    args = {"window": 16, "batch_size": 8, "cache_mb": 0.2, "batches_per_epoch": 6, "val_batches": 3}
    return WindowDataModule(path, **{**args, **kwargs})


def test_datamodule_with_two_workers_is_deterministic_and_distinct(tmp_path) -> None:
    path = str(tmp_path / "s.zarr")
    _store(path).close()

    def epochs(dm: WindowDataModule) -> list[np.ndarray]:
        loader = dm.train_dataloader()
        return [np.stack([b.obs.numpy() for b in loader]) for _ in range(2)]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm = _datamodule(path, num_workers=2)
        first, second = epochs(dm), epochs(_datamodule(path, num_workers=2))
    assert first[0].shape == (6, 8, 16, 3)
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1]), "the second epoch repeated the first"
    flat = first[0].reshape(6, -1)
    assert len({row.tobytes() for row in flat}) == 6, "two workers yielded the same batch"
    assert dm.normalization.num_actions == 0 and dm.schema.obs_dim == 3
    assert "normalization" in TrajectoryStore.open(path).attrs


@pytest.mark.parametrize("scheme", ["memory", "file"])
def test_datamodule_reads_fsspec_urls(tmp_path, scheme: str) -> None:
    if scheme == "memory":
        url = f"memory://windows-{tmp_path.name}/s.zarr"
        _store(url).close()
    else:
        _store(str(tmp_path / "s.zarr")).close()
        url = f"file://{tmp_path / 's.zarr'}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm = _datamodule(url, num_workers=2 if scheme == "memory" else 0)
        reader = TrajectoryStore.open(url)
        for batch in dm.train_dataloader():
            _check_windows(batch, reader)
        val = list(dm.val_dataloader())
    assert len(val) >= 1 and dm.fingerprint == reader.fingerprint()


class _TinyModel(L.LightningModule):
    def __init__(self, obs_dim: int) -> None:
        super().__init__()
        self.net = torch.nn.Linear(obs_dim, obs_dim)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        return (self.net(batch.obs[:, :-1]) - batch.obs[:, 1:]).pow(2).mean()

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self.log("val_loss", (self.net(batch.obs[:, :-1]) - batch.obs[:, 1:]).pow(2).mean(), batch_size=8)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


def test_datamodule_drives_a_lightning_fit(tmp_path) -> None:
    path = str(tmp_path / "s.zarr")
    _store(path).close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dm = _datamodule(path)
        model = _TinyModel(dm.schema.obs_dim)  # built before the Trainer, from the store
        trainer = L.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, default_root_dir=str(tmp_path))
        trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 12
    assert "val_loss" in trainer.callback_metrics
