"""`train.py policy --resume` on a damaged or hand-edited `state.json` (policies/checkpoint.py) is one line
naming the file and what was expected, before anything is written: truncated JSON, a list, unknown or
missing keys and wrong types were a TypeError or JSONDecodeError traceback."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

from data_pipeline.schema import StoreSchema
from data_pipeline.windows.batch import Normalization
from policies.checkpoint import OutDirError


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> str:
    from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel

    schema = StoreSchema.from_spaces(spaces.Box(-np.inf, np.inf, (2,), np.float32),
                                     spaces.Box(-1.0, 1.0, (1,), np.float32), dt=0.1)
    norm = Normalization(obs_mean=[0.0] * 2, obs_std=[1.0] * 2, obs_min=[-5.0] * 2, obs_max=[5.0] * 2,
                         action_mean=[0.0], action_std=[1.0], action_min=[-1.0], action_max=[1.0],
                         reward_mean=0.0, reward_std=1.0, reward_min=-1.0, reward_max=1.0, num_actions=0)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("state-hostile") / "model.pt"
    EnsembleWorldModel(EnsembleConfig(members=2, elites=2, hidden=4, layers=1), schema, norm).save(str(path))
    return str(path)


@pytest.mark.parametrize("text", ['{"model": "m", "iteration": 1', "[1, 2]", '{"model": "m", "evil": 1}', "{}",
                                  '{"model": "m", "iteration": "1"}'],
                         ids=["truncated", "list", "unknown-key", "no-model", "wrong-type"])
def test_a_damaged_state_file_is_named_before_anything_is_written(model: str, tmp_path: Path, text: str) -> None:
    from policies.config import PolicyConfig
    from policies.loop import train_policy

    out = tmp_path / "run"
    out.mkdir()
    (out / "state.json").write_text(text)
    cfg = PolicyConfig(model=model, store=str(tmp_path / "store.zarr"), out_dir=str(out), registered_policy_name="")
    with pytest.raises(OutDirError, match=f"{out / 'state.json'}: not the state of a policy run .*expected the "
                                          "state.json a run wrote"):
        train_policy(cfg, resume=True)
    assert sorted(p.name for p in out.iterdir()) == ["state.json"] and (out / "state.json").read_text() == text
