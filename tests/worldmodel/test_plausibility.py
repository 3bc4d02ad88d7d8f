"""Declared bounds are hard limits for imagined observations of every model kind (worldmodel/units.py), and
the evaluation states its yardstick and reports the fraction of samples outside them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from gymnasium import spaces

from data_pipeline.ingest import ingest_file
from data_pipeline.schema import StoreSchema
from data_pipeline.store import TrajectoryStore
from data_pipeline.windows.batch import Batch, Normalization
from worldmodel.evaluation import evaluate, format_table
from worldmodel.kinds import build_model, resolve_config
from worldmodel.units import declared_bounds

# Channel 0 declared [-1, 1] (recorded over all of it), channel 1 declared [-8, 8] (recorded [-2, 2]),
# channel 2 undeclared (recorded [-2, 2], so its limit is the widened [-3, 3]).
LOW, HIGH = np.array([-1.0, -8.0, -np.inf], np.float32), np.array([1.0, 8.0, np.inf], np.float32)
KINDS = ["diffusion", "ensemble", "rssm"]


def _schema() -> StoreSchema:
    return StoreSchema.from_spaces(spaces.Box(LOW, HIGH, dtype=np.float32),
                                   spaces.Box(-1.0, 1.0, (1,), np.float32), dt=0.1)


def _normalization() -> Normalization:
    # Wide stds: an untrained model's unit-scale outputs become large physical values that hit every limit.
    return Normalization(obs_mean=[0.0] * 3, obs_std=[5.0, 20.0, 20.0], obs_min=[-1.0, -2.0, -2.0],
                         obs_max=[1.0, 2.0, 2.0], action_mean=[0.0], action_std=[1.0], action_min=[-1.0],
                         action_max=[1.0], reward_mean=0.0, reward_std=1.0, reward_min=-1.0, reward_max=1.0,
                         num_actions=0)


def _model(kind: str):  # noqa: ANN202 - a ModelBase of the kind
    torch.manual_seed(0)
    return build_model(kind, resolve_config(kind, {"preset": "tiny"}), _schema(), _normalization()).eval()


def _imagine(model, n: int = 64, h: int = 6) -> torch.Tensor:  # noqa: ANN001
    state = model.observe(model.initial_state(n), torch.zeros(n, 1, 3), torch.zeros(n, 1, 1),
                          torch.ones(n, 1, dtype=torch.bool))
    with torch.no_grad():
        _, pred = model.imagine(state, torch.rand(n, h, 1, generator=torch.Generator().manual_seed(1)) * 2 - 1,
                                torch.Generator().manual_seed(2))
    return pred.obs


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("scale", [1.0, 50.0])
def test_imagined_samples_stay_in_declared_bounds_and_undeclared_channels_in_the_widened_range(
        kind: str, scale: float) -> None:
    model = _model(kind)
    model.set_calibration(torch.full((1, 3), scale))  # a calibration that widens the band keeps the limits
    obs = _imagine(model)
    low, high = torch.tensor([-1.0, -8.0, -3.0]), torch.tensor([1.0, 8.0, 3.0])
    assert bool(((obs >= low) & (obs <= high)).all()), (obs.amin((0, 1)), obs.amax((0, 1)))
    # The limits are reached, so the clamp is what holds them: channel 0 is not widened to [-1.5, 1.5],
    # and undeclared channel 2 goes past its recorded range into the 25% margin.
    assert float(obs[..., 0].abs().max()) == pytest.approx(1.0)
    assert float(obs[..., 2].abs().max()) > 2.0


def test_placeholder_bounds_declare_nothing() -> None:
    """CartPole's velocities are bounded by float32 max: no declaration, the widened range applies."""
    big = np.finfo(np.float32).max
    schema = StoreSchema.from_spaces(spaces.Box(np.array([-4.8, -big], np.float32), np.array([4.8, big], np.float32)),
                                     spaces.Discrete(2), dt=0.02)
    low, high = declared_bounds(schema)
    assert low[0] == pytest.approx(-4.8) and high[0] == pytest.approx(4.8)
    assert bool(low[1:].isnan().all()) and bool(high[1:].isnan().all())


