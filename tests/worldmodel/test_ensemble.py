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


def test_validation_loss_is_the_members_obs_mse_alone_reward_and_termination_only_logged() -> None:
    """val/loss picks the best weights and the elites: the Δobs a rollout carries, not reward or termination
    (issue 14's zoo: the termination BCE was 98% of CartPole's val/loss, the reward error ~97% of IDP's MSE)."""
    model = _model().eval()
    batch = _batch()
    loss, metrics = model.loss(batch)
    other = replace(batch, reward=batch.reward * 50 + 3, terminated=torch.ones_like(batch.terminated))
    loss_other, metrics_other = model.loss(other)
    assert torch.equal(loss, loss_other) and torch.equal(metrics["member_loss"], metrics_other["member_loss"])
    assert float(metrics_other["reward_mse"]) > float(metrics["reward_mse"])
    assert float(metrics_other["termination_bce"]) != float(metrics["termination_bce"])
    # The per-member loss is the MSE of that member's Δobs mean, in units of the target scale.
    x_obs, x_act, target, _ = model._transitions(batch)
    e = model.config.members
    with torch.no_grad():
        mean, _, _ = model(x_obs.expand(e, -1, -1), x_act.expand(e, -1, -1))
    d = model.obs_dim
    mse = (((mean - target) / model.target_scale)[..., :d] ** 2).mean((1, 2))
    torch.testing.assert_close(metrics["member_loss"], mse)
    # Training still learns reward and termination: both change the training loss.
    model.train()
    torch.manual_seed(0)
    train_loss, _ = model.loss(batch)
    torch.manual_seed(0)
    assert not torch.equal(train_loss, model.loss(other)[0])


def test_the_termination_loss_trains_its_head_column_only_not_the_shared_layers() -> None:
    """The termination logit reads the hidden features detached: its BCE (a few noisy terminal rows) does not
    steer the layers the dynamics use (issue 14's zoo, IDP h2: 0.0528 shaped by it, 0.0081 not)."""
    model = _model().train()
    batch = replace(_batch(), terminated=torch.rand(8, 10, generator=torch.Generator().manual_seed(1)) < 0.3)
    _, metrics = model.loss(batch)
    metrics["termination_bce"].backward()
    assert all(layer.weight.grad is None or not layer.weight.grad.any() for layer in model.hidden_layers)
    head = model.head.weight.grad
    assert head is not None and head[..., -1].abs().sum() > 0 and not head[..., :-1].any()
    # The values are those of one head over the features: a file written before reads the same.
    x_obs, x_act, _, _ = model._transitions(batch)
    e = model.config.members
    with torch.no_grad():
        _, _, term = model(x_obs.expand(e, -1, -1), x_act.expand(e, -1, -1))
        h = torch.cat([x_obs.expand(e, -1, -1), x_act.expand(e, -1, -1)], -1)
        for layer in model.hidden_layers:
            h = torch.nn.functional.silu(layer(h))
        torch.testing.assert_close(term, model.head(h)[..., -1])


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


def _slow_system(b: int = 64, t: int = 10, seed: int = 0) -> Batch:
    """x' = x + 0.01·a on channel 0 (a per-step change ~1% of the channel's std, like a smooth plant's), the
    other channels a slow drift; reward constant (CartPole's)."""
    gen = torch.Generator().manual_seed(seed)
    action = torch.rand(b, t, 1, generator=gen) * 4 - 2
    x0 = torch.randn(b, 1, OBS_DIM, generator=gen)
    step = torch.cat([0.01 * action, 0.005 * torch.ones(b, t, OBS_DIM - 1)], -1)
    obs = x0 + torch.cumsum(step, 1) - step
    is_first = torch.zeros(b, t, dtype=torch.bool)
    is_first[:, 0] = True
    return Batch(obs=obs, action=action, reward=torch.zeros(b, t), terminated=torch.zeros(b, t, dtype=torch.bool),
                 is_first=is_first, is_last=torch.zeros(b, t, dtype=torch.bool))


def test_targets_are_scaled_by_their_std_from_the_first_training_batch() -> None:
    model = _model().train()
    batch = _slow_system()
    model.loss(batch)
    delta = (batch.obs[:, 1:] - batch.obs[:, :-1]).reshape(-1, OBS_DIM)
    expected = torch.cat([delta.std(0)[:1], torch.ones(OBS_DIM)])  # drift channels and reward never vary: 1
    torch.testing.assert_close(model.target_scale, expected, rtol=1e-4, atol=1e-6)
    model.loss(_batch())  # later batches do not move it
    torch.testing.assert_close(model.target_scale, expected, rtol=1e-4, atol=1e-6)
    model.eval()
    x, a = torch.zeros(model.config.members, 4, OBS_DIM), torch.zeros(model.config.members, 4, 1)
    mean, logvar, _ = model(x, a)
    model.target_scale.fill_(1.0)
    raw_mean, raw_logvar, _ = model(x, a)
    torch.testing.assert_close(mean, raw_mean * expected)  # outputs are in normalized units, not scaled ones
    torch.testing.assert_close(logvar, raw_logvar + 2 * expected.log())


def test_a_smooth_system_s_small_per_step_change_is_learned() -> None:
    """The zoo's finding: with unscaled targets the NLL's log-variance and termination terms swamped a 1%
    per-step change and the members' means stayed ~5x worse than a plain MLP's."""
    model = _model(replace(EnsembleConfig.preset("tiny"), hidden=64)).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for i in range(300):
        loss, _ = model.loss(_slow_system(seed=i))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    test = _slow_system(seed=10_000)
    x_obs, x_act, target, _ = model._transitions(test)
    mean, _, _ = model(x_obs.expand(model.config.members, -1, -1), x_act.expand(model.config.members, -1, -1))
    err = (mean[model.elite_idx].mean(0)[:, 0] - target[:, 0]).detach().pow(2).mean()
    assert float(err) < 0.05 * float(target[:, 0].var()), "the mean explains over 95% of the per-step change"


def test_a_model_file_without_target_scale_loads_unscaled_and_a_bad_scale_is_refused() -> None:
    model = _model().train()
    model.loss(_slow_system())
    state = model.state_dict()
    old = {k: v for k, v in state.items() if not k.startswith("target_scale")}  # written before it existed
    fresh = _model()
    fresh.load_state_dict(old)
    assert torch.equal(fresh.target_scale, torch.ones(OBS_DIM + 1)) and bool(fresh.target_scale_set)
    for bad in (torch.full((OBS_DIM + 1,), float("nan")), torch.zeros(OBS_DIM + 1), torch.ones(2)):
        with pytest.raises(ValueError, match="target_scale"):
            _model().load_state_dict({**state, "target_scale": bad})
