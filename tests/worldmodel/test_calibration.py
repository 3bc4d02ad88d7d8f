"""Calibration of the predictive spread (worldmodel/calibration.py, the mechanism in worldmodel/base.py).

The data is a random walk with known noise, x_{t+1} = x_t + 0.1·ε, and the ensembles are built by hand:
their members predict no change (the truth) with a chosen noise and chosen member offsets, so a band that
is too wide or too narrow is known by construction, and held-out windows show whether the fix generalizes.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces

import worldmodel
from data_pipeline.schema import StoreSchema
from data_pipeline.windows.batch import Batch, Normalization
from worldmodel.calibration import CalibrationFit, calibrate_split, fit_calibration
from worldmodel.ensemble import EnsembleConfig, EnsembleWorldModel
from worldmodel.evaluation import coverage90, evaluate, rollout_samples
from worldmodel.kinds import build_model, resolve_config

D, SIGMA, CONTEXT, HORIZON, SAMPLES = 2, 0.1, 2, 10, 20
HORIZONS = (1, 5, 10)


def _schema(action_dim: int = 1) -> StoreSchema:
    return StoreSchema.from_spaces(spaces.Box(-np.inf, np.inf, (D,), np.float32),
                                   spaces.Box(-1.0, 1.0, (action_dim,), np.float32), dt=0.1)


def _normalization(action_dim: int = 1) -> Normalization:
    return Normalization(obs_mean=[0.0] * D, obs_std=[1.0] * D, obs_min=[-50.0] * D, obs_max=[50.0] * D,
                         action_mean=[0.0] * action_dim, action_std=[1.0] * action_dim,
                         action_min=[-1.0] * action_dim, action_max=[1.0] * action_dim,
                         reward_mean=0.0, reward_std=1.0, reward_min=-1.0, reward_max=1.0, num_actions=0)


def random_walk(windows: int, seed: int) -> Batch:
    """`windows` random-walk windows of CONTEXT + HORIZON rows, noise SIGMA per step."""
    gen = torch.Generator().manual_seed(seed)
    t = CONTEXT + HORIZON
    obs = torch.cumsum(SIGMA * torch.randn(windows, t, D, generator=gen), 1) + torch.randn(windows, 1, D, generator=gen)
    no = torch.zeros(windows, t, dtype=torch.bool)
    first = no.clone()
    first[:, 0] = True
    return Batch(obs=obs, action=torch.zeros(windows, t, 1), reward=torch.zeros(windows, t), terminated=no,
                 is_first=first, is_last=no.clone())


def hand_ensemble(noise_std: float, member_offset: float = 0.0, schema: StoreSchema | None = None,
                  normalization: Normalization | None = None) -> EnsembleWorldModel:
    """Three elites that predict Δobs = offset_m (offsets -o, 0, +o on every channel) with noise `noise_std`."""
    model = EnsembleWorldModel(EnsembleConfig(members=3, elites=3, hidden=8, layers=1), schema or _schema(),
                               normalization or _normalization())
    d = model.obs_dim
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # hidden features are silu(0) = 0: the head's bias is the output
        model.max_logvar.fill_(5.0)
        model.min_logvar.fill_(-20.0)
        bias = model.head.bias  # (E, 1, mean D+1 | logvar D+1 | termination)
        bias[:, 0, : d] = torch.tensor([-member_offset, 0.0, member_offset]).unsqueeze(1)
        bias[:, 0, d + 1 : 2 * (d + 1)] = math.log(noise_std**2)
        bias[:, 0, -1] = -10.0
    return model.eval()


def coverage(model: worldmodel.WorldModel, windows: Batch, seed: int = 5) -> dict[int, float]:
    pred = rollout_samples(model, windows, CONTEXT, HORIZON, SAMPLES, seed)
    truth = windows.obs[:, CONTEXT:]
    return {h: float(coverage90(pred[:, :, h - 1], truth[:, h - 1]).mean()) for h in HORIZONS}


@pytest.mark.parametrize("noise_std,offset,too", [(3 * SIGMA, 0.0, "wide"), (0.3 * SIGMA, 0.0, "narrow"),
                                                  (SIGMA, 0.15, "wide")],
                         ids=["over-dispersed", "under-dispersed", "members-disagree"])
def test_calibration_brings_held_out_coverage90_into_band(noise_std: float, offset: float, too: str) -> None:
    model = hand_ensemble(noise_std, offset)
    validation, held_out = random_walk(256, seed=1), random_walk(256, seed=2)
    before = coverage(model, held_out)
    assert all((c > 0.95) if too == "wide" else (c < 0.85) for c in before.values()), before
    fit_calibration(model, validation, CONTEXT, HORIZON, SAMPLES, seed=0)
    after = coverage(model, held_out)
    assert all(0.85 <= c <= 0.95 for c in after.values()), after
    # The one yardstick agrees: evaluate's coverage90 is the same measurement.
    metrics = evaluate(model, held_out, context=CONTEXT, horizons=HORIZONS, samples=SAMPLES, seed=5)
    assert metrics["coverage90/h10"] == pytest.approx(after[10])


def test_fit_is_deterministic_for_a_seed() -> None:
    validation = random_walk(64, seed=1)
    a, b = hand_ensemble(3 * SIGMA), hand_ensemble(3 * SIGMA)
    scale_a = fit_calibration(a, validation, CONTEXT, HORIZON, SAMPLES, seed=3)
    scale_b = fit_calibration(b, validation, CONTEXT, HORIZON, SAMPLES, seed=3)
    assert scale_a is not None and scale_b is not None and torch.equal(scale_a, scale_b)
    assert scale_a.shape == (HORIZON, D) and bool((scale_a < 1).all())  # every step's band was too wide


def test_calibration_travels_in_the_model_file(tmp_path: Path) -> None:
    model = hand_ensemble(3 * SIGMA)
    fit_calibration(model, random_walk(64, seed=1), CONTEXT, HORIZON, SAMPLES, seed=0)
    loaded = worldmodel.load(model.save(str(tmp_path / "model.pt")))
    assert torch.equal(loaded.calibration, model.calibration) and loaded.calibration.shape == (HORIZON, D)
    held_out = random_walk(16, seed=2)
    torch.testing.assert_close(rollout_samples(loaded, held_out, CONTEXT, HORIZON, 4, seed=1),
                               rollout_samples(model, held_out, CONTEXT, HORIZON, 4, seed=1))


def test_an_old_model_file_without_calibration_loads_uncalibrated(tmp_path: Path) -> None:
    model = hand_ensemble(3 * SIGMA)
    data = model.checkpoint_dict()
    del data["state_dict"]["calibration"]  # a file written before calibration existed
    torch.save(data, tmp_path / "old.pt")
    old = worldmodel.load(str(tmp_path / "old.pt"))
    assert not old.calibrated
    held_out = random_walk(16, seed=2)
    torch.testing.assert_close(rollout_samples(old, held_out, CONTEXT, HORIZON, 4, seed=1),
                               rollout_samples(model, held_out, CONTEXT, HORIZON, 4, seed=1))


@pytest.mark.parametrize("kind", ["diffusion", "ensemble", "rssm"])
def test_every_kind_applies_its_calibration_in_step(kind: str) -> None:
    """A scale below 1 narrows one step's spread over samples from the same state; obs_std follows."""
    torch.manual_seed(0)
    model = build_model(kind, resolve_config(kind, {"preset": "tiny"}), _schema(), _normalization()).eval()
    n = 256
    state = model.observe(model.initial_state(n), torch.zeros(n, 1, D), torch.zeros(n, 1, 1),
                          torch.ones(n, 1, dtype=torch.bool))
    spreads, stds = [], []
    for scale in (1.0, 0.1):
        model.set_calibration(torch.full((1, D), scale))
        with torch.no_grad():
            _, pred = model.step(state, torch.zeros(n, 1), torch.Generator().manual_seed(0))
        spreads.append(pred.obs.std(0))
        stds.append(pred.obs_std.mean(0))
    assert bool((spreads[1] < 0.7 * spreads[0]).all()), spreads
    assert bool((stds[1] < 0.7 * stds[0]).all()), stds


