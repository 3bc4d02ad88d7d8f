"""The hybrid world model: identification of a prior's parameters, physics-only mode, the prior's invariant in
every imagined step, its model file (prior recorded, loading refused in one line when the prior is missing),
priors that do not fit the store, and priors whose step gradients cannot pass (an FMU): the residual learns."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch

import worldmodel
from data_pipeline.errors import InputError
from data_pipeline.schema import StoreSchema
from data_pipeline.windows.batch import Batch, Normalization
from examples.priors.pendulum import PendulumPrior
from worldmodel.ensemble import EnsembleLinear
from worldmodel.hybrid import HybridWorldModel
from worldmodel.kinds import build_model, resolve_config

PENDULUM = "examples.priors.pendulum:PendulumPrior"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pendulum_data(episodes: int = 10, steps: int = 200, window: int = 16) -> tuple[StoreSchema, Normalization, Batch]:
    """Random-policy Pendulum-v1 episodes cut into windows (B, window, …), the store's schema and statistics."""
    env = gym.make("Pendulum-v1")
    rng = np.random.default_rng(0)
    obs_e, act_e, rew_e = [], [], []
    for ep in range(episodes):
        o, _ = env.reset(seed=ep)
        obs, act, rew = [], [], []
        for _ in range(steps):
            a = rng.uniform(-2, 2, 1).astype(np.float32)
            obs.append(o)
            o, r, *_ = env.step(a)
            act.append(a)
            rew.append(r)
        obs_e.append(obs)
        act_e.append(act)
        rew_e.append(rew)
    o_all, a_all, r_all = np.array(obs_e, np.float32), np.array(act_e, np.float32), np.array(rew_e, np.float32)
    cut = steps // window * window

    def windows(x: np.ndarray) -> torch.Tensor:  # (episodes, steps, …) -> (B, window, …)
        return torch.as_tensor(x[:, :cut].reshape(-1, window, *x.shape[2:]))

    flat_o, flat_a = o_all.reshape(-1, 3), a_all.reshape(-1, 1)
    norm = Normalization(obs_mean=flat_o.mean(0).tolist(), obs_std=flat_o.std(0).tolist(),
                         obs_min=flat_o.min(0).tolist(), obs_max=flat_o.max(0).tolist(),
                         action_mean=flat_a.mean(0).tolist(), action_std=flat_a.std(0).tolist(), action_min=[-2.0],
                         action_max=[2.0], reward_mean=float(r_all.mean()), reward_std=float(r_all.std()),
                         reward_min=float(r_all.min()), reward_max=float(r_all.max()))
    schema = StoreSchema.from_spaces(env.observation_space, env.action_space, dt=0.05)
    obs_w = windows(o_all)
    no = torch.zeros(obs_w.shape[:2], dtype=torch.bool)
    return schema, norm, Batch(obs=obs_w, action=windows(a_all), reward=windows(r_all), terminated=no,
                               is_first=no.clone(), is_last=no.clone())