def test_an_ingest_spec_low_high_reach_the_model_as_hard_limits(tmp_path: Path) -> None:
    t = np.round(np.arange(21) * 0.1, 6)
    pd.DataFrame({"t": t, "temp": 20.0 + t, "flow": 5.0 - t, "valve": 0.5}).to_csv(tmp_path / "log.csv", index=False)
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump({
        "timestamp": {"column": "t", "unit": "s"}, "dt": 0.1,
        "observation": {"channels": [{"column": "temp", "low": 0, "high": 25}, "flow"]},
        "action": {"channels": ["valve"]}}))
    ingest_file("csv", str(tmp_path / "log.csv"), str(tmp_path / "spec.yaml"), str(tmp_path / "s.zarr")).close()
    with TrajectoryStore.open(str(tmp_path / "s.zarr")) as store:
        schema = store.schema
    low, high = declared_bounds(schema)
    assert low[0] == 0 and high[0] == 25 and bool(low[1].isnan()) and bool(high[1].isnan())
    norm = Normalization(obs_mean=[20.0, 4.0], obs_std=[10.0, 10.0], obs_min=[20.0, 3.0], obs_max=[22.0, 5.0],
                         action_mean=[0.5], action_std=[1.0], action_min=[0.5], action_max=[0.5], reward_mean=0.0,
                         reward_std=1.0, reward_min=0.0, reward_max=0.0, num_actions=0)
    units = build_model("ensemble", resolve_config("ensemble", {"preset": "tiny"}), schema, norm).units
    clamped = units.clamp_plausible(torch.tensor([[100.0, 100.0], [-100.0, -100.0]]))
    torch.testing.assert_close(clamped, torch.tensor([[25.0, 5.5], [0.0, 2.5]]))  # flow: [3, 5] widened by 25%


def _windows(b: int = 8, t: int = 6) -> Batch:
    gen = torch.Generator().manual_seed(0)
    obs = torch.rand(b, t, 3, generator=gen) * 2 - 1
    no = torch.zeros(b, t, dtype=torch.bool)
    first = no.clone()
    first[:, 0] = True
    return Batch(obs=obs, action=torch.zeros(b, t, 1), reward=torch.zeros(b, t), terminated=no, is_first=first,
                 is_last=no.clone())


@pytest.mark.parametrize("kind", KINDS)
def test_evaluation_reports_no_sample_outside_declared_bounds(kind: str) -> None:
    metrics = evaluate(_model(kind), _windows(), context=2, horizons=(1, 4), samples=4)
    assert metrics["out_of_bounds/h1"] == 0.0 and metrics["out_of_bounds/h4"] == 0.0


def test_out_of_bounds_counts_samples_past_a_declared_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model("ensemble")
    monkeypatch.setattr(model.units, "clamp_plausible", lambda obs: obs)  # a model that ignores the limits
    metrics = evaluate(model, _windows(), context=2, horizons=(1, 4), samples=4)
    assert metrics["out_of_bounds/h4"] > 0.0


def test_nrmse_is_the_rms_over_channels_and_the_table_says_so() -> None:
    """Persistence is off by 3 stds on channel 0 and 4 on channel 1: NRMSE √((9 + 16) / 2), not the mean 3.5."""
    schema = StoreSchema.from_spaces(spaces.Box(-np.inf, np.inf, (2,), np.float32),
                                     spaces.Box(-1.0, 1.0, (1,), np.float32), dt=0.1)
    norm = Normalization(obs_mean=[0.0, 0.0], obs_std=[1.0, 1.0], obs_min=[-100.0] * 2, obs_max=[100.0] * 2,
                         action_mean=[0.0], action_std=[1.0], action_min=[-1.0], action_max=[1.0], reward_mean=0.0,
                         reward_std=1.0, reward_min=0.0, reward_max=0.0, num_actions=0)
    model = build_model("ensemble", resolve_config("ensemble", {"preset": "tiny"}), schema, norm).eval()
    b, t = 4, 3
    obs = torch.zeros(b, t, 2)
    obs[:, 2] = torch.tensor([3.0, 4.0])  # one step after the context's last row
    no = torch.zeros(b, t, dtype=torch.bool)
    first = no.clone()
    first[:, 0] = True
    windows = Batch(obs=obs, action=torch.zeros(b, t, 1), reward=torch.zeros(b, t), terminated=no, is_first=first,
                    is_last=no.clone())
    metrics = evaluate(model, windows, context=2, horizons=(1,), samples=2)
    assert metrics["persistence_nrmse/h1"] == pytest.approx((12.5) ** 0.5)
    per_channel = [metrics[f"nrmse/h1/{c}"] for c in schema.obs_channels]
    assert metrics["nrmse/h1"] == pytest.approx(float(np.sqrt(np.mean(np.square(per_channel)))))
    table = format_table(metrics, (1,))
    assert "RMS over channels" in table.splitlines()[0] and "out_of_bounds" in table
