"""The probabilistic ensemble (the default model): elites, trajectory sampling (TS-inf), member
resampling, log-variance bounds, noise scale, presets and config errors."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from gymnasium import spaces

from data_pipeline.schema import StoreSchema
from data_pipeline.windows.batch import Batch, Normalization
from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel

OBS_DIM = 3


def _model(config: EnsembleConfig | None = None) -> EnsembleWorldModel:
    torch.manual_seed(0)
    schema = StoreSchema.from_spaces(spaces.Box(-10.0, 10.0, (OBS_DIM,), np.float32),
                                     spaces.Box(-2.0, 2.0, (1,), np.float32), dt=0.05)
    norm = Normalization(obs_mean=[0.0] * OBS_DIM, obs_std=[1.0] * OBS_DIM, obs_min=[-5.0] * OBS_DIM,
                         obs_max=[5.0] * OBS_DIM, action_mean=[0.0], action_std=[1.0], action_min=[-2.0],
                         action_max=[2.0], reward_mean=0.0, reward_std=1.0, reward_min=-1.0, reward_max=1.0)
    return EnsembleWorldModel(config or EnsembleConfig.preset("tiny"), schema, norm).eval()


def _batch(b: int = 8, t: int = 10) -> Batch:
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(b, t, OBS_DIM, generator=gen)
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    return Batch(obs=obs, action=torch.rand(b, t, 1, generator=gen) * 4 - 2, reward=torch.randn(b, t, generator=gen),
                 terminated=torch.zeros(b, t, dtype=torch.bool), is_first=is_first,
                 is_last=torch.zeros(b, t, dtype=torch.bool))


def test_end_validation_picks_the_members_with_the_lowest_loss_as_elites() -> None:
    model = _model(EnsembleConfig(members=5, elites=2, hidden=16, layers=1))
    model.end_validation({"member_loss": torch.tensor([3.0, 0.5, 2.0, 0.1, 9.0])})
    assert model.elite_idx.tolist() == [3, 1]
    # Metrics without a per-member loss (or of the wrong size) leave the elites alone.
    model.end_validation({"member_loss": torch.tensor([1.0, 2.0])})
    assert model.elite_idx.tolist() == [3, 1]


def test_trajectories_keep_their_member_across_imagined_steps_ts_inf() -> None:
    model = _model()
    state = model.initial_state(6)
    assert state["member"].tolist() == [0, 1, 0, 1, 0, 1]  # spread over the elites
    state = model.observe(state, torch.zeros(6, 2, OBS_DIM), torch.zeros(6, 2, 1), torch.ones(6, 2, dtype=torch.bool))
    end, _ = model.imagine(state, torch.zeros(6, 5, 1), torch.Generator().manual_seed(0))
    assert torch.equal(end["member"], state["member"])


def test_resample_members_draws_elites_reproducibly() -> None:
    model = _model(EnsembleConfig(members=5, elites=3, hidden=16, layers=1))
    model.end_validation({"member_loss": torch.tensor([3.0, 0.5, 2.0, 0.1, 9.0])})  # elites 3, 1, 2
    state = model.initial_state(200)
    a = model.resample_members(state, torch.Generator().manual_seed(1))
    b = model.resample_members(state, torch.Generator().manual_seed(1))
    assert torch.equal(a["member"], b["member"])
    assert set(a["member"].tolist()) == {1, 2, 3}
    assert torch.equal(a["obs"], state["obs"])


def test_zero_noise_scale_samples_the_members_mean() -> None:
    model = _model(replace(EnsembleConfig.preset("tiny"), noise_scale=0.0))
    state = model.observe(model.initial_state(4), torch.randn(4, 1, OBS_DIM), torch.zeros(4, 1, 1),
                          torch.ones(4, 1, dtype=torch.bool))
    _, pred = model.step(state, torch.zeros(4, 1), torch.Generator().manual_seed(0))
    torch.testing.assert_close(pred.obs, pred.obs_mean)


def test_uncertainty_is_the_elites_disagreement() -> None:
    one = _model(EnsembleConfig(members=2, elites=1, hidden=16, layers=1))
    state = one.initial_state(4)
    _, pred = one.step(state, torch.zeros(4, 1))
    assert torch.equal(pred.uncertainty, torch.zeros(4))
    many = _model()
    state = many.observe(many.initial_state(4), torch.randn(4, 1, OBS_DIM), torch.zeros(4, 1, 1),
                         torch.ones(4, 1, dtype=torch.bool))
    _, pred = many.step(state, torch.ones(4, 1))
    assert bool((pred.uncertainty > 0).all())


def test_log_variance_stays_within_the_soft_bounds_for_extreme_inputs() -> None:
    model = _model()
    members = model.config.members
    x = torch.randn(members, 64, OBS_DIM) * 1e3
    _, logvar, _ = model(x, torch.randn(members, 64, 1) * 1e3)
    assert bool((logvar <= model.max_logvar + 1e-4).all()) and bool((logvar >= model.min_logvar - 1e-4).all())


def test_training_loss_bootstraps_and_reports_a_loss_per_member() -> None:
    model = _model().train()
    torch.manual_seed(0)
    loss_a, metrics = model.loss(_batch())
    torch.manual_seed(1)
    loss_b, _ = model.loss(_batch())
    assert metrics["member_loss"].shape == (model.config.members,)
    assert not torch.equal(loss_a, loss_b), "each member trains on its own bootstrap resample"
    model.eval()
    assert torch.equal(model.loss(_batch())[0], model.loss(_batch())[0]), "no bootstrap in evaluation"


def test_a_few_steps_lower_the_loss() -> None:
    model = _model().train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = _batch()
    first = None
    for _ in range(30):
        loss, _ = model.loss(batch)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < first


def test_presets_and_config_errors() -> None:
    assert EnsembleConfig.preset("medium") == EnsembleConfig()
    assert EnsembleConfig.preset("tiny").members == 3
    with pytest.raises(ValueError, match="preset 'huge'"):
        EnsembleConfig.preset("huge")
    with pytest.raises(ValueError, match=r"elites=4 must be in \[1, members=3\]"):
        _model(EnsembleConfig(members=3, elites=4))