def fit(model: HybridWorldModel, data: Batch, steps: int, lr: float = 1e-3) -> HybridWorldModel:
    """A plain training loop on random windows, then one validation pass (as train.py fit ends an epoch)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-5)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        i = torch.randint(data.obs.shape[0], (32,), generator=gen)
        batch = Batch(obs=data.obs[i], action=data.action[i], reward=data.reward[i], terminated=data.terminated[i],
                      is_first=data.is_first[i], is_last=data.is_last[i])
        loss, _ = model.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        model.end_validation(model.loss(data)[1])
    return model


def hybrid(schema: StoreSchema, norm: Normalization, **fields: Any) -> HybridWorldModel:
    torch.manual_seed(0)
    model = build_model("hybrid", resolve_config("hybrid", {"preset": "tiny", "prior": PENDULUM, **fields}), schema,
                        norm)
    assert isinstance(model, HybridWorldModel)
    return model


@pytest.fixture(scope="module")
def data() -> tuple[StoreSchema, Normalization, Batch]:
    return pendulum_data()


@pytest.fixture(scope="module")
def trained(data: tuple[StoreSchema, Normalization, Batch]) -> HybridWorldModel:
    schema, norm, batch = data
    return fit(hybrid(schema, norm), batch, steps=250)


def test_identifies_the_pendulum_parameters_from_ten_episodes(trained: HybridWorldModel) -> None:
    info = trained.describe()
    gravity, gain = info["parameters"]["gravity"], info["parameters"]["gain"]
    assert (gravity["init"], gain["init"]) == (9.0, 2.5)  # started 10% and 17% off
    assert gravity["mean"] == pytest.approx(10.0, rel=0.02) and gain["mean"] == pytest.approx(3.0, rel=0.02)
    assert gravity["unit"] == "m/s^2" and gravity["std"] < 0.2
    length = info["parameters"]["length"]
    assert not length["learnable"] and length["mean"] == 1.0 and length["std"] == 0.0  # frozen: stays at init
    assert 0.0 <= info["residual_fraction"] < 0.1, "the physics explains the pendulum: the residual stays small"
    text = trained.describe_text()
    assert "gravity" in text and "m/s^2" in text and "residual fraction" in text
    assert trained.describe_metrics()["hybrid/gravity"] == pytest.approx(gravity["mean"])


def test_physics_only_calibrates_parameters_without_a_residual(data: tuple[StoreSchema, Normalization, Batch]
                                                                ) -> None:
    schema, norm, batch = data
    model = fit(hybrid(schema, norm, physics_only=True), batch, steps=200)
    assert model.residual is None
    info = model.describe()
    assert info["residual_fraction"] == 0.0
    assert info["parameters"]["gravity"]["mean"] == pytest.approx(10.0, rel=0.02)
    assert info["parameters"]["gain"]["mean"] == pytest.approx(3.0, rel=0.02)


def test_parameters_stay_within_their_bounds(data: tuple[StoreSchema, Normalization, Batch]) -> None:
    schema, norm, _ = data
    model = hybrid(schema, norm)
    with torch.no_grad():
        model.params.raw.fill_(1e3)
        high = model.params.values()
        model.params.raw.fill_(-1e3)
        low = model.params.values()
    assert bool((high["gravity"] <= 15.0).all()) and bool((low["gravity"] >= 5.0).all())
    assert bool((low["gain"] >= 0.5).all()) and bool((high["gain"] <= 10.0).all())


def test_every_imagined_step_keeps_cos2_plus_sin2_equal_to_one(trained: HybridWorldModel,
                                                               data: tuple[StoreSchema, Normalization, Batch]) -> None:
    _, _, batch = data
    b, horizon = 64, 50
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        state = trained.observe(trained.initial_state(b), batch.obs[:b, :4], batch.action[:b, :4],
                                torch.zeros(b, 4, dtype=torch.bool))
        actions = torch.rand(b, horizon, 1, generator=gen) * 4 - 2
        _, pred = trained.imagine(state, actions, gen)
    assert float(pred.obs_std.min()) > 0  # noise is drawn, and still every sample is a physical state
    for obs in (pred.obs, pred.obs_mean):
        assert float((obs[..., 0] ** 2 + obs[..., 1] ** 2 - 1).abs().max()) <= 1e-5


def test_model_file_records_the_prior_and_reloads_what_was_learned(trained: HybridWorldModel, tmp_path: Path) -> None:
    path = trained.save(str(tmp_path / "model.pt"))
    data = torch.load(path, weights_only=True)
    assert json.loads(data["config"])["prior"] == PENDULUM
    loaded = worldmodel.load(path)
    assert isinstance(loaded, HybridWorldModel) and loaded.describe() == trained.describe()


def test_a_model_file_naming_a_missing_prior_is_refused_in_one_line(trained: HybridWorldModel,
                                                                    tmp_path: Path) -> None:
    data = trained.checkpoint_dict()
    data["config"] = json.dumps({**json.loads(data["config"]), "prior": "no_such_module.priors:Pendulum"})
    torch.save(data, tmp_path / "model.pt")
    with pytest.raises(InputError, match="cannot import module 'no_such_module.priors'") as err:
        worldmodel.load(str(tmp_path / "model.pt"))
    assert "\n" not in str(err.value)


def test_a_model_file_naming_another_callable_never_calls_it(trained: HybridWorldModel, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A shared model file is untrusted: its prior must be a prior class; a function (say os:fork) is not called."""
    called = []
    module = types.ModuleType("hybrid_test_callables")
    module.boom = lambda: called.append(1)  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "hybrid_test_callables", module)
    data = trained.checkpoint_dict()
    data["config"] = json.dumps({**json.loads(data["config"]), "prior": "hybrid_test_callables:boom"})
    torch.save(data, tmp_path / "model.pt")
    with pytest.raises(InputError, match="not a prior class.*nothing was called"):
        worldmodel.load(str(tmp_path / "model.pt"))
    assert not called


