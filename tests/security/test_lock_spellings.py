"""Issue 13: the one-writer lock holds whatever spelling reaches the same store: `./x` and `x`, a trailing
slash, absolute and relative, a symlink to the store, a path through a symlinked folder, `file://` and
`local://` (fsspec's two names for the local disk). Scenario stores take the writer lock too."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_tiny_episodes, make_tiny_schema

from data_pipeline.store import StoreLockedError, TrajectoryStore, lock_path_of
from data_pipeline.store.lock import acquire_writer_lock, release_writer_lock
from data_pipeline.store.paths import is_url, local_path, real_location
from scenarios.store import ScenarioIndex, create_scenario_store

SPELLINGS = {
    "relative": "p.zarr",
    "dot_slash": "./p.zarr",
    "trailing_slash": "p.zarr/",
    "dot_dot": "sub/../p.zarr",
    "absolute": "{tmp}/p.zarr",
    "symlink": "link.zarr",
    "symlinked_parent": "folder_link/p.zarr",
    "file_url": "file://{tmp}/p.zarr",
    "file_url_slash": "file://{tmp}/p.zarr/",
    "local_url": "local://{tmp}/p.zarr",
    "local_url_relative": "local://p.zarr",
}


@pytest.fixture
def spelled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A store at tmp/real/p.zarr, tmp/p.zarr a link to it, and every spelling of it from cwd = tmp."""
    (tmp_path / "real").mkdir()
    (tmp_path / "sub").mkdir()
    schema = make_tiny_schema()
    with TrajectoryStore.create(str(tmp_path / "real" / "p.zarr"), schema) as store:
        store.append(make_tiny_episodes(schema, 2, 0, 1, 5))
    (tmp_path / "p.zarr").symlink_to(tmp_path / "real" / "p.zarr", target_is_directory=True)
    (tmp_path / "link.zarr").symlink_to(tmp_path / "p.zarr", target_is_directory=True)
    (tmp_path / "folder_link").symlink_to(tmp_path, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return {name: s.format(tmp=tmp_path) for name, s in SPELLINGS.items()}


def test_every_spelling_is_local_and_names_one_lock(spelled: dict[str, str], tmp_path: Path) -> None:
    real = tmp_path / "real" / "p.zarr"
    for name, path in spelled.items():
        assert not is_url(path) and local_path(path) is not None, name
        assert real_location(path) == str(real), name
        assert lock_path_of(path) == real.parent / ".p.zarr.writer-lock", name
    assert is_url("memory://x/p.zarr") and is_url("s3://bucket/p.zarr") and lock_path_of("s3://b/p.zarr") is None


@pytest.mark.parametrize("second", list(SPELLINGS))
def test_a_second_writer_through_another_spelling_is_refused(spelled: dict[str, str], second: str) -> None:
    first = "relative" if second != "relative" else "absolute"
    with TrajectoryStore.open(spelled[first], mode="a"):
        with pytest.raises(StoreLockedError, match="one writer"):
            TrajectoryStore.open(spelled[second], mode="a")
        with pytest.raises(StoreLockedError, match="one writer"):  # create --overwrite would delete under it
            TrajectoryStore.create(spelled[second], make_tiny_schema(), overwrite=True)
    with TrajectoryStore.open(spelled[second], mode="a") as store:  # freed: any spelling opens it again
        assert store.num_episodes == 2


def test_a_local_url_store_reads_and_writes_like_its_path(spelled: dict[str, str]) -> None:
    """`local://` is a path to zarr too (its LocalStore, atomic renames), not an fsspec store without a lock."""
    schema = make_tiny_schema()
    with TrajectoryStore.open(spelled["local_url"], mode="a") as store:
        store.append(make_tiny_episodes(schema, 1, 7, 1, 5))
    assert TrajectoryStore.open(spelled["relative"]).num_episodes == 3


def test_scenario_stores_take_the_writer_lock(tmp_path: Path) -> None:
    """A scenario store being written is locked like a trajectory store (generate holds it on rank 0)."""
    import numpy as np
    import torch
    import zarr

    from data_pipeline.record import record
    from data_pipeline.windows import normalization_for
    from scenarios.run import generate
    from scenarios.spec import parse_spec_text
    from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel

    record("Pendulum-v1", 1, str(tmp_path / "source.zarr"), max_episode_steps=8, progress=False).close()
    source = TrajectoryStore.open(str(tmp_path / "source.zarr"))
    torch.manual_seed(0)
    model = EnsembleWorldModel(EnsembleConfig.preset("tiny"), source.schema, normalization_for(source, [0]))
    spec = parse_spec_text("horizon: 2\nsamples: 1\ncontext: 2\nstarts: [{episode: 0, t: 3}]\n"
                           "interventions: {f: {}}\n", "s.yaml")
    out = tmp_path / "scenarios.zarr"
    lock = acquire_writer_lock(f"file://{out}/")  # another writer, spelled differently
    try:
        with pytest.raises(StoreLockedError, match="one writer"):
            generate(spec, model, source, out, attrs={}, progress=False)
        assert not out.exists()
    finally:
        release_writer_lock(lock)
    generate(spec, model, source, out, attrs={}, progress=False)
    held = acquire_writer_lock(str(out))  # generate let go of it
    release_writer_lock(held)
    index = ScenarioIndex(["s/f"], ["s"], ["f"], [0], ["e0"], [1], [0])
    with pytest.raises(FileExistsError, match="already exists; pass --overwrite"):
        create_scenario_store(out, index, make_tiny_schema(), samples=1, horizon=2, block=1, attrs={})
    assert np.isfinite(np.asarray(zarr.open_group(str(out), mode="r")["obs"][:])).all()
