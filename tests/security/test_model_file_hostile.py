"""A crafted or damaged model file is refused in one line naming the file (docs/security.md): scales in the
stored calibration that are NaN, negative or of the wrong shape never load (they turned every imagined
sample into NaN, or failed at the first step far from the file), and a file with keys missing, broken JSON
or weights of another model is a CheckpointError, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import REPO, subprocess_env
from gymnasium import spaces

import worldmodel
from data_pipeline.errors import UserError
from data_pipeline.schema import StoreSchema
from data_pipeline.windows.batch import Normalization
from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel
from worldmodel.io import CheckpointError

D = 2


def _model() -> EnsembleWorldModel:
    schema = StoreSchema.from_spaces(spaces.Box(-np.inf, np.inf, (D,), np.float32),
                                     spaces.Box(-1.0, 1.0, (1,), np.float32), dt=0.1)
    norm = Normalization(obs_mean=[0.0] * D, obs_std=[1.0] * D, obs_min=[-5.0] * D, obs_max=[5.0] * D,
                         action_mean=[0.0], action_std=[1.0], action_min=[-1.0], action_max=[1.0],
                         reward_mean=0.0, reward_std=1.0, reward_min=-1.0, reward_max=1.0, num_actions=0)
    torch.manual_seed(0)
    return EnsembleWorldModel(EnsembleConfig(members=2, elites=2, hidden=4, layers=1), schema, norm)


def _write(tmp_path: Path, name: str, change: Any) -> Path:
    data = _model().checkpoint_dict()
    data["state_dict"] = dict(data["state_dict"])
    change(data)
    path = tmp_path / f"{name}.pt"
    torch.save(data, path)
    return path


def _calibration(value: Any) -> Any:
    return lambda d: d["state_dict"].__setitem__("calibration", value)


HOSTILE = {
    "nan-calibration": _calibration(torch.full((3, D), float("nan"))),
    "inf-calibration": _calibration(torch.full((3, D), float("inf"))),
    "negative-calibration": _calibration(-torch.ones(3, D)),
    "calibration-of-other-channels": _calibration(torch.ones(3, D + 3)),
    "flat-calibration": _calibration(torch.ones(3)),
    "integer-calibration": _calibration(torch.ones(3, D, dtype=torch.int64)),
    "no-model-type": lambda d: d.pop("model_type"),
    "broken-config-json": lambda d: d.__setitem__("config", "{not json"),
    "schema-of-nothing": lambda d: d.__setitem__("schema", json.dumps({"x": 1})),
    "weights-missing": lambda d: d.__setitem__("state_dict", {}),
    "weights-not-a-dict": lambda d: d.__setitem__("state_dict", "weights"),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_a_crafted_model_file_is_refused_naming_it(tmp_path: Path, name: str) -> None:
    path = _write(tmp_path, name, HOSTILE[name])
    with pytest.raises(CheckpointError, match=f"{path}: damaged or incomplete model file"):
        worldmodel.load(str(path))


def test_a_good_calibration_still_loads(tmp_path: Path) -> None:
    scale = torch.tensor([[0.5, 1.0], [0.0, 2.0]])
    path = _write(tmp_path, "good", _calibration(scale))
    torch.testing.assert_close(worldmodel.load(str(path)).calibration, scale)


@pytest.mark.slow
def test_a_command_line_reports_the_bad_file_in_one_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "nan", HOSTILE["nan-calibration"])
    proc = subprocess.run([sys.executable, "-m", "twin.mcp", "--model", str(path), "--store", str(tmp_path / "none"),
                           "--out", str(tmp_path / "out")], cwd=REPO, env=subprocess_env(), capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)
    lines = [x for x in proc.stderr.splitlines() if "Warning" not in x and x.strip()]
    assert proc.returncode == 1, proc.stderr
    assert lines[-1].startswith(f"python -m twin.mcp: error: {path}: damaged or incomplete model file"), proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def hybrid_file(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The model-file dict of an (untrained) hybrid pendulum model."""
    from data_pipeline.record import record
    from data_pipeline.store import TrajectoryStore
    from data_pipeline.windows import normalization_for
    from worldmodel.hybrid import HybridConfig, HybridWorldModel

    path = str(tmp_path_factory.mktemp("hybrid-hostile") / "p.zarr")
    record("Pendulum-v1", 1, path, seed=0, max_episode_steps=10, progress=False).close()
    with TrajectoryStore.open(path) as store:
        torch.manual_seed(0)
        model = HybridWorldModel(HybridConfig(prior="examples.priors.pendulum:PendulumPrior"), store.schema,
                                 normalization_for(store, np.arange(store.num_episodes)))
    return model.checkpoint_dict()


@pytest.mark.parametrize("prior", ["this:Zen", "http.server:test", "twin.mcp.__main__:main"])
def test_a_model_file_naming_a_module_with_side_effects_as_prior_imports_nothing(
        hybrid_file: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prior: str) -> None:
    """Importing runs a module's top-level code (`this` prints, `antigravity` opens a browser, a `__main__` runs
    a command line): a model file naming one as its prior is refused before the import."""
    module = prior.split(":")[0]
    monkeypatch.delitem(sys.modules, module, raising=False)
    data = {**hybrid_file, "config": json.dumps({**json.loads(hybrid_file["config"]), "prior": prior})}
    torch.save(data, tmp_path / "model.pt")
    with pytest.raises(UserError, match=f"physics prior '{prior}': .* not a prior; .*nothing was imported"):
        worldmodel.load(str(tmp_path / "model.pt"))
    assert module not in sys.modules


def test_a_hybrid_model_file_naming_an_installed_prior_still_loads(hybrid_file: dict[str, Any], tmp_path: Path) -> None:
    torch.save(hybrid_file, tmp_path / "model.pt")
    assert worldmodel.load(str(tmp_path / "model.pt")).config.prior == "examples.priors.pendulum:PendulumPrior"