@pytest.mark.parametrize(("prior", "message"), [
    ("examples.priors.cartpole:CartPolePrior",
     r"obs_to_state returned shape \(256, 3\); expected \(256, 4\).*3 observation channels"),
    ("", r"model\.config\.prior is required"),
    ("examples.priors.pendulum:NoSuchPrior", "has no attribute 'NoSuchPrior'"),
    ("worldmodel.physics:PhysicalParameter", "not a prior class"),
])
def test_a_prior_that_does_not_fit_is_one_clear_line(data: tuple[StoreSchema, Normalization, Batch], prior: str,
                                                     message: str) -> None:
    schema, norm, _ = data
    with pytest.raises(InputError, match=message) as err:
        hybrid(schema, norm, prior=prior)
    assert "\n" not in str(err.value)


class _NumpyPendulum(PendulumPrior):
    """A prior simulated outside torch (as an FMU is): no gradient reaches its parameters. Its gain is wrong."""

    def step(self, x: torch.Tensor, u: torch.Tensor, params: dict[str, torch.Tensor], dt: float) -> torch.Tensor:
        wrong = {**{k: v.detach() for k, v in params.items()}, "gain": torch.full_like(params["gain"], 1.0)}
        return torch.as_tensor(super().step(x.detach(), u.detach(), wrong, dt).numpy())


def test_a_prior_without_gradients_keeps_its_parameters_and_the_residual_learns_the_gap(
        data: tuple[StoreSchema, Normalization, Batch], monkeypatch: pytest.MonkeyPatch) -> None:
    schema, norm, batch = data
    module = types.ModuleType("hybrid_test_priors")
    module.NumpyPendulum = _NumpyPendulum  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "hybrid_test_priors", module)
    spec = "hybrid_test_priors:NumpyPendulum"
    physics_only = fit(hybrid(schema, norm, prior=spec, physics_only=True), batch, steps=60)
    assert physics_only.describe()["parameters"]["gravity"]["mean"] == pytest.approx(9.0)  # no gradient: unchanged
    with_residual = fit(hybrid(schema, norm, prior=spec), batch, steps=150, lr=3e-3)
    with torch.no_grad():
        gap = physics_only.loss(batch)[1]["mse"]
        learned = with_residual.loss(batch)[1]
    assert float(learned["mse"]) < 0.5 * float(gap)
    assert float(learned["residual_fraction"]) > 0.05


