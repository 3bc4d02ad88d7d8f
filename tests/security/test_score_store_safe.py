"""The live twin's anomaly score store never replaces what the user put at its path."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from data_pipeline.store.overwrite import OutputExistsError
from twin.scores import ScoreStore


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_user_files_at_the_score_path_are_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "plant.anomaly.zarr"
    path.mkdir()
    (path / "notes.txt").write_text("my notes")
    before = _digest(path)
    with pytest.raises(OutputExistsError, match=r"plant\.anomaly\.zarr.*notes\.txt"):
        ScoreStore(str(path), ["a", "b"], {})
    assert _digest(path) == before
    assert ScoreStore.path_for(str(tmp_path / "plant.zarr")) == str(path)  # the path the live twin derives


def test_another_zarr_group_is_refused(tmp_path: Path) -> None:
    import zarr

    path = tmp_path / "other.zarr"
    zarr.open_group(str(path), mode="w", zarr_format=3, attributes={"title": "somebody else's data"})
    before = _digest(path)
    with pytest.raises(OutputExistsError, match="not twinworld anomaly scores"):
        ScoreStore(str(path), ["a", "b"], {})
    assert _digest(path) == before
    with pytest.raises(OutputExistsError):  # the refusal released the lock: a second try is refused the same way
        ScoreStore(str(path), ["a", "b"], {})


def test_own_scores_reopen_and_append(tmp_path: Path) -> None:
    path = str(tmp_path / "s.anomaly.zarr")
    first = ScoreStore(path, ["a", "b"], {"threshold": 1.0})
    first.close()
    again = ScoreStore(path, ["a", "b"], {})
    again.close()
