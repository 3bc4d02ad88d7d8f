"""Minari round trip: datasets made locally with Minari's DataCollector, imported into a store and
exported back, compared exactly. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest

minari = pytest.importorskip("minari")
pytest.importorskip("jax", reason="Minari's DataCollector needs jax (minari[create])")

from data_pipeline.minari_io import export_minari, import_minari  # noqa: E402
from data_pipeline.store import TrajectoryStore  # noqa: E402


@pytest.fixture()
def minari_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "minari"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


def collect(env_id: str, dataset_id: str, episodes: int = 3, max_steps: int = 25) -> minari.MinariDataset:
    env = minari.DataCollector(gym.make(env_id, max_episode_steps=max_steps), data_format="arrow",
                               record_infos=False)
    env.action_space.seed(0)
    for seed in range(episodes):
        env.reset(seed=seed)
        done = False
        while not done:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            done = terminated or truncated
    ds = env.create_dataset(dataset_id, eval_env=env_id, algorithm_name="random", author="tests",
                            author_email="t@example.org", code_permalink="tests/test_minari.py",
                            description="made by tests")
    env.close()
    return ds


def assert_same_episodes(a: minari.MinariDataset, b: minari.MinariDataset) -> None:
    assert a.total_episodes == b.total_episodes and a.total_steps == b.total_steps
    for ea, eb in zip(a.iterate_episodes(), b.iterate_episodes(), strict=True):
        np.testing.assert_array_equal(ea.observations, eb.observations)
        np.testing.assert_array_equal(ea.actions, eb.actions)
        np.testing.assert_array_equal(ea.rewards.astype(np.float32), eb.rewards)  # stores keep float32
        np.testing.assert_array_equal(ea.terminations, eb.terminations)
        np.testing.assert_array_equal(ea.truncations, eb.truncations)


def test_pendulum_import_then_export(minari_root: Path, tmp_path: Path) -> None:
    original = collect("Pendulum-v1", "tests/pendulum-v0")
    store = import_minari("tests/pendulum-v0", str(tmp_path / "p.zarr"))
    store.close()
    store = TrajectoryStore.open(str(tmp_path / "p.zarr"))
    assert store.num_episodes == 3 and store.num_steps == 3 * 26
    assert store.schema.dt == pytest.approx(0.05)
    assert store.schema.obs_channels == ["cos_theta", "sin_theta", "theta_dot"]
    assert list(store.episodes()["seed"]) == [0, 1, 2]
    for got, want in zip(store.iter_episodes(), original.iterate_episodes(), strict=True):
        np.testing.assert_array_equal(got.obs, want.observations)
        np.testing.assert_array_equal(got.action[:-1], want.actions)
        np.testing.assert_array_equal(got.reward[:-1], want.rewards.astype(np.float32))
        assert np.isnan(got.action[-1]).all() and np.isnan(got.reward[-1])
        assert got.truncated[-1] and not got.terminated.any()  # the 25-step time limit

    assert export_minari(str(tmp_path / "p.zarr"), "tests/pendulum-export-v0") == "tests/pendulum-export-v0"
    exported = minari.load_dataset("tests/pendulum-export-v0")
    assert exported.observation_space == original.observation_space
    assert exported.action_space == original.action_space
    assert_same_episodes(original, exported)


def test_cartpole_discrete_round_trip_by_path(minari_root: Path, tmp_path: Path) -> None:
    original = collect("CartPole-v1", "tests/cartpole-v0", episodes=4, max_steps=40)
    path = minari_root / "tests" / "cartpole-v0"
    store = import_minari(str(path), str(tmp_path / "c.zarr"))  # a dataset directory works too
    assert store.schema.discrete and store.schema.dt == pytest.approx(0.02)
    ends = [(ep.terminated[-1], ep.truncated[-1]) for ep in store.iter_episodes()]
    want = [(e.terminations[-1], e.truncations[-1]) for e in original.iterate_episodes()]
    assert ends == want
    assert all(ep.action[-1, 0] == -1 for ep in store.iter_episodes())
    store.close()

    other_root = tmp_path / "elsewhere"
    export_minari(str(tmp_path / "c.zarr"), "tests/cartpole-export-v0", data_path=other_root)
    assert (other_root / "tests" / "cartpole-export-v0" / "data").is_dir()
    exported = minari.MinariDataset(other_root / "tests" / "cartpole-export-v0" / "data")
    assert_same_episodes(original, exported)


def test_export_refuses_a_malformed_id_before_writing(minari_root: Path, tmp_path: Path) -> None:
    collect("Pendulum-v1", "tests/pendulum-v0", episodes=1, max_steps=5)
    import_minari("tests/pendulum-v0", str(tmp_path / "p.zarr")).close()
    with pytest.raises(ValueError, match="Malformed dataset ID"):
        export_minari(str(tmp_path / "p.zarr"), "bad id")
    assert not (minari_root / "bad id").exists()


def test_missing_dataset_is_not_downloaded(minari_root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="never downloads"):
        import_minari("tests/absent-v0", str(tmp_path / "x.zarr"))
    assert not (tmp_path / "x.zarr").exists()