def test_a_derivative_prior_is_integrated_with_its_residual_inside_the_ode() -> None:
    """CartPole's prior is a derivative: at the start (zero residual) a member's mean is the prior's Euler step,
    and the loss's gradient reaches the residual network through the solver."""
    env = gym.make("CartPole-v1")
    schema = StoreSchema.from_spaces(env.observation_space, env.action_space, dt=0.02)
    norm = Normalization(obs_mean=[0.0] * 4, obs_std=[1.0] * 4, obs_min=[-2.4, -3, -0.21, -3],
                         obs_max=[2.4, 3, 0.21, 3],
                         action_mean=[], action_std=[], action_min=[], action_max=[], reward_mean=1.0,
                         reward_std=1.0, reward_min=1.0, reward_max=1.0, num_actions=2)
    torch.manual_seed(0)
    config = resolve_config("hybrid", {"preset": "tiny", "prior": "examples.priors.cartpole:CartPolePrior",
                                       "method": "euler"})
    model = build_model("hybrid", config, schema, norm)
    assert isinstance(model, HybridWorldModel)
    x = torch.tensor([[0.1, 0.5, 0.05, -0.3], [-1.0, -0.2, -0.1, 0.8]])
    action = torch.tensor([1, 0])
    with torch.no_grad():
        state = {"x": x, "member": torch.tensor([0, 1]), "horizon": torch.zeros(2, dtype=torch.long)}
        _, pred = model.step(state, action)
        params = {k: v[:2] for k, v in model.params.values().items()}
        expected = x + 0.02 * model.prior.derivative(x, action.float()[:, None], params)  # type: ignore[attr-defined]
    torch.testing.assert_close(pred.obs_mean, expected)
    obs = torch.randn(4, 6, 4) * 0.1
    no = torch.zeros(4, 6, dtype=torch.bool)
    batch = Batch(obs=obs, action=torch.randint(2, (4, 6)), reward=torch.ones(4, 6), terminated=no, is_first=no,
                  is_last=no)
    model.train().loss(batch)[0].backward()  # the residual starts at zero: its last layer gets the gradient
    assert model.residual is not None
    last = model.residual[-1]
    assert isinstance(last, EnsembleLinear)
    grad = last.weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0


def test_the_calibration_narrows_the_hybrid_spread_and_keeps_the_invariant(trained: HybridWorldModel) -> None:
    """The hybrid follows the shared calibration (worldmodel/calibration.py): a scale below 1 narrows one
    step's spread over samples from the same state, obs_std follows, and samples stay on the circle."""
    n = 256
    obs = torch.tensor([[0.6, 0.8, 1.0]]).expand(n, 1, 3)
    state = trained.observe(trained.initial_state(n), obs, torch.zeros(n, 1, 1), torch.ones(n, 1, dtype=torch.bool))
    assert state["horizon"].eq(0).all()
    spreads, stds = [], []
    try:
        for scale in (1.0, 0.1):
            trained.set_calibration(torch.full((1, 3), scale))
            with torch.no_grad():
                next_state, pred = trained.step(state, torch.zeros(n, 1), torch.Generator().manual_seed(0))
            spreads.append(pred.obs[:, 2].std())
            stds.append(pred.obs_std[:, 2].mean())
            assert next_state["horizon"].eq(1).all()
            assert float((pred.obs[:, 0] ** 2 + pred.obs[:, 1] ** 2 - 1).abs().max()) < 1e-5
    finally:
        trained.set_calibration(torch.ones(0, 3))
    assert spreads[1] < 0.7 * spreads[0] and stds[1] < 0.7 * stds[0], (spreads, stds)


def test_imagined_hybrid_samples_never_leave_the_declared_bounds(trained: HybridWorldModel,
                                                                 data: tuple[StoreSchema, Normalization, Batch]
                                                                 ) -> None:
    """Pendulum declares |θ̇| ≤ 8: evaluation's out_of_bounds is 0, also with a calibration that widens 50×."""
    from worldmodel.evaluation import evaluate

    _, _, batch = data
    windows = Batch(obs=batch.obs[:24], action=batch.action[:24], reward=batch.reward[:24],
                    terminated=batch.terminated[:24], is_first=batch.is_first[:24], is_last=batch.is_last[:24])
    try:
        for scale in (1.0, 50.0):
            trained.set_calibration(torch.full((1, 3), scale))
            metrics = evaluate(trained, windows, context=4, horizons=(1, 12), samples=8)
            assert metrics["out_of_bounds/h1"] == 0.0 and metrics["out_of_bounds/h12"] == 0.0, metrics
    finally:
        trained.set_calibration(torch.ones(0, 3))