def test_a_world_model_env_step_uses_the_calibration(tiny_store) -> None:
    from envs.vector_env import WorldModelVectorEnv

    store = tiny_store(episodes=4, obs_dim=D, action_dim=1, min_transitions=6)
    model = hand_ensemble(3 * SIGMA, schema=store.schema, normalization=_normalization())
    moves = []
    for scale in (1.0, 0.1):
        model.set_calibration(torch.full((1, D), scale))
        venv = WorldModelVectorEnv(64, model, store.path)
        obs, _ = venv.reset(seed=0)
        nxt, *_ = venv.step(np.zeros((64, 1), np.float32))
        moves.append(float(np.std(nxt - obs)))
        venv.close()
    assert moves[1] == pytest.approx(0.1 * moves[0], rel=0.05)


class _Split:
    """The two calls calibrate_split makes of a WindowDataModule."""

    def __init__(self, longest: int) -> None:
        self.longest = longest

    def longest_episode(self, split: str) -> int:
        return self.longest


def test_a_split_too_short_is_skipped_with_a_reason() -> None:
    model = hand_ensemble(3 * SIGMA)
    fit = calibrate_split(model, _Split(longest=2), "val", context=2, horizons=(1, 5), samples=8, max_windows=8)
    assert fit.report() == ("calibration: skipped (the longest val episode has 2 rows; calibration needs more than "
                            "model.eval_context 2)")
    assert fit.metrics() == {} and not model.calibrated
    empty = calibrate_split(model, _Split(longest=0), "val", context=2, horizons=(1,), samples=8, max_windows=8)
    assert empty.report().startswith("calibration: skipped (")


def test_the_report_names_coverage_before_and_after_per_horizon() -> None:
    fit = CalibrationFit(before={1: 0.99, 10: 1.0}, after={1: 0.9, 10: 0.91}, windows=12)
    assert fit.report() == ("calibration: coverage90 before → after (val split, 12 windows): h1 0.990 → 0.900, "
                            "h10 1.000 → 0.910")
    assert fit.metrics() == {"calibration/coverage90_before/h1": 0.99, "calibration/coverage90_before/h10": 1.0,
                             "calibration/coverage90_after/h1": 0.9, "calibration/coverage90_after/h10": 0.91}


@pytest.mark.parametrize("kind", ["diffusion", "ensemble"])
def test_a_widening_scale_is_reported_but_not_carried_forward(kind: str) -> None:
    """Above 1 the scale is observation noise: the sample reported is wider, the state carried is the model's."""
    torch.manual_seed(0)
    model = build_model(kind, resolve_config(kind, {"preset": "tiny"}), _schema(), _normalization()).eval()
    n = 64
    state = model.observe(model.initial_state(n), torch.zeros(n, 1, D), torch.zeros(n, 1, 1),
                          torch.ones(n, 1, dtype=torch.bool))
    runs = []
    for scale in (1.0, 3.0):
        model.set_calibration(torch.full((1, D), scale))
        with torch.no_grad():
            runs.append(model.step(state, torch.zeros(n, 1), torch.Generator().manual_seed(0)))
    (plain_state, plain), (wide_state, wide) = runs
    assert all(torch.equal(plain_state[k], wide_state[k]) for k in plain_state)
    assert bool((wide.obs.std(0) > 2.0 * plain.obs.std(0)).all())
